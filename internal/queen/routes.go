package queen

import (
	"net/http"
	"os"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/version"
)

// routes is the queen's whole HTTP surface (see docs/contracts.md).
func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	h := func(f httpapi.HandlerFunc) http.HandlerFunc { return httpapi.Handle(s.log, f) }
	r.Use(s.authenticate) // API keys; see auth.go for which route needs which

	r.Get("/health", h(s.handleHealth))
	r.Method(http.MethodGet, "/metrics", s.metrics.handler()) // admin; see auth.go
	// The dashboard: public static files (see dashboard.go).
	dashboard := dashboardHandler()
	r.Method(http.MethodGet, "/", dashboard)
	r.Method(http.MethodGet, dashboardPrefix+"*", dashboard)
	r.Route("/v1", func(r chi.Router) {
		r.Get("/status", h(s.handleStatus))
		r.Post("/shutdown", h(s.handleShutdown))
		r.Post("/heartbeat", h(s.handleHeartbeat))
		r.Get("/events", h(s.handleEvents)) // WebSocket; see events.go

		r.Get("/workers", h(s.handleListWorkers))
		r.Post("/workers", h(s.handleSpawnWorker))
		r.Get("/workers/{id}", h(s.handleGetWorker))
		r.Delete("/workers/{id}", h(s.handleStopWorker))
		r.Post("/workers/{id}/drain", h(s.handleDrainWorker))
		r.Get("/workers/{id}/logs", h(s.handleWorkerLogs)) // streams; see logs.go

		r.Get("/hives", h(s.handleListHives))
		r.Post("/hives", h(s.handleAddHive))
		r.Delete("/hives/{name}", h(s.handleDeleteHive))
		r.Post("/hives/{name}/install", h(s.handleInstallHive))
		r.Post("/hives/{name}/check", h(s.handleCheckHive))
		r.Post("/hives/{name}/drain", h(s.handleDrainHive))
		r.Get("/hives/{name}/orphans", h(s.handleHiveOrphans)) // gc.go
		r.Post("/hives/{name}/gc", h(s.handleHiveGC))
		r.Post("/hives/{name}/uninstall", h(s.handleUninstallHive))
		r.Get("/hives/{name}/devices", h(s.handleHiveDevices))
		r.Get("/hives/{name}/models", h(s.handleListHiveModels))
		r.Get("/catalog", h(s.handleCatalog)) // every hive's models; see catalog.go
		r.Delete("/hives/{name}/models/{model}", h(s.handleDeleteHiveModel))
		r.Post("/models/download", h(s.handleDownloadModel))

		r.Get("/deployments", h(s.handleListDeployments)) // deploy.go
		r.Post("/deployments", h(s.handleDeploy))
		r.Get("/deployments/{name}", h(s.handleGetDeployment))
		r.Delete("/deployments/{name}", h(s.handleDeleteDeployment))

		r.Get("/keys", h(s.handleListKeys))
		r.Post("/keys", h(s.handleCreateKey))
		r.Delete("/keys/{name}", h(s.handleDeleteKey))

		r.Get("/models", h(s.handleModels))
		r.Get("/models/{model}", h(s.handleModel))
		r.Post("/completions", h(s.handleCompletions))
		r.Post("/chat/completions", h(s.handleChatCompletions))
		r.Post("/embeddings", h(s.handleEmbeddings))
	})
	r.NotFound(h(func(http.ResponseWriter, *http.Request) error {
		return httpapi.NotFound("not_found", "no such route; see docs/contracts.md")
	}))
	r.MethodNotAllowed(h(func(w http.ResponseWriter, r *http.Request) error {
		return &httpapi.Error{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error",
			Message: "method " + r.Method + " is not allowed on " + r.URL.Path}
	}))
	return r
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) error {
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": version.Version})
	return nil
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	workers, err := s.store.Workers(r.Context(), false)
	if err != nil {
		return err
	}
	st := api.QueenStatus{Version: version.Version, ProtocolVersion: api.ProtocolVersion,
		Addr: s.cfg.Addr, PID: os.Getpid(), StartedAt: s.startedAt, Workers: len(workers)}
	for _, wk := range workers {
		if wk.State == api.WorkerReady {
			st.ReadyWorkers++
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) error {
	res, err := s.cascadeIfAsked(r) // shutdown.go: ?cascade=true stops every worker first
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusAccepted, res)
	// Let the reply leave before the listener closes.
	time.AfterFunc(50*time.Millisecond, s.shutdown)
	return nil
}
