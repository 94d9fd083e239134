package sshexec

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestResolveAlias(t *testing.T) {
	home := os.Getenv("HOME")
	me, err := localUser()
	assert.NilError(t, err)
	config := `
Host *
    ServerAliveInterval 30

Host gpu1
    HostName 10.0.0.5
    User alice
    Port 2222
    IdentityFile ~/.ssh/gpu_ed25519

Host gpu2 gpu2.lan
    HostName %h.example.net
    IdentityFile %d/keys/%r@%h
    IdentityFile ~/.ssh/second

Host lab-*
    User bob

Host bare
    Port 22
`
	path := filepath.Join(t.TempDir(), "config")
	assert.NilError(t, os.WriteFile(path, []byte(config), 0o600))

	tests := []struct {
		name    string
		alias   string
		want    Target
		wantErr string
		wantIs  error
	}{
		{
			name:  "everything set",
			alias: "gpu1",
			want: Target{Host: "10.0.0.5", Port: 2222, User: "alice",
				KeyPath: filepath.Join(home, ".ssh/gpu_ed25519"), Alias: "gpu1"},
		},
		{
			name:  "tokens and the first IdentityFile",
			alias: "gpu2",
			want: Target{Host: "gpu2.example.net", Port: 22,
				KeyPath: filepath.Join(home, "keys", me+"@gpu2.example.net"), Alias: "gpu2"},
		},
		{
			name:  "wildcard entry",
			alias: "lab-7",
			want:  Target{Host: "lab-7", Port: 22, User: "bob", Alias: "lab-7"},
		},
		{
			name:  "only a port",
			alias: "bare",
			want:  Target{Host: "bare", Port: 22, Alias: "bare"},
		},
		{name: "unknown alias", alias: "nope", wantIs: ErrUnknownAlias, wantErr: "no Host entry"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveAlias(tc.alias, path)
			if tc.wantErr != "" {
				assert.Check(t, is.ErrorIs(err, tc.wantIs))
				assert.Check(t, is.ErrorContains(err, tc.wantErr))
				return
			}
			assert.NilError(t, err)
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestResolveAliasErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		assert.NilError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}

	tests := []struct {
		name    string
		path    string
		wantErr string
	}{
		{name: "missing file", path: filepath.Join(dir, "none"), wantErr: "no such file"},
		{name: "bad port", path: write("port", "Host h\n  Port http\n"), wantErr: `bad Port "http"`},
		{
			name:    "unsupported token",
			path:    write("token", "Host h\n  IdentityFile ~/.ssh/%C\n"),
			wantErr: "token %C is not supported",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ResolveAlias("h", tc.path)
			assert.Check(t, is.ErrorContains(err, tc.wantErr))
		})
	}
}
