package queen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// The HTTP side of deployments: checking a request, and the routes that
// create, scale, show and remove deployments.

// deploymentStatus is d as the keeper sees it, with its live workers.
func (s *Server) deploymentStatus(d registry.Deployment, live []registry.Worker) api.Deployment {
	out := api.Deployment{Name: d.Name, Model: d.Model, Hive: d.Hive, Device: d.Device,
		Slots: d.Slots, CtxSize: d.CtxSize, GPULayers: d.GPULayers, Threads: d.Threads,
		Restart: d.Restart, Replicas: d.Replicas, Live: len(live), Workers: []string{},
		CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
	for _, wk := range live {
		out.Workers = append(out.Workers, wk.ID)
		if wk.State == api.WorkerReady {
			out.Ready++
		}
	}
	if r, ok := s.deploys.retryOf(d.Name); ok {
		out.Error, out.NextSpawn = r.err, r.next
	}
	return out
}

// deploymentFrom checks a deploy request, naming the bad field, and fills
// its defaults.
func deploymentFrom(req api.DeployRequest) (registry.Deployment, error) {
	d := registry.Deployment{Model: strings.TrimSpace(req.Model), Name: req.Name,
		Hive: req.Hive, Device: req.Device, Slots: req.Slots, CtxSize: req.CtxSize,
		GPULayers: req.GPULayers, Threads: req.Threads, Restart: req.Restart,
		Replicas: req.Replicas}
	switch {
	case d.Model == "":
		return d, httpapi.BadRequest("model", "model is required: a catalog name or a GGUF path")
	case d.Replicas < 0 || d.Replicas > maxReplicas:
		return d, httpapi.BadRequest("replicas", "replicas must be between 0 and %d, got %d",
			maxReplicas, d.Replicas)
	case d.Slots < 0 || d.Slots > maxSlots:
		return d, httpapi.BadRequest("slots", "slots must be between 1 and %d, got %d",
			maxSlots, d.Slots)
	case d.CtxSize < 0:
		return d, httpapi.BadRequest("ctx_size", "ctx_size must be 0 or more, got %d", d.CtxSize)
	case d.Threads < 0:
		return d, httpapi.BadRequest("threads", "threads must be 0 or more, got %d", d.Threads)
	case d.GPULayers != nil && *d.GPULayers < 0:
		return d, httpapi.BadRequest("gpu_layers", "gpu_layers must be 0 or more, got %d",
			*d.GPULayers)
	case d.Restart != "" && !registry.KnownRestartPolicy(d.Restart):
		return d, httpapi.BadRequest("restart",
			"restart must be always, on-failure or never, got %q", d.Restart)
	}
	if err := nameDeployment(&d); err != nil {
		return d, err
	}
	if d.Device == "" {
		d.Device = "cpu"
	}
	if d.Slots == 0 {
		d.Slots = 1
	}
	if d.Restart == "" {
		d.Restart = api.RestartOnFailure
	}
	return d, nil
}

// nameDeployment checks d's name, taking the model's file name (without
// .gguf) when it has none.
func nameDeployment(d *registry.Deployment) error {
	given := d.Name != ""
	if !given {
		d.Name = strings.TrimSuffix(filepath.Base(d.Model), ".gguf")
	}
	switch {
	case deploymentName.MatchString(d.Name):
		return nil
	case !given:
		return httpapi.BadRequest("name", "the model's file name gives the deployment name "+
			"%q, which is not 1-128 of A-Za-z0-9._- starting with a letter or digit: "+
			"pass a name (--name)", d.Name)
	}
	return httpapi.BadRequest("name", "name must be 1-128 of A-Za-z0-9._-, starting with a "+
		"letter or digit, got %q", d.Name)
}

// handleDeploy records a deployment (or changes its replica count and
// spawn settings) and brings it towards its count at once: it answers when
// the missing workers are started, not when they are ready. A new
// deployment whose first spawn is refused (no hive fits, bad model) is
// forgotten, and the refusal is the answer.
func (s *Server) handleDeploy(w http.ResponseWriter, r *http.Request) error {
	var req api.DeployRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	d, err := deploymentFrom(req)
	if err != nil {
		return err
	}
	ctx := context.WithoutCancel(r.Context()) // a client that leaves must not cut a spawn
	if d.Hive != "" {
		if _, err := s.hive(ctx, d.Hive); err != nil {
			return err
		}
	}

	s.deploys.mu.Lock()
	defer s.deploys.mu.Unlock()
	if s.deploys.halted {
		return httpapi.Unavailable(0, "the queen is shutting down")
	}
	created, err := s.store.PutDeployment(ctx, d)
	if err != nil {
		return err
	}
	if d, err = s.store.Deployment(ctx, d.Name); err != nil {
		return err
	}
	s.deploys.clearRetry(d.Name) // asked again: try at once
	s.log.Info("deployment recorded", "deployment", d.Name, "model", d.Model,
		"replicas", d.Replicas, "created", created)

	st, err := s.reconcileDeployment(ctx, d)
	if err != nil && created && st.Live == 0 && httpapi.AsError(err).Status < 500 {
		s.deploys.clearRetry(d.Name)
		if derr := s.store.DeleteDeployment(ctx, d.Name); derr != nil {
			return errors.Join(err, derr)
		}
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	httpapi.WriteJSON(w, status, st)
	return nil
}

// deployment looks a deployment up, as a 404 when it does not exist.
func (s *Server) deployment(ctx context.Context, name string) (registry.Deployment, error) {
	d, err := s.store.Deployment(ctx, name)
	if errors.Is(err, registry.ErrNotFound) {
		return d, httpapi.NotFound("deployment_not_found",
			"no deployment %q: see `rbee deploy list`", name)
	}
	return d, err
}

// observeDeployment is where d stands, without acting on it.
func (s *Server) observeDeployment(ctx context.Context,
	d registry.Deployment) (api.Deployment, error) {
	workers, err := s.store.DeploymentWorkers(ctx, d.Name)
	if err != nil {
		return api.Deployment{}, err
	}
	live, _ := tally(workers, s.deploys.isLeaving)
	return s.deploymentStatus(d, live), nil
}

func (s *Server) handleListDeployments(w http.ResponseWriter, r *http.Request) error {
	all, err := s.store.Deployments(r.Context())
	if err != nil {
		return err
	}
	list := api.DeploymentList{Deployments: make([]api.Deployment, 0, len(all))}
	for _, d := range all {
		st, err := s.observeDeployment(r.Context(), d)
		if err != nil {
			return err
		}
		list.Deployments = append(list.Deployments, st)
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleGetDeployment(w http.ResponseWriter, r *http.Request) error {
	d, err := s.deployment(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	st, err := s.observeDeployment(r.Context(), d)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, st)
	return nil
}

// handleDeleteDeployment forgets a deployment, then drains and stops its
// workers, all at once, within ?timeout= (as a drain), and answers with
// them.
func (s *Server) handleDeleteDeployment(w http.ResponseWriter, r *http.Request) error {
	timeout, err := drainTimeout(r)
	if err != nil {
		return err
	}
	ctx := context.WithoutCancel(r.Context())
	name := chi.URLParam(r, "name")
	workers, err := s.forgetDeployment(ctx, name)
	if err != nil {
		return err
	}
	stopped, errs := s.drainAll(ctx, workers, timeout)
	if len(errs) > 0 {
		return s.retireUnstopped(ctx, name, workers, stopped, errors.Join(errs...))
	}
	httpapi.WriteJSON(w, http.StatusOK, api.DeploymentRemoved{Name: name, Workers: stopped})
	return nil
}

// retireUnstopped makes the workers of removed deployment name that could
// not be stopped (their hive is unreachable) wanted stopped: untied from
// any deployment and still wanted running, they would otherwise serve on,
// unmanaged, and no gc would ever take them for orphans. It returns the
// error the user sees, saying what to do next.
func (s *Server) retireUnstopped(ctx context.Context, name string, workers []registry.Worker,
	stopped []api.Worker, cause error) error {
	done := make(map[string]bool, len(stopped))
	for _, wk := range stopped {
		done[wk.ID] = true
	}
	var left, gcs []string
	for _, wk := range workers {
		if done[wk.ID] {
			continue
		}
		if err := s.store.RetireWorker(ctx, wk.ID); err != nil {
			s.log.Error("retire worker", "worker_id", wk.ID, "error", err)
		} else {
			s.deploys.strand(wk, "") // stopped once its hive can be reached
		}
		left = append(left, wk.ID)
		gcs = append(gcs, "`rbee hive gc "+wk.Hive+"`")
	}
	slices.Sort(gcs)
	return httpapi.Upstream(cause, "deployment %s is removed, but workers %s could not be "+
		"stopped (%v); nothing starts them again, and this queen stops them once it reaches "+
		"their hive again; should that fail, run %s",
		name, strings.Join(left, ", "), cause, strings.Join(slices.Compact(gcs), ", "))
}

// forgetDeployment deletes deployment name and returns the workers it had.
func (s *Server) forgetDeployment(ctx context.Context, name string) ([]registry.Worker, error) {
	s.deploys.mu.Lock()
	defer s.deploys.mu.Unlock()
	if _, err := s.deployment(ctx, name); err != nil {
		return nil, err
	}
	workers, err := s.store.DeploymentWorkers(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := s.store.DeleteDeployment(ctx, name); err != nil {
		return nil, err
	}
	s.deploys.clearRetry(name)
	s.log.Info("deployment removed", "deployment", name, "workers", len(workers))
	return workers, nil
}

// drainAll drains workers at once, each within timeout, and returns those
// it stopped, and why each other one could not be, once all are done.
func (s *Server) drainAll(ctx context.Context, workers []registry.Worker,
	timeout time.Duration) ([]api.Worker, []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	stopped := []api.Worker{}
	for _, wk := range workers {
		wg.Go(func() {
			out, err := s.drainWorker(ctx, wk, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("worker %s on hive %s: %w", wk.ID, wk.Hive, err))
				return
			}
			stopped = append(stopped, out)
		})
	}
	wg.Wait()
	sort.Slice(stopped, func(i, j int) bool { return stopped[i].ID < stopped[j].ID })
	return stopped, errs
}
