package queen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

// registryWithKeys creates a registry holding keys of the given scopes and
// returns its path.
func registryWithKeys(t *testing.T, scopes ...api.KeyScope) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "queen.db")
	store, err := registry.Open(path)
	assert.NilError(t, err)
	defer store.Close()
	for i, scope := range scopes {
		name := string(scope) + string(rune('a'+i))
		sum := sha256.Sum256([]byte(name))
		err := store.CreateAPIKey(context.Background(),
			registry.APIKey{Name: name, Scope: scope, Prefix: "rbee_x", Hash: sum[:]})
		assert.NilError(t, err)
	}
	return path
}

func TestCheckListenAddr(t *testing.T) {
	howTo := "Start it on 127.0.0.1, run `rbee key create --name admin --scope admin`, " +
		"then restart it with --addr "
	tests := []struct {
		name    string
		addr    string
		scopes  []api.KeyScope
		wantErr string
	}{
		{name: "loopback", addr: "127.0.0.1:7833"},
		{name: "localhost", addr: "localhost:7833"},
		{name: "IPv6 loopback", addr: "[::1]:7833"},
		{name: "all interfaces without keys", addr: "0.0.0.0:7833",
			wantErr: "refusing to listen on 0.0.0.0:7833: " +
				"it reaches beyond this machine, and the queen has no admin API key yet. " +
				howTo + "0.0.0.0:7833"},
		{name: "no host without keys", addr: ":7833", wantErr: howTo + ":7833"},
		{name: "inference key only", addr: "192.0.2.7:7833",
			scopes: []api.KeyScope{api.KeyScopeInference}, wantErr: "no admin API key"},
		{name: "admin key", addr: "0.0.0.0:7833",
			scopes: []api.KeyScope{api.KeyScopeInference, api.KeyScopeAdmin}},
		{name: "not host:port", addr: "7833", wantErr: `--addr "7833": want host:port`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := registryWithKeys(t, tc.scopes...)

			err := checkListenAddr(context.Background(), tc.addr, path)
			if tc.wantErr == "" {
				assert.NilError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestRunBeyondLoopback(t *testing.T) {
	tests := []struct {
		name    string
		scopes  []api.KeyScope
		wantErr string
	}{
		{name: "refused without keys", wantErr: "rbee key create --name admin --scope admin"},
		{name: "served with an admin key", scopes: []api.KeyScope{api.KeyScopeAdmin}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Addr: "0.0.0.0:0", DBPath: registryWithKeys(t, tc.scopes...),
				HeartbeatInterval: time.Second}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Once listening, the queen stops at once.
			logs := &cancelOnWrite{needle: "queen listening", cancel: cancel}
			log := slog.New(slog.NewTextHandler(logs, nil))

			err := run(ctx, cfg, log)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				assert.Check(t, !bytes.Contains(logs.Bytes(), []byte("queen listening")))
				return
			}
			assert.NilError(t, err)
			assert.Check(t, is.Contains(logs.String(), `msg="queen listening"`))
		})
	}
}

// cancelOnWrite keeps what is written, and calls cancel once a write holds
// needle.
type cancelOnWrite struct {
	bytes.Buffer
	needle string
	cancel context.CancelFunc
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(w.needle)) {
		w.cancel()
	}
	return w.Buffer.Write(p)
}
