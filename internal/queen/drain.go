package queen

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// Drain bounds: how long in-flight requests may run on by default, the
// most a caller may ask for, and how often the queen looks.
const (
	defaultDrainTimeout = 60 * time.Second
	maxDrainTimeout     = 30 * time.Minute
	drainPoll           = 50 * time.Millisecond
)

// drainTimeout reads ?timeout=, naming the parameter when it is wrong.
func drainTimeout(r *http.Request) (time.Duration, error) {
	raw := r.URL.Query().Get("timeout")
	if raw == "" {
		return defaultDrainTimeout, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d < 0 || d > maxDrainTimeout {
		return 0, httpapi.BadRequest("timeout",
			"timeout must be a duration between 0s and %s, like 90s, got %q", maxDrainTimeout, raw)
	}
	return d, nil
}

// handleDrainWorker stops routing new requests to a worker, waits for the
// requests it serves through this queen to finish (at most the timeout),
// then stops it. The caller waits for all of it.
func (s *Server) handleDrainWorker(w http.ResponseWriter, r *http.Request) error {
	timeout, err := drainTimeout(r)
	if err != nil {
		return err
	}
	wk, err := s.worker(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	if wk.State == api.WorkerStopped {
		httpapi.WriteJSON(w, http.StatusOK, s.public(wk))
		return nil
	}
	// A client that leaves must not leave the worker half drained.
	out, err := s.drainWorker(context.WithoutCancel(r.Context()), wk, timeout)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// drainWorker drains one worker; see handleDrainWorker.
func (s *Server) drainWorker(ctx context.Context, wk registry.Worker, timeout time.Duration) (api.Worker, error) {
	s.router.setState(wk.ID, api.WorkerDraining)
	if err := s.setWorkerState(ctx, wk.ID, api.WorkerDraining, ""); err != nil {
		return api.Worker{}, err
	}
	s.log.Info("draining worker", "worker_id", wk.ID, "timeout", timeout)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerDraining, "drain requested")

	how := "drained"
	if !s.waitIdle(ctx, wk.ID, timeout) {
		how = "drain timed out with requests in flight"
		s.log.Warn("drain timed out", "worker_id", wk.ID, "busy", s.router.busy(wk.ID))
	}
	return s.stopWorker(ctx, wk, how)
}

// waitIdle reports whether worker id had no request in flight through this
// queen before timeout passed.
func (s *Server) waitIdle(ctx context.Context, id string, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for s.router.busy(id) > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// handleDrainHive drains every running worker of a hive at once.
func (s *Server) handleDrainHive(w http.ResponseWriter, r *http.Request) error {
	timeout, err := drainTimeout(r)
	if err != nil {
		return err
	}
	hive, err := s.hive(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	all, err := s.store.Workers(r.Context(), false)
	if err != nil {
		return err
	}
	ctx := context.WithoutCancel(r.Context())
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	list := api.WorkerList{Workers: []api.Worker{}}
	for _, wk := range all {
		if wk.Hive != hive.Name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := s.drainWorker(ctx, wk, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil {
				list.Workers = append(list.Workers, out)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}
