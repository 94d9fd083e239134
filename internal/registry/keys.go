package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/rbee-dev/rbee/internal/api"
)

// APIKey is an API key as the queen stores it: a hash of the secret, never
// the secret itself.
type APIKey struct {
	Name   string
	Scope  api.KeyScope
	Prefix string // the start of the key, shown to tell keys apart
	Hash   []byte // SHA-256 of the key
	// CreatedAt and LastUsedAt are in UTC; LastUsedAt is zero for a key
	// never used.
	CreatedAt  time.Time
	LastUsedAt time.Time
}

const apiKeyColumns = `name, scope, prefix, hash, created_at, last_used_at`

// CreateAPIKey records a new key. CreatedAt defaults to now. It fails with
// an error wrapping ErrExists when the name (or the hash) is taken.
func (s *Store) CreateAPIKey(ctx context.Context, k APIKey) error {
	switch {
	case k.Name == "":
		return errors.New("create API key: empty name")
	case k.Scope != api.KeyScopeInference && k.Scope != api.KeyScopeAdmin:
		return fmt.Errorf("create API key %q: unknown scope %q", k.Name, k.Scope)
	case len(k.Hash) == 0:
		return fmt.Errorf("create API key %q: empty hash", k.Name)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}

	_, err := s.db.ExecContext(ctx, `INSERT INTO api_keys (`+apiKeyColumns+`)
		VALUES (?, ?, ?, ?, ?, ?)`,
		k.Name, string(k.Scope), k.Prefix, k.Hash, toNanos(k.CreatedAt), nullTime(k.LastUsedAt))
	switch sqliteCode(err) {
	case 0:
		return nil
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return fmt.Errorf("create API key %q: %w", k.Name, ErrExists)
	}
	return fmt.Errorf("create API key %q: %w", k.Name, err)
}

// APIKeys returns every key, ordered by name.
func (s *Store) APIKeys(ctx context.Context) ([]APIKey, error) {
	return queryAll(ctx, s, "list API keys", scanAPIKey,
		`SELECT `+apiKeyColumns+` FROM api_keys ORDER BY name`)
}

// APIKeyByHash returns the key whose hash is hash, or an error wrapping
// ErrNotFound. The queen checks requests against its own copy of the keys;
// this is for tools and tests.
func (s *Store) APIKeyByHash(ctx context.Context, hash []byte) (APIKey, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE hash = ?`, hash)
	k, err := scanAPIKey(row)
	if errors.Is(err, sql.ErrNoRows) {
		return APIKey{}, fmt.Errorf("API key: %w", ErrNotFound)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("get API key: %w", err)
	}
	return k, nil
}

// HasAdminKey reports whether at least one key has scope admin.
func (s *Store) HasAdminKey(ctx context.Context) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM api_keys WHERE scope = ?`,
		string(api.KeyScopeAdmin)).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("count admin keys: %w", err)
	}
	return n > 0, nil
}

// DeleteAPIKey forgets the key called name. It fails with an error
// wrapping ErrNotFound when there is no such key.
func (s *Store) DeleteAPIKey(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM api_keys WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("delete API key %q: %w", name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete API key %q: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("delete API key %q: %w", name, ErrNotFound)
	}
	return nil
}

// TouchAPIKey records that the key called name was used at the given time.
// An earlier time than the one recorded is ignored, so writes that arrive
// out of order never move it back. A key that no longer exists is not an
// error: it was removed while its use was waiting to be written.
func (s *Store) TouchAPIKey(ctx context.Context, name string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE api_keys
		SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE name = ?`,
		toNanos(at), name)
	if err != nil {
		return fmt.Errorf("record use of API key %q: %w", name, err)
	}
	return nil
}

// scanAPIKey reads one row selected with apiKeyColumns.
func scanAPIKey(r scanner) (APIKey, error) {
	var k APIKey
	var scope string
	var created int64
	var lastUsed sql.NullInt64
	if err := r.Scan(&k.Name, &scope, &k.Prefix, &k.Hash, &created, &lastUsed); err != nil {
		return APIKey{}, err
	}
	k.Scope = api.KeyScope(scope)
	k.CreatedAt = fromNanos(created)
	if lastUsed.Valid {
		k.LastUsedAt = fromNanos(lastUsed.Int64)
	}
	return k, nil
}
