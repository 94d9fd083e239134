package queen

import (
	"context"
	"net/http"
	"slices"
	"sort"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// handleModels lists the models with at least one ready worker.
func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) error {
	list, err := s.readyModels(r.Context())
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, openai.ModelList{Object: "list", Data: list})
	return nil
}

// handleModel shows one model, as OpenAI's GET /v1/models/{model} does.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) error {
	list, err := s.readyModels(r.Context())
	if err != nil {
		return err
	}
	id := chi.URLParam(r, "model")
	for _, m := range list {
		if m.ID == id {
			httpapi.WriteJSON(w, http.StatusOK, m)
			return nil
		}
	}
	return httpapi.NotFound("model_not_found", "no ready worker serves model %q: "+
		"see GET /v1/models, or start one with `rbee worker spawn`", id)
}

// readyModels are the models with a ready worker, sorted by id, each with
// how many ready workers serve it and on which hives.
func (s *Server) readyModels(ctx context.Context) ([]openai.Model, error) {
	workers, err := s.store.Workers(ctx, false)
	if err != nil {
		return nil, err
	}
	byModel := map[string]*openai.Model{}
	for _, wk := range workers {
		if wk.State != api.WorkerReady {
			continue
		}
		e, ok := byModel[wk.Model]
		if !ok {
			e = &openai.Model{ID: wk.Model, Object: "model", Created: wk.CreatedAt.Unix(),
				OwnedBy: "rbee", Hives: []string{}}
			byModel[wk.Model] = e
		}
		e.Replicas++
		e.Created = min(e.Created, wk.CreatedAt.Unix())
		if !slices.Contains(e.Hives, wk.Hive) {
			e.Hives = append(e.Hives, wk.Hive)
		}
	}
	list := make([]openai.Model, 0, len(byModel))
	for _, e := range byModel {
		sort.Strings(e.Hives)
		list = append(list, *e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	return list, nil
}
