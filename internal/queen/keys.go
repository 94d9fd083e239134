package queen

import (
	"errors"
	"net/http"
	"regexp"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// keyNameRE is what a key's name may be.
var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func (s *Server) handleCreateKey(w http.ResponseWriter, r *http.Request) error {
	var req api.KeyRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	if !keyNameRE.MatchString(req.Name) {
		return httpapi.BadRequest("name", "name must be 1 to 64 letters, digits, '_', '.' "+
			"or '-', got %q", req.Name)
	}
	switch req.Scope {
	case "":
		req.Scope = api.KeyScopeInference
	case api.KeyScopeInference, api.KeyScopeAdmin:
	default:
		return httpapi.BadRequest("scope", "scope must be %q or %q, got %q",
			api.KeyScopeInference, api.KeyScopeAdmin, req.Scope)
	}

	created, err := s.keys.create(r.Context(), req.Name, req.Scope)
	if errors.Is(err, registry.ErrExists) {
		return conflict("key_exists", "name", "a key named \""+req.Name+"\" exists: choose "+
			"another name, or remove it first with `rbee key rm "+req.Name+"`")
	}
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, created)
	return nil
}

func (s *Server) handleListKeys(w http.ResponseWriter, r *http.Request) error {
	s.keys.flush(r.Context())
	keys, err := s.store.APIKeys(r.Context())
	if err != nil {
		return err
	}
	list := api.APIKeyList{Keys: make([]api.APIKey, 0, len(keys))}
	for _, k := range keys {
		list.Keys = append(list.Keys, publicKey(k))
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleDeleteKey(w http.ResponseWriter, r *http.Request) error {
	removed, err := s.keys.remove(r.Context(), chi.URLParam(r, "name"))
	if errors.Is(err, registry.ErrNotFound) {
		return httpapi.NotFound("key_not_found", "no API key %q: see `rbee key list`",
			chi.URLParam(r, "name"))
	}
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, publicKey(removed))
	return nil
}
