package registry

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// newKey returns a key ready to pass to CreateAPIKey; its hash is that of
// "secret-" + name.
func newKey(name string, scope api.KeyScope) APIKey {
	sum := sha256.Sum256([]byte("secret-" + name))
	return APIKey{Name: name, Scope: scope, Prefix: "rbee_" + name, Hash: sum[:],
		CreatedAt: created}
}

func TestCreateAndListAPIKeys(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)

	keys, err := s.APIKeys(ctx)
	assert.NilError(t, err)
	assert.Check(t, is.Len(keys, 0))

	admin, app := newKey("zeta-admin", api.KeyScopeAdmin), newKey("app", api.KeyScopeInference)
	assert.NilError(t, s.CreateAPIKey(ctx, admin))
	assert.NilError(t, s.CreateAPIKey(ctx, app))

	keys, err = s.APIKeys(ctx)
	assert.NilError(t, err)
	admin.CreatedAt, app.CreatedAt = created.UTC(), created.UTC()
	assert.DeepEqual(t, keys, []APIKey{app, admin})
	assert.Equal(t, keys[0].CreatedAt.Location(), time.UTC)
	assert.Check(t, keys[0].LastUsedAt.IsZero())
}

func TestCreateAPIKeyDefaultsCreatedAt(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	before := time.Now()
	k := newKey("app", api.KeyScopeInference)
	k.CreatedAt = time.Time{}

	assert.NilError(t, s.CreateAPIKey(ctx, k))

	got, err := s.APIKeyByHash(ctx, k.Hash)
	assert.NilError(t, err)
	assert.Check(t, !got.CreatedAt.Before(before.Round(0)))
}

func TestCreateAPIKeyErrors(t *testing.T) {
	tests := []struct {
		name    string
		key     func() APIKey
		wantIs  error
		wantErr string
	}{
		{
			name:    "empty name",
			key:     func() APIKey { return newKey("", api.KeyScopeAdmin) },
			wantErr: "empty name",
		},
		{
			name:    "unknown scope",
			key:     func() APIKey { return newKey("k", "root") },
			wantErr: `unknown scope "root"`,
		},
		{
			name: "no hash",
			key: func() APIKey {
				k := newKey("k", api.KeyScopeAdmin)
				k.Hash = nil
				return k
			},
			wantErr: "empty hash",
		},
		{
			name: "name taken",
			key: func() APIKey {
				k := newKey("other", api.KeyScopeInference)
				k.Name = "admin"
				return k
			},
			wantIs: ErrExists,
		},
		{
			name: "hash taken",
			key: func() APIKey {
				k := newKey("admin", api.KeyScopeAdmin)
				k.Name = "other"
				return k
			},
			wantIs: ErrExists,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTemp(t)
			assert.NilError(t, s.CreateAPIKey(ctx, newKey("admin", api.KeyScopeAdmin)))

			err := s.CreateAPIKey(ctx, tc.key())
			assert.Assert(t, err != nil)
			if tc.wantIs != nil {
				assert.Check(t, errors.Is(err, tc.wantIs), "got %v", err)
			}
			assert.ErrorContains(t, err, tc.wantErr)

			keys, err := s.APIKeys(ctx)
			assert.NilError(t, err)
			assert.Check(t, is.Len(keys, 1), "the failed create left a row")
		})
	}
}

func TestAPIKeyByHash(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	k := newKey("app", api.KeyScopeInference)
	assert.NilError(t, s.CreateAPIKey(ctx, k))

	got, err := s.APIKeyByHash(ctx, k.Hash)
	assert.NilError(t, err)
	assert.Equal(t, got.Name, "app")

	other := sha256.Sum256([]byte("guess"))
	_, err = s.APIKeyByHash(ctx, other[:])
	assert.Check(t, errors.Is(err, ErrNotFound), "got %v", err)
}

func TestDeleteAPIKey(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	assert.NilError(t, s.CreateAPIKey(ctx, newKey("app", api.KeyScopeInference)))
	assert.NilError(t, s.CreateAPIKey(ctx, newKey("admin", api.KeyScopeAdmin)))

	assert.NilError(t, s.DeleteAPIKey(ctx, "app"))

	keys, err := s.APIKeys(ctx)
	assert.NilError(t, err)
	assert.Check(t, is.Len(keys, 1))
	assert.Equal(t, keys[0].Name, "admin")

	err = s.DeleteAPIKey(ctx, "app")
	assert.Check(t, errors.Is(err, ErrNotFound), "got %v", err)
	assert.ErrorContains(t, err, `"app"`)
}

func TestHasAdminKey(t *testing.T) {
	tests := []struct {
		name string
		keys []APIKey
		want bool
	}{
		{name: "no keys"},
		{name: "inference only", keys: []APIKey{newKey("app", api.KeyScopeInference)}},
		{
			name: "an admin key",
			keys: []APIKey{newKey("app", api.KeyScopeInference), newKey("ops", api.KeyScopeAdmin)},
			want: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTemp(t)
			for _, k := range tc.keys {
				assert.NilError(t, s.CreateAPIKey(ctx, k))
			}

			got, err := s.HasAdminKey(ctx)
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestTouchAPIKey(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	k := newKey("app", api.KeyScopeInference)
	assert.NilError(t, s.CreateAPIKey(ctx, k))
	later := created.Add(time.Hour)

	steps := []struct {
		name string
		at   time.Time
		want time.Time
	}{
		{"first use", later, later},
		{"earlier write ignored", created, later},
		{"later use", later.Add(time.Minute), later.Add(time.Minute)},
	}
	for _, st := range steps {
		assert.NilError(t, s.TouchAPIKey(ctx, "app", st.at), st.name)
		got, err := s.APIKeyByHash(ctx, k.Hash)
		assert.NilError(t, err)
		assert.Equal(t, got.LastUsedAt, st.want.UTC(), st.name)
	}

	assert.NilError(t, s.TouchAPIKey(ctx, "removed-meanwhile", later))
}

func TestMigrateV1DatabaseAddsAPIKeys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queen.db")

	// A queen from before API keys: schema version 1, with a worker.
	db, err := sql.Open("sqlite", dsn(path))
	assert.NilError(t, err)
	assert.NilError(t, migrate(ctx, db, migrations[:1]))
	_, err = db.Exec(`INSERT INTO workers (id, hive, model, model_path, device, slots,
		state, desired, token, created_at) VALUES ('w1', 'localhost', 'tiny', '/m/tiny.gguf',
		'cpu', 1, 'ready', 'running', 'tok', 1)`)
	assert.NilError(t, err)
	assert.NilError(t, db.Close())

	s, err := Open(path)
	assert.NilError(t, err)
	defer s.Close()

	v, err := s.SchemaVersion(ctx)
	assert.NilError(t, err)
	assert.Equal(t, v, len(migrations))

	w, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, w.Token, "tok")

	keys, err := s.APIKeys(ctx)
	assert.NilError(t, err)
	assert.Check(t, is.Len(keys, 0))
	assert.NilError(t, s.CreateAPIKey(ctx, newKey("admin", api.KeyScopeAdmin)))
	ok, err := s.HasAdminKey(ctx)
	assert.NilError(t, err)
	assert.Check(t, ok)
}
