package queen

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

const (
	keyPrefix     = "rbee_" // starts every key, so a leaked one is easy to spot
	keyBytes      = 32
	keyShownChars = len(keyPrefix) + 8 // the non-secret start kept for display

	// keyFlushInterval is how often last-use times reach the registry.
	keyFlushInterval = 5 * time.Second
)

// keyring is the queen's copy of its API keys: loaded at start, and kept in
// step with the registry by create and remove, so that checking a request
// never reads the database. Uses are noted in memory and written to the
// registry every keyFlushInterval.
type keyring struct {
	store    *registry.Store
	log      *slog.Logger
	loopback bool // the queen listens on loopback only
	now      func() time.Time

	edit sync.Mutex // serialises create and remove, database and copy alike

	mu   sync.RWMutex
	keys []registry.APIKey // never modified in place: replaced whole

	usedMu sync.Mutex
	used   map[string]time.Time // last uses not yet written, by key name

	stop context.CancelFunc
	done chan struct{}
}

// loadKeyring reads the keys from the registry and starts writing their
// uses back. close stops it.
func loadKeyring(ctx context.Context, store *registry.Store, log *slog.Logger,
	loopback bool) (*keyring, error) {
	keys, err := store.APIKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load API keys: %w", err)
	}
	k := &keyring{store: store, log: log, loopback: loopback, now: time.Now, keys: keys,
		used: map[string]time.Time{}, done: make(chan struct{})}
	switch {
	case len(keys) > 0:
		log.Info("api keys loaded", "count", len(keys))
	case loopback:
		log.Info("no api keys: every local client is trusted until one is created")
	default:
		log.Warn("no api keys: every request but health checks and heartbeats is refused")
	}

	var loopCtx context.Context
	loopCtx, k.stop = context.WithCancel(context.Background())
	go k.flushLoop(loopCtx)
	return k, nil
}

// close stops the flush loop and writes the uses it had not written yet.
func (k *keyring) close() {
	k.stop()
	<-k.done
}

func (k *keyring) flushLoop(ctx context.Context) {
	defer close(k.done)
	tick := time.NewTicker(keyFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			k.flush(wctx)
			cancel()
			return
		case <-tick.C:
			k.flush(ctx)
		}
	}
}

// open reports whether requests need no key: there is none, and only this
// machine can reach the queen.
func (k *keyring) open() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.keys) == 0 && k.loopback
}

// check returns the key that token is, and notes its use. Every stored
// hash is compared, in constant time, so the time taken tells nothing
// about which key came close.
func (k *keyring) check(token string) (registry.APIKey, bool) {
	sum := sha256.Sum256([]byte(token))
	k.mu.RLock()
	var found registry.APIKey
	match := 0
	for _, key := range k.keys {
		if subtle.ConstantTimeCompare(sum[:], key.Hash) == 1 {
			found, match = key, 1
		}
	}
	k.mu.RUnlock()
	if match == 0 {
		return registry.APIKey{}, false
	}

	k.usedMu.Lock()
	k.used[found.Name] = k.now()
	k.usedMu.Unlock()
	return found, true
}

// flush writes the uses noted since the last flush. A use that could not be
// written is kept for the next one, unless a later use replaced it.
func (k *keyring) flush(ctx context.Context) {
	k.usedMu.Lock()
	pending := k.used
	k.used = map[string]time.Time{}
	k.usedMu.Unlock()

	for name, at := range pending {
		err := k.store.TouchAPIKey(ctx, name, at)
		if err == nil {
			continue
		}
		k.log.Warn("record api key use", "key", name, "error", err)
		k.usedMu.Lock()
		if later, ok := k.used[name]; !ok || later.Before(at) {
			k.used[name] = at
		}
		k.usedMu.Unlock()
	}
}

// create makes a key, records its hash, and returns the key itself: the
// only time it exists outside the caller's hands. The first key must be an
// admin key, or nobody could manage keys afterwards.
func (k *keyring) create(ctx context.Context, name string,
	scope api.KeyScope) (api.CreatedKey, error) {
	k.edit.Lock()
	defer k.edit.Unlock()

	if k.count() == 0 && scope != api.KeyScopeAdmin {
		return api.CreatedKey{}, conflict("admin_key_required", "scope", "the first key "+
			"must have scope admin, or nobody could manage keys once it exists: "+
			"`rbee key create --name admin --scope admin`")
	}
	secret := newKey()
	sum := sha256.Sum256([]byte(secret))
	rec := registry.APIKey{Name: name, Scope: scope, Prefix: secret[:keyShownChars],
		Hash: sum[:], CreatedAt: k.now().UTC()}
	if err := k.store.CreateAPIKey(ctx, rec); err != nil {
		return api.CreatedKey{}, err
	}

	k.mu.Lock()
	k.keys = append(slices.Clip(k.keys), rec)
	k.mu.Unlock()
	k.log.Info("api key created", "key", name, "scope", scope)
	return api.CreatedKey{Key: secret, APIKey: publicKey(rec)}, nil
}

// remove deletes the key called name and returns it. It refuses to remove
// the last admin key while other keys remain, and the very last key of a
// queen that listens beyond loopback: either would lock everyone out.
func (k *keyring) remove(ctx context.Context, name string) (registry.APIKey, error) {
	k.edit.Lock()
	defer k.edit.Unlock()

	k.mu.RLock()
	keys := k.keys
	k.mu.RUnlock()
	i := slices.IndexFunc(keys, func(key registry.APIKey) bool { return key.Name == name })
	if i < 0 {
		return registry.APIKey{}, httpapi.NotFound("key_not_found",
			"no API key %q: see `rbee key list`", name)
	}
	victim := keys[i]
	admins := 0
	for _, key := range keys {
		if key.Scope == api.KeyScopeAdmin {
			admins++
		}
	}
	if victim.Scope == api.KeyScopeAdmin && admins == 1 {
		if len(keys) > 1 {
			return registry.APIKey{}, conflict("last_admin_key", "", fmt.Sprintf("%q is the "+
				"last admin key: without it nobody could manage keys or workers; create "+
				"another admin key first, or remove the other keys", name))
		}
		if !k.loopback {
			return registry.APIKey{}, conflict("last_admin_key", "", fmt.Sprintf("%q is the "+
				"last key, and the queen listens beyond loopback, where it needs a key: "+
				"create another admin key first", name))
		}
	}

	if err := k.store.DeleteAPIKey(ctx, name); err != nil {
		return registry.APIKey{}, err
	}
	k.mu.Lock()
	k.keys = slices.Delete(slices.Clone(keys), i, i+1)
	k.mu.Unlock()
	k.log.Info("api key removed", "key", name, "scope", victim.Scope)
	return victim, nil
}

// count is the number of keys.
func (k *keyring) count() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.keys)
}

// newKey returns a fresh key: keyPrefix and keyBytes random bytes.
func newKey() string {
	b := make([]byte, keyBytes)
	_, _ = rand.Read(b) // never fails: it crashes the program instead
	return keyPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// publicKey is a stored key as the API shows it, without its hash.
func publicKey(k registry.APIKey) api.APIKey {
	return api.APIKey{Name: k.Name, Scope: k.Scope, Prefix: k.Prefix,
		CreatedAt: k.CreatedAt, LastUsedAt: k.LastUsedAt}
}

// conflict is a 409.
func conflict(code, param, msg string) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: code, Param: param, Message: msg}
}
