package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// openTemp opens a fresh registry in a temporary directory and closes it
// when the test ends.
func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "queen.db")
	s, err := Open(path)
	assert.NilError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	_, path := openTemp(t)

	info, err := os.Stat(path)
	assert.NilError(t, err)
	assert.Equal(t, info.Mode().Perm(), os.FileMode(0o600))

	dir, err := os.Stat(filepath.Dir(path))
	assert.NilError(t, err)
	assert.Equal(t, dir.Mode().Perm(), os.FileMode(0o700))
}

func TestOpenUsesWAL(t *testing.T) {
	s, _ := openTemp(t)

	var mode string
	err := s.db.QueryRow("PRAGMA journal_mode").Scan(&mode)
	assert.NilError(t, err)
	assert.Equal(t, mode, "wal")

	var fk int
	assert.NilError(t, s.db.QueryRow("PRAGMA foreign_keys").Scan(&fk))
	assert.Equal(t, fk, 1)
}

func TestMigrationsIdempotentAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queen.db")

	for i := range 3 {
		s, err := Open(path)
		assert.NilError(t, err, "open #%d", i+1)

		v, err := s.SchemaVersion(ctx)
		assert.NilError(t, err)
		assert.Equal(t, v, len(migrations))

		hives, err := s.Hives(ctx)
		assert.NilError(t, err)
		assert.Equal(t, len(hives), 1, "the localhost hive is created once")
		assert.NilError(t, s.Close())
	}
}

func TestLocalhostHive(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)

	h, err := s.Hive(ctx, LocalHive)
	assert.NilError(t, err)
	assert.Equal(t, h.Name, "localhost")
	assert.Equal(t, h.Host, "127.0.0.1")
	assert.Check(t, h.Local)
	assert.Check(t, !h.CreatedAt.IsZero())
	assert.Equal(t, h.CreatedAt.Location(), time.UTC)

	hives, err := s.Hives(ctx)
	assert.NilError(t, err)
	assert.DeepEqual(t, hives, []Hive{h})
}

func TestHiveNotFound(t *testing.T) {
	s, _ := openTemp(t)

	_, err := s.Hive(context.Background(), "gpu-box")
	assert.Check(t, errors.Is(err, ErrNotFound))
	assert.ErrorContains(t, err, `"gpu-box"`)
}

func TestRefuseNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queen.db")
	s, err := Open(path)
	assert.NilError(t, err)
	_, err = s.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1))
	assert.NilError(t, err)
	assert.NilError(t, s.Close())

	_, err = Open(path)
	assert.Check(t, errors.Is(err, ErrSchemaTooNew))
	assert.ErrorContains(t, err, "upgrade rbee")
}

func TestMigrateAppliesOnlyPending(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queen.db")
	s, err := Open(path)
	assert.NilError(t, err)
	defer s.Close()

	// A later rbee adds a step: only that one runs on the existing file.
	more := append(append([]string(nil), migrations...),
		`ALTER TABLE hives ADD COLUMN note TEXT NOT NULL DEFAULT ''`)
	assert.NilError(t, migrate(ctx, s.db, more))
	assert.NilError(t, migrate(ctx, s.db, more))

	v, err := s.SchemaVersion(ctx)
	assert.NilError(t, err)
	assert.Equal(t, v, len(more))

	hives, err := s.Hives(ctx)
	assert.NilError(t, err)
	assert.Equal(t, len(hives), 1)
}

func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)

	bad := append(append([]string(nil), migrations...),
		`CREATE TABLE half (x INTEGER); SELECT no_such_function();`)
	err := migrate(ctx, s.db, bad)
	assert.ErrorContains(t, err, fmt.Sprintf("apply migration %d", len(bad)))

	v, err := s.SchemaVersion(ctx)
	assert.NilError(t, err)
	assert.Equal(t, v, len(migrations))

	var n int
	err = s.db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'half'`).Scan(&n)
	assert.NilError(t, err)
	assert.Equal(t, n, 0, "the failed step left a table behind")
}

func TestOpenBadPath(t *testing.T) {
	notDB := []byte("model_dir = /srv/models\nthis is somebody's config file\n")
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) string
		wantErr string
		keep    []byte // expected contents afterwards, when it is a file
	}{
		{
			name: "directory",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "queen.db")
				assert.NilError(t, os.Mkdir(p, 0o700))
				return p
			},
			wantErr: "is a directory",
		},
		{
			name: "text file",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "queen.db")
				assert.NilError(t, os.WriteFile(p, notDB, 0o644))
				return p
			},
			wantErr: "not a SQLite database",
			keep:    notDB,
		},
		{
			name: "short file",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "queen.db")
				assert.NilError(t, os.WriteFile(p, []byte("SQL"), 0o600))
				return p
			},
			wantErr: "not a SQLite database",
			keep:    []byte("SQL"),
		},
		{
			name: "parent is a file",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "plain")
				assert.NilError(t, os.WriteFile(p, notDB, 0o600))
				return filepath.Join(p, "queen.db")
			},
			wantErr: "create registry directory",
		},
		{
			name:    "empty path",
			setup:   func(t *testing.T, dir string) string { return "" },
			wantErr: "empty path",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.setup(t, t.TempDir())

			s, err := Open(path)
			if err == nil {
				s.Close()
			}
			assert.ErrorContains(t, err, tc.wantErr)
			if tc.keep != nil {
				got, err := os.ReadFile(path)
				assert.NilError(t, err)
				assert.DeepEqual(t, got, tc.keep)
			}
		})
	}
}

func TestOpenTightensLoosePermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queen.db")
	s, err := Open(path)
	assert.NilError(t, err)
	assert.NilError(t, s.Close())
	assert.NilError(t, os.Chmod(path, 0o644))

	s, err = Open(path)
	assert.NilError(t, err)
	defer s.Close()

	info, err := os.Stat(path)
	assert.NilError(t, err)
	assert.Equal(t, info.Mode().Perm(), os.FileMode(0o600))
}

func TestOpenPathWithURICharacters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a dir?x=1#frag%20", "queen.db")
	s, err := Open(path)
	assert.NilError(t, err)
	defer s.Close()

	_, err = s.Hive(ctx, LocalHive)
	assert.NilError(t, err)
	_, err = os.Stat(path)
	assert.NilError(t, err, "the database must be at the path given, unescaped")
	entries, err := os.ReadDir(filepath.Dir(path))
	assert.NilError(t, err)
	assert.Check(t, is.Len(entries, 3), "queen.db, -wal and -shm only: %v", entries)
}
