package queen

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// keySpec is a key a test server starts with.
type keySpec struct {
	name  string
	scope api.KeyScope
}

// keyServer is a real queen on a fresh registry whose key rules see it
// listening on addr (it is served in-process), with its keys' secrets.
type keyServer struct {
	s       *Server
	ts      *httptest.Server
	dbPath  string
	secrets map[string]string // key name → key
}

// newKeyServer starts a queen for addr and creates keys in order.
func newKeyServer(t *testing.T, addr string, keys ...keySpec) *keyServer {
	t.Helper()
	dbPath := filepath.Join(t.TempDir(), "queen.db")
	cfg := Config{Addr: addr, DBPath: dbPath, HeartbeatInterval: time.Second}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	s.shutdown = func() {} // POST /v1/shutdown must not end the test

	ks := &keyServer{s: s, dbPath: dbPath, secrets: map[string]string{}}
	for _, k := range keys {
		created, err := s.keys.create(context.Background(), k.name, k.scope)
		assert.NilError(t, err)
		ks.secrets[k.name] = created.Key
	}
	ks.ts = httptest.NewServer(s.routes())
	t.Cleanup(ks.ts.Close)
	return ks
}

// call sends a request with the given Authorization header (none when
// empty) and returns the status and the body.
func (ks *keyServer) call(t *testing.T, method, path, body, auth string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ks.ts.URL+path, rd)
	assert.NilError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := ks.ts.Client().Do(req)
	assert.NilError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	assert.NilError(t, err)
	return resp.StatusCode, data
}

// as calls with the named key as a bearer token.
func (ks *keyServer) as(t *testing.T, name, method, path, body string) (int, []byte) {
	t.Helper()
	secret, ok := ks.secrets[name]
	assert.Assert(t, ok, "no key %q", name)
	return ks.call(t, method, path, body, "Bearer "+secret)
}

// errorOf decodes an error body.
func errorOf(t *testing.T, body []byte) api.ErrorDetail {
	t.Helper()
	var e api.ErrorBody
	assert.NilError(t, json.Unmarshal(body, &e), string(body))
	return e.Error
}

func TestRouteAccess(t *testing.T) {
	tests := []struct {
		method, path string
		want         access
	}{
		{http.MethodGet, "/health", accessPublic},
		{http.MethodPost, "/health", accessAdmin},
		{http.MethodPost, "/v1/heartbeat", accessPublic},
		{http.MethodGet, "/v1/heartbeat", accessAdmin},
		{http.MethodGet, "/v1/models", accessInference},
		{http.MethodGet, "/v1/models/stories260K", accessInference},
		{http.MethodDelete, "/v1/models/stories260K", accessAdmin},
		{http.MethodGet, "/v1/models/a/b", accessAdmin},
		{http.MethodGet, "/v1/models/", accessAdmin},
		{http.MethodPost, "/v1/completions", accessInference},
		{http.MethodPost, "/v1/chat/completions", accessInference},
		{http.MethodPost, "/v1/embeddings", accessInference},
		{http.MethodGet, "/v1/workers", accessAdmin},
		{http.MethodPost, "/v1/keys", accessAdmin},
		{http.MethodPost, "/v1/shutdown", accessAdmin},
		{http.MethodGet, "/v1/hives", accessAdmin},
		{http.MethodGet, "/v1/completions/../workers", accessAdmin},
		{http.MethodGet, "/", accessPublic}, // the dashboard page
		{http.MethodGet, "/nope", accessAdmin},
		{http.MethodGet, "/metrics", accessAdmin},
		{http.MethodGet, "/v1/events", accessAdmin},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			assert.Equal(t, routeAccess(tc.method, tc.path), tc.want)
		})
	}
}

func TestAuthMiddleware(t *testing.T) {
	routes := []struct {
		name, method, path, body string
		need                     access
	}{
		{"health", http.MethodGet, "/health", "", accessPublic},
		{"heartbeat", http.MethodPost, "/v1/heartbeat", `{"worker_id":"w-nope"}`, accessPublic},
		{"models", http.MethodGet, "/v1/models", "", accessInference},
		{"completions", http.MethodPost, "/v1/completions", `{}`, accessInference},
		{"chat completions", http.MethodPost, "/v1/chat/completions", `{}`, accessInference},
		{"embeddings", http.MethodPost, "/v1/embeddings", `{}`, accessInference},
		{"status", http.MethodGet, "/v1/status", "", accessAdmin},
		{"metrics", http.MethodGet, "/metrics", "", accessAdmin},
		{"shutdown", http.MethodPost, "/v1/shutdown", "", accessAdmin},
		{"list workers", http.MethodGet, "/v1/workers", "", accessAdmin},
		{"spawn worker", http.MethodPost, "/v1/workers", `{}`, accessAdmin},
		{"stop worker", http.MethodDelete, "/v1/workers/w-nope", "", accessAdmin},
		{"list keys", http.MethodGet, "/v1/keys", "", accessAdmin},
		{"create key", http.MethodPost, "/v1/keys", `{}`, accessAdmin},
		{"remove key", http.MethodDelete, "/v1/keys/nope", "", accessAdmin},
		{"hives", http.MethodGet, "/v1/hives", "", accessAdmin},
		{"unknown route", http.MethodGet, "/v1/nope", "", accessAdmin},
	}

	open := newKeyServer(t, "127.0.0.1:7833")
	closed := newKeyServer(t, "0.0.0.0:7833")
	keyed := newKeyServer(t, "127.0.0.1:7833",
		keySpec{"ops", api.KeyScopeAdmin}, keySpec{"app", api.KeyScopeInference})
	const (
		passes = 0 // the handler ran: any status but 401 and 403
		denied = http.StatusUnauthorized
		banned = http.StatusForbidden
	)
	var (
		anyKey    = map[access]int{accessInference: passes, accessAdmin: passes}
		noKey     = map[access]int{accessInference: denied, accessAdmin: denied}
		inference = map[access]int{accessInference: passes, accessAdmin: banned}
	)
	callers := []struct {
		name string
		srv  *keyServer
		auth string
		want map[access]int // by what the route needs
	}{
		{"no keys on loopback", open, "", anyKey},
		{"no keys beyond loopback", closed, "", noKey},
		{"no header", keyed, "", noKey},
		{"wrong key", keyed, "Bearer rbee_guess", noKey},
		{"not bearer", keyed, "Basic " + keyed.secrets["ops"], noKey},
		{"inference key", keyed, "Bearer " + keyed.secrets["app"], inference},
		{"admin key", keyed, "Bearer " + keyed.secrets["ops"], anyKey},
	}
	for _, c := range callers {
		for _, rt := range routes {
			t.Run(c.name+"/"+rt.name, func(t *testing.T) {
				status, body := c.srv.call(t, rt.method, rt.path, rt.body, c.auth)

				want := passes
				if rt.need != accessPublic {
					want = c.want[rt.need]
				}
				switch want {
				case passes:
					assert.Assert(t, status != denied && status != banned, "%d %s", status, body)
				case denied:
					assert.Equal(t, status, denied, string(body))
					e := errorOf(t, body)
					assert.Equal(t, e.Type, "authentication_error")
					assert.Check(t, is.Contains(e.Message, "rbee key create"))
					assert.Check(t, is.Contains(e.Message, "RBEE_API_KEY"))
				case banned:
					assert.Equal(t, status, banned, string(body))
					e := errorOf(t, body)
					assert.Equal(t, e.Code, "admin_key_required")
					assert.Check(t, is.Contains(e.Message, "an admin key is needed"))
				}
			})
		}
	}
}

func TestUnauthorizedReply(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833", keySpec{"ops", api.KeyScopeAdmin})
	tests := []struct {
		name     string
		auth     string
		wantText string
	}{
		{"missing", "", "missing API key"},
		{"empty bearer", "Bearer ", "missing API key"},
		{"wrong", "Bearer " + ks.secrets["ops"] + "x", "invalid API key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, ks.ts.URL+"/v1/models", nil)
			assert.NilError(t, err)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := ks.ts.Client().Do(req)
			assert.NilError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			assert.NilError(t, err)

			assert.Equal(t, resp.StatusCode, http.StatusUnauthorized)
			assert.Equal(t, resp.Header.Get("WWW-Authenticate"), `Bearer realm="rbee"`)
			assert.Equal(t, resp.Header.Get("Content-Type"), "application/json")
			e := errorOf(t, body)
			assert.DeepEqual(t, e, api.ErrorDetail{Type: "authentication_error",
				Code: "invalid_api_key", Message: e.Message})
			assert.Check(t, is.Contains(e.Message, tc.wantText))
		})
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name, header, want string
		ok                 bool
	}{
		{"bearer", "Bearer abc", "abc", true},
		{"lower case scheme", "bearer abc", "abc", true},
		{"extra spaces", "  Bearer   abc  ", "abc", true},
		{"empty", "", "", false},
		{"no token", "Bearer", "", false},
		{"blank token", "Bearer   ", "", false},
		{"basic", "Basic abc", "", false},
		{"token alone", "abc", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := bearerToken(tc.header)
			assert.Equal(t, ok, tc.ok)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestKeyUseRecorded(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833",
		keySpec{"ops", api.KeyScopeAdmin}, keySpec{"app", api.KeyScopeInference})
	used := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	ks.s.keys.now = func() time.Time { return used }

	status, _ := ks.as(t, "app", http.MethodGet, "/v1/models", "")
	assert.Equal(t, status, http.StatusOK)
	status, _ = ks.as(t, "app", http.MethodGet, "/v1/workers", "")
	assert.Equal(t, status, http.StatusForbidden, "an inference key may not list workers")

	status, body := ks.as(t, "ops", http.MethodGet, "/v1/keys", "")
	assert.Equal(t, status, http.StatusOK)
	var list api.APIKeyList
	assert.NilError(t, json.Unmarshal(body, &list))
	assert.Equal(t, len(list.Keys), 2)
	for _, k := range list.Keys {
		assert.Equal(t, k.LastUsedAt, used, k.Name)
	}
}
