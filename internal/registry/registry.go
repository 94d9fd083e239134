// Package registry is the queen's store: one SQLite file holding the hives
// it knows, the workers it started with their desired and observed state,
// and its API keys (hashed). The schema evolves through numbered
// migrations, applied when the file is opened.
package registry

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrNotFound is wrapped by lookups and updates of a hive, worker or API
// key that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is wrapped by CreateWorker when a worker with the same id is
// already recorded, and by CreateAPIKey when the key's name is taken.
var ErrExists = errors.New("already exists")

// ErrSchemaTooNew is wrapped by Open when the file was written by a newer
// rbee than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this rbee")

// busyTimeoutMS is how long a statement waits for a lock held by another
// connection before failing with SQLITE_BUSY.
const busyTimeoutMS = 5000

// sqliteHeader starts every SQLite 3 database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// Store is the queen's registry. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// Open opens the registry at path, creating the file (mode 0600) and its
// parent directory (mode 0700) when they do not exist, and brings the
// schema up to date. A file that is not a SQLite database, or one written
// by a newer rbee, is refused and left untouched.
func Open(path string) (*Store, error) {
	abs, err := prepareFile(path)
	if err != nil {
		return nil, err
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", abs, err)
	}

	ctx := context.Background()
	if err := setup(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open registry %s: %w", abs, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close registry: %w", err)
	}
	return nil
}

// prepareFile makes sure path can hold the registry: its parent exists, it
// is not a directory, and it is either absent, empty, or a SQLite file. It
// creates a missing file with mode 0600, because the registry holds worker
// tokens, and returns the absolute path.
func prepareFile(path string) (string, error) {
	if path == "" {
		return "", errors.New("open registry: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("open registry %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return "", fmt.Errorf("create registry directory: %w", err)
	}

	info, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return abs, createFile(abs)
	case err != nil:
		return "", fmt.Errorf("open registry %s: %w", abs, err)
	case info.IsDir():
		return "", fmt.Errorf("open registry %s: is a directory, not a database file", abs)
	}

	if err := checkHeader(abs); err != nil {
		return "", err
	}
	if info.Mode().Perm()&0o077 != 0 {
		// The file holds secrets; tighten a copy made with a loose umask.
		if err := os.Chmod(abs, 0o600); err != nil {
			return "", fmt.Errorf("restrict registry permissions: %w", err)
		}
	}
	return abs, nil
}

// createFile creates an empty registry file readable only by its owner.
func createFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return checkHeader(path) // created by someone else in the meantime
	}
	if err != nil {
		return fmt.Errorf("create registry %s: %w", path, err)
	}
	return f.Close()
}

// checkHeader reports an error unless the file at path is empty or starts
// with the SQLite header. It only reads the file.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open registry %s: %w", path, err)
	}
	defer f.Close()

	head := make([]byte, len(sqliteHeader))
	n, err := io.ReadFull(f, head)
	if n == 0 && errors.Is(err, io.EOF) {
		return nil
	}
	if !bytes.Equal(head[:n], sqliteHeader) {
		return fmt.Errorf("open registry %s: not a SQLite database; "+
			"move the file away or choose another path", path)
	}
	return nil
}

// dsn builds the driver's data source name: a file: URI, so that any
// character in the path is escaped, with the per-connection settings.
// Immediate transactions take the write lock at BEGIN, so two writers
// wait for each other (busy_timeout) instead of failing to upgrade.
func dsn(abs string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}
	return u.String()
}

// setup switches the file to WAL and applies pending migrations.
func setup(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return fmt.Errorf("enable WAL: %w", err)
	}
	if mode != "wal" {
		return fmt.Errorf("enable WAL: journal mode is %q", mode)
	}
	return migrate(ctx, db, migrations)
}

// toNanos stores a time as UTC unix nanoseconds.
func toNanos(t time.Time) int64 { return t.UTC().UnixNano() }

// fromNanos reads back a time stored by toNanos.
func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
