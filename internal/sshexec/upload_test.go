package sshexec

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

func TestUpload(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.2")
	p := trustingPool(t, Config{}, s)
	// The test servers run on this machine: remote paths can be checked
	// directly.
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	assert.NilError(t, os.WriteFile(existing, []byte("old"), 0o644))
	binary := bytes.Repeat([]byte("\x00\x01rbee-hive\xff\n"), 100_000)

	tests := []struct {
		name       string
		remotePath string
		localPath  string // where remotePath lands
		content    []byte
		mode       os.FileMode
	}{
		{
			name:       "new executable in a new directory",
			remotePath: filepath.Join(dir, "bin", "rbee-hive"),
			localPath:  filepath.Join(dir, "bin", "rbee-hive"),
			content:    binary,
			mode:       0o755,
		},
		{
			name:       "replaces a file",
			remotePath: existing,
			localPath:  existing,
			content:    []byte("new content\n"),
			mode:       0o600,
		},
		{
			name:       "empty file",
			remotePath: filepath.Join(dir, "empty"),
			localPath:  filepath.Join(dir, "empty"),
			mode:       0o640,
		},
		{
			name:       "home-relative path",
			remotePath: "~/.local/bin/llm-worker-rbee",
			localPath:  filepath.Join(s.Home, ".local", "bin", "llm-worker-rbee"),
			content:    []byte("worker"),
			mode:       0o755,
		},
		{
			name:       "hostile file name",
			remotePath: filepath.Join(dir, "a b; $(touch x) 'q'"),
			localPath:  filepath.Join(dir, "a b; $(touch x) 'q'"),
			content:    []byte("odd"),
			mode:       0o644,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sum, err := p.Upload(context.Background(), serverTarget(s),
				bytes.NewReader(tc.content), int64(len(tc.content)), tc.remotePath, tc.mode)

			assert.NilError(t, err)
			want := sha256.Sum256(tc.content)
			assert.Equal(t, sum, hex.EncodeToString(want[:]))
			got, err := os.ReadFile(tc.localPath)
			assert.NilError(t, err)
			assert.Check(t, bytes.Equal(got, tc.content), "content differs")
			assertMode(t, tc.localPath, tc.mode)
			assertNoTempFiles(t, filepath.Dir(tc.localPath))
		})
	}
	_, err := os.Stat(filepath.Join(dir, "x"))
	assert.Check(t, os.IsNotExist(err), "a file name ran as a command")
}

func TestUploadRefused(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	dir := t.TempDir()
	existing := filepath.Join(dir, "rbee-hive")
	assert.NilError(t, os.WriteFile(existing, []byte("old"), 0o755))

	corrupting := trustingPool(t, Config{}, s)
	corrupting.remoteHash = `echo 0000000000000000000000000000000000000000000000000000000000000000 -`

	tests := []struct {
		name    string
		pool    *Pool
		content string
		size    int64
		path    string
		wantIs  error
		wantErr string
	}{
		{
			name:    "checksum mismatch",
			pool:    corrupting,
			content: "new",
			size:    3,
			path:    existing,
			wantIs:  ErrChecksum,
			wantErr: "not installed",
		},
		{
			name:    "shorter than size",
			pool:    trustingPool(t, Config{}, s),
			content: "ne",
			size:    3,
			path:    existing,
			wantErr: "read 2 bytes, expected 3",
		},
		{
			name:    "longer than size",
			pool:    trustingPool(t, Config{}, s),
			content: "newer",
			size:    3,
			path:    existing,
			wantErr: "read 4 bytes, expected 3",
		},
		{
			name:    "destination is a directory",
			pool:    trustingPool(t, Config{}, s),
			content: "new",
			size:    3,
			path:    dir,
			wantErr: "is a directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.pool.Upload(context.Background(), serverTarget(s),
				strings.NewReader(tc.content), tc.size, tc.path, 0o755)

			assert.Check(t, is.ErrorContains(err, tc.wantErr))
			if tc.wantIs != nil {
				assert.Check(t, is.ErrorIs(err, tc.wantIs))
			}
			got, err := os.ReadFile(existing)
			assert.NilError(t, err)
			assert.Equal(t, string(got), "old", "the old file must stay")
			assertNoTempFiles(t, dir)
		})
	}
}

// assertNoTempFiles checks that no upload left a temporary file in dir.
func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	for _, e := range entries {
		assert.Check(t, !strings.Contains(e.Name(), "rbee-upload"), "left behind: %s", e.Name())
	}
}
