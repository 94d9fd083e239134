package queen

import (
	"context"
	"net/http"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// cascadeIfAsked serves POST /v1/shutdown?cascade=true[&timeout=D]: before
// the queen stops, every worker on every hive is drained (within the
// timeout, as `rbee worker drain`) and stopped, and each is recorded as
// wanted stopped, so the next queen starts none of them again. Without
// cascade, workers keep running and keep heartbeating to the next queen.
//
// Deployments are kept: the next queen spawns their replicas again
// (`rbee deploy rm` forgets one). A worker that could not be stopped
// (its hive is unreachable) is named in Errors; `rbee hive gc` ends it
// later.
func (s *Server) cascadeIfAsked(r *http.Request) (api.ShutdownResult, error) {
	res := api.ShutdownResult{Status: "shutting_down"}
	if r.URL.Query().Get("cascade") != "true" {
		return res, nil
	}
	timeout, err := drainTimeout(r)
	if err != nil {
		return res, err
	}
	ctx := context.WithoutCancel(r.Context())
	res.Workers, res.Errors = s.stopEveryWorker(ctx, timeout)
	deps, err := s.store.Deployments(ctx)
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
	}
	for _, d := range deps {
		res.KeptDeployments = append(res.KeptDeployments, d.Name)
	}
	return res, nil
}

// stopEveryWorker stops deployments from spawning, makes every worker
// wanted stopped (so that neither a restart nor a deployment starts one
// while the others drain), then drains them all at once.
func (s *Server) stopEveryWorker(ctx context.Context,
	timeout time.Duration) ([]api.Worker, []string) {
	s.deploys.halt()
	var errs []string
	if _, err := s.store.StopAllWorkers(ctx); err != nil {
		return nil, []string{err.Error()}
	}
	workers, err := s.store.Workers(ctx, false)
	if err != nil {
		return nil, []string{err.Error()}
	}
	s.log.Info("stopping every worker before the queen stops", "workers", len(workers),
		"timeout", timeout)
	stopped, failed := s.drainAll(ctx, workers, timeout)
	for _, err := range failed {
		errs = append(errs, err.Error())
	}
	s.deploys.drains.Wait() // scale-downs already under way
	return stopped, errs
}
