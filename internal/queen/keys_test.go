package queen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestCreateKey(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833")
	before := time.Now().UTC()

	status, body := ks.call(t, http.MethodPost, "/v1/keys", `{"name":"ops","scope":"admin"}`, "")
	assert.Equal(t, status, http.StatusCreated, string(body))
	var k api.CreatedKey
	assert.NilError(t, json.Unmarshal(body, &k))

	assert.Check(t, strings.HasPrefix(k.Key, "rbee_"), k.Key)
	assert.Equal(t, len(k.Key), len("rbee_")+43, "32 bytes in unpadded base64url")
	assert.Equal(t, k.Prefix, k.Key[:13])
	assert.Equal(t, k.Name, "ops")
	assert.Equal(t, k.Scope, api.KeyScopeAdmin)
	assert.Check(t, !k.CreatedAt.Before(before.Round(0)))
	assert.Check(t, k.LastUsedAt.IsZero())

	// The registry holds the key's hash, and never the key itself.
	sum := sha256.Sum256([]byte(k.Key))
	stored, err := ks.s.store.APIKeyByHash(context.Background(), sum[:])
	assert.NilError(t, err)
	assert.Equal(t, stored.Name, "ops")
	files, err := filepath.Glob(ks.dbPath + "*")
	assert.NilError(t, err)
	for _, f := range files {
		data, err := os.ReadFile(f)
		assert.NilError(t, err)
		assert.Check(t, !bytes.Contains(data, []byte(k.Key[len("rbee_"):])), f)
	}

	// From now on the queen is closed, and the new key opens it.
	status, _ = ks.call(t, http.MethodGet, "/v1/keys", "", "")
	assert.Equal(t, status, http.StatusUnauthorized)
	status, _ = ks.call(t, http.MethodGet, "/v1/keys", "", "Bearer "+k.Key)
	assert.Equal(t, status, http.StatusOK)
}

func TestCreateKeyRefused(t *testing.T) {
	long := strings.Repeat("k", 64)
	tests := []struct {
		name       string
		keys       []keySpec // created first
		body       string
		wantStatus int
		wantCode   string
		wantParam  string
		wantText   string
	}{
		{name: "first key not admin", body: `{"name":"app"}`,
			wantStatus: http.StatusConflict, wantCode: "admin_key_required", wantParam: "scope",
			wantText: "--scope admin"},
		{name: "no body", body: "", wantStatus: http.StatusBadRequest, wantText: "empty"},
		{name: "no name", body: `{"scope":"admin"}`,
			wantStatus: http.StatusBadRequest, wantParam: "name", wantText: "name must be"},
		{name: "name too long", body: `{"name":"` + long + `k","scope":"admin"}`,
			wantStatus: http.StatusBadRequest, wantParam: "name"},
		{name: "name with a slash", body: `{"name":"a/b","scope":"admin"}`,
			wantStatus: http.StatusBadRequest, wantParam: "name"},
		{name: "name with a space", body: `{"name":"my key","scope":"admin"}`,
			wantStatus: http.StatusBadRequest, wantParam: "name"},
		{name: "unknown scope", body: `{"name":"k","scope":"root"}`,
			wantStatus: http.StatusBadRequest, wantParam: "scope", wantText: `got "root"`},
		{name: "scope not a string", body: `{"name":"k","scope":1}`,
			wantStatus: http.StatusBadRequest, wantParam: "scope"},
		{name: "name taken", keys: []keySpec{{"ops", api.KeyScopeAdmin}},
			body: `{"name":"ops","scope":"admin"}`, wantStatus: http.StatusConflict,
			wantCode: "key_exists", wantParam: "name", wantText: "rbee key rm ops"},
		{name: "longest name", keys: []keySpec{{"ops", api.KeyScopeAdmin}},
			body: `{"name":"` + long + `"}`, wantStatus: http.StatusCreated},
		{name: "inference by default", keys: []keySpec{{"ops", api.KeyScopeAdmin}},
			body: `{"name":"app.v-1_x"}`, wantStatus: http.StatusCreated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks := newKeyServer(t, "127.0.0.1:7833", tc.keys...)
			auth := ""
			if len(tc.keys) > 0 {
				auth = "Bearer " + ks.secrets["ops"]
			}

			status, body := ks.call(t, http.MethodPost, "/v1/keys", tc.body, auth)
			assert.Equal(t, status, tc.wantStatus, string(body))
			if status == http.StatusCreated {
				var k api.CreatedKey
				assert.NilError(t, json.Unmarshal(body, &k))
				assert.Equal(t, k.Scope, api.KeyScopeInference)
				return
			}
			e := errorOf(t, body)
			assert.Equal(t, e.Code, tc.wantCode)
			assert.Equal(t, e.Param, tc.wantParam)
			assert.Check(t, is.Contains(e.Message, tc.wantText))
			assert.Equal(t, ks.s.keys.count(), len(tc.keys))
		})
	}
}

func TestDeleteKey(t *testing.T) {
	admin := keySpec{"ops", api.KeyScopeAdmin}
	tests := []struct {
		name       string
		addr       string
		keys       []keySpec
		as         string // key sent; "" when the queen is open
		remove     string
		wantStatus int
		wantCode   string
		wantLeft   []string
	}{
		{name: "inference key", addr: "127.0.0.1:7833",
			keys: []keySpec{admin, {"app", api.KeyScopeInference}}, as: "ops", remove: "app",
			wantStatus: http.StatusOK, wantLeft: []string{"ops"}},
		{name: "one of two admin keys", addr: "0.0.0.0:7833",
			keys: []keySpec{admin, {"ops2", api.KeyScopeAdmin}}, as: "ops2", remove: "ops",
			wantStatus: http.StatusOK, wantLeft: []string{"ops2"}},
		{name: "unknown key", addr: "127.0.0.1:7833", keys: []keySpec{admin}, as: "ops",
			remove: "nope", wantStatus: http.StatusNotFound, wantCode: "key_not_found",
			wantLeft: []string{"ops"}},
		{name: "last admin key while others remain", addr: "127.0.0.1:7833",
			keys: []keySpec{admin, {"app", api.KeyScopeInference}}, as: "ops", remove: "ops",
			wantStatus: http.StatusConflict, wantCode: "last_admin_key",
			wantLeft: []string{"app", "ops"}},
		{name: "last key on loopback", addr: "127.0.0.1:7833", keys: []keySpec{admin},
			as: "ops", remove: "ops", wantStatus: http.StatusOK},
		{name: "last key beyond loopback", addr: "0.0.0.0:7833", keys: []keySpec{admin},
			as: "ops", remove: "ops", wantStatus: http.StatusConflict, wantCode: "last_admin_key",
			wantLeft: []string{"ops"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks := newKeyServer(t, tc.addr, tc.keys...)

			status, body := ks.as(t, tc.as, http.MethodDelete, "/v1/keys/"+tc.remove, "")
			assert.Equal(t, status, tc.wantStatus, string(body))
			if tc.wantCode != "" {
				assert.Equal(t, errorOf(t, body).Code, tc.wantCode)
			} else {
				var k api.APIKey
				assert.NilError(t, json.Unmarshal(body, &k))
				assert.Equal(t, k.Name, tc.remove)
			}

			stored, err := ks.s.store.APIKeys(context.Background())
			assert.NilError(t, err)
			var left []string
			for _, k := range stored {
				left = append(left, k.Name)
			}
			assert.DeepEqual(t, left, tc.wantLeft)
			assert.Equal(t, ks.s.keys.count(), len(tc.wantLeft), "the copy follows the registry")

			// A removed key opens nothing any more.
			if status == http.StatusOK && len(tc.wantLeft) > 0 {
				status, _ = ks.as(t, tc.remove, http.MethodGet, "/v1/models", "")
				assert.Equal(t, status, http.StatusUnauthorized)
			}
		})
	}
}

func TestKeysSurviveRestart(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833", keySpec{"ops", api.KeyScopeAdmin})
	used := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	ks.s.keys.now = func() time.Time { return used }
	status, _ := ks.as(t, "ops", http.MethodGet, "/v1/status", "")
	assert.Equal(t, status, http.StatusOK)
	assert.NilError(t, ks.s.Close()) // writes the use it had not written yet

	cfg := Config{Addr: "127.0.0.1:7833", DBPath: ks.dbPath, HeartbeatInterval: time.Second}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	defer s.Close()

	assert.Check(t, !s.keys.open())
	k, ok := s.keys.check(ks.secrets["ops"])
	assert.Assert(t, ok)
	assert.Equal(t, k.Scope, api.KeyScopeAdmin)
	assert.Equal(t, k.LastUsedAt, used)
	_, ok = s.keys.check("rbee_guess")
	assert.Check(t, !ok)
}

func TestFlushKeepsFailedUses(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833", keySpec{"ops", api.KeyScopeAdmin})
	_, ok := ks.s.keys.check(ks.secrets["ops"])
	assert.Assert(t, ok)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ks.s.keys.flush(ctx) // fails: the context is over

	ks.s.keys.usedMu.Lock()
	_, pending := ks.s.keys.used["ops"]
	ks.s.keys.usedMu.Unlock()
	assert.Check(t, pending, "the use is kept for the next flush")

	ks.s.keys.flush(context.Background())
	keys, err := ks.s.store.APIKeys(context.Background())
	assert.NilError(t, err)
	assert.Check(t, !keys[0].LastUsedAt.IsZero())
}
