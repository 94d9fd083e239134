package queen

import (
	"net/http"
	"strings"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// access is what a route asks of the caller's API key.
type access int

const (
	accessPublic    access = iota // no key: health checks, and heartbeats (worker token)
	accessInference               // an inference or an admin key
	accessAdmin                   // an admin key
)

// routeAccess classifies a request by method and path. Anything not named
// here needs an admin key, so a route added later is closed until someone
// decides otherwise.
func routeAccess(method, path string) access {
	switch {
	case method == http.MethodGet && path == "/health",
		method == http.MethodPost && path == "/v1/heartbeat",
		method == http.MethodGet && isDashboardPath(path):
		return accessPublic
	}
	switch path {
	case "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings":
		return accessInference
	}
	// GET /v1/models/{model}: one segment only.
	if rest, ok := strings.CutPrefix(path, "/v1/models/"); ok && method == http.MethodGet &&
		rest != "" && !strings.Contains(rest, "/") {
		return accessInference
	}
	return accessAdmin
}

// authenticate checks each request's API key before it reaches a handler.
// While the queen has no key and listens on loopback only, every request
// passes: one person's machine, where the first admin key is created.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return httpapi.Handle(s.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := s.authorize(r); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rbee"`)
			return err
		}
		next.ServeHTTP(w, r)
		return nil
	})
}

// authorize reports why r may not proceed, or nil.
func (s *Server) authorize(r *http.Request) error {
	need := routeAccess(r.Method, r.URL.Path)
	if need == accessPublic || s.keys.open() {
		return nil
	}

	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok && r.URL.Path == "/v1/events" {
		token, ok = subprotocolKey(r) // browsers cannot set headers on a WebSocket
	}
	if !ok {
		return httpapi.Unauthorized("missing API key: send the header " +
			"`Authorization: Bearer KEY`. " + howToGetKey)
	}
	key, ok := s.keys.check(token)
	if !ok {
		return httpapi.Unauthorized("invalid API key: it matches no key of this queen. " +
			howToGetKey)
	}
	if need == accessAdmin && key.Scope != api.KeyScopeAdmin {
		return &httpapi.Error{Status: http.StatusForbidden, Type: "permission_error",
			Code: "admin_key_required", Message: "an admin key is needed for " + r.Method +
				" " + r.URL.Path + "; key \"" + key.Name + "\" has scope " + string(key.Scope) +
				" (completions, chat, embeddings and models only). Use an admin key: " +
				"`rbee key create --name NAME --scope admin`"}
	}
	return nil
}

// howToGetKey ends every 401 message.
const howToGetKey = "An admin creates keys with `rbee key create --name NAME`; " +
	"rbee sends the key in $RBEE_API_KEY"

// bearerToken returns the token of an "Authorization: Bearer TOKEN" header.
func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
