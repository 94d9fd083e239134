package queen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

const (
	defaultHive  = "localhost"
	maxSlots     = 64
	stopTimeout  = 15 * time.Second
	tokenBytes   = 32
	workerIDSize = 6
)

func (s *Server) handleListWorkers(w http.ResponseWriter, r *http.Request) error {
	all := r.URL.Query().Get("all") == "true"
	workers, err := s.store.Workers(r.Context(), all)
	if err != nil {
		return err
	}
	list := api.WorkerList{Workers: make([]api.Worker, 0, len(workers))}
	for _, wk := range workers {
		list.Workers = append(list.Workers, s.public(wk))
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleGetWorker(w http.ResponseWriter, r *http.Request) error {
	wk, err := s.worker(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, s.public(wk))
	return nil
}

// public is the worker as the keeper sees it: no token, live slot count.
func (s *Server) public(wk registry.Worker) api.Worker {
	out := wk.Worker
	if busy := s.router.busy(wk.ID); busy > out.SlotsBusy {
		out.SlotsBusy = busy
	}
	out.Stats = s.live.get(wk.ID)
	return out
}

// worker looks a worker up, as a 404 when it does not exist.
func (s *Server) worker(ctx context.Context, id string) (registry.Worker, error) {
	wk, err := s.store.Worker(ctx, id)
	if errors.Is(err, registry.ErrNotFound) {
		return wk, httpapi.NotFound("worker_not_found",
			"no worker %q: see `rbee worker list --all`", id)
	}
	return wk, err
}

// spawnPlan is a validated spawn request.
type spawnPlan struct {
	hive registry.Hive
	req  api.SpawnRequest
	// placed, when the queen placed the worker, holds the other hives to
	// try in order if the first refuses (see spawnPlaced).
	placed *placementPlan
}

func (s *Server) handleSpawnWorker(w http.ResponseWriter, r *http.Request) error {
	var req api.SpawnRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	plan, err := s.planSpawn(r.Context(), req)
	if err != nil {
		return err
	}
	wk, err := s.spawnPlaced(r.Context(), plan)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, s.public(wk))
	return nil
}

// planSpawn fills defaults and checks the request, naming the bad field.
func (s *Server) planSpawn(ctx context.Context, req api.SpawnRequest) (spawnPlan, error) {
	if strings.TrimSpace(req.Model) == "" {
		return spawnPlan{}, httpapi.BadRequest("model", "model is required: the path of a GGUF file on the hive")
	}
	if req.Device == "" {
		req.Device = "cpu"
	}
	var placed *placementPlan
	if needsPlacement(req) {
		pp, err := s.placeSpawn(ctx, req)
		if err != nil {
			return spawnPlan{}, err
		}
		p := pp.candidates[0]
		s.log.Info("placed worker", "hive", p.hive, "device", p.device, "model", req.Model)
		req.Hive, req.Device = p.hive, p.device
		placed = &pp
	}
	if req.Hive == "" {
		req.Hive = defaultHive
	}
	if req.Slots == 0 {
		req.Slots = 1
	}
	if req.Slots < 1 || req.Slots > maxSlots {
		return spawnPlan{}, httpapi.BadRequest("slots", "slots must be between 1 and %d, got %d", maxSlots, req.Slots)
	}
	if req.GPULayers != nil && *req.GPULayers < 0 {
		return spawnPlan{}, httpapi.BadRequest("gpu_layers", "gpu_layers must be 0 or more, got %d", *req.GPULayers)
	}
	if req.Threads < 0 {
		return spawnPlan{}, httpapi.BadRequest("threads", "threads must be 0 (the node's default) or more, got %d", req.Threads)
	}
	if req.CtxSize < 0 {
		return spawnPlan{}, httpapi.BadRequest("ctx_size", "ctx_size must be 0 (the model's) or more, got %d", req.CtxSize)
	}
	if req.Restart == "" {
		req.Restart = api.RestartOnFailure
	}
	if !registry.KnownRestartPolicy(req.Restart) {
		return spawnPlan{}, httpapi.BadRequest("restart",
			"restart must be always, on-failure or never, got %q", req.Restart)
	}
	if req.Name == "" {
		req.Name = strings.TrimSuffix(filepath.Base(req.Model), ".gguf")
	}
	hive, err := s.store.Hive(ctx, req.Hive)
	if errors.Is(err, registry.ErrNotFound) {
		return spawnPlan{}, httpapi.NotFound("hive_not_found", "no hive %q", req.Hive)
	}
	if err != nil {
		return spawnPlan{}, err
	}
	if err := s.canReachQueen(hive); err != nil {
		return spawnPlan{}, err
	}
	return spawnPlan{hive: hive, req: req, placed: placed}, nil
}

// spawn records the worker as starting, has its hive start it, and records
// where it runs. The worker turns ready with its first ready heartbeat.
func (s *Server) spawn(ctx context.Context, p spawnPlan) (registry.Worker, error) {
	wk := registry.Worker{
		Worker: api.Worker{
			ID: newWorkerID(), Hive: p.hive.Name, Model: p.req.Name, ModelPath: p.req.Model,
			Device: p.req.Device, Slots: p.req.Slots, State: api.WorkerStarting,
			CreatedAt: time.Now().UTC(), Restart: p.req.Restart,
		},
		Token:     newToken(),
		Desired:   registry.DesiredRunning,
		CtxSize:   p.req.CtxSize,
		GPULayers: p.req.GPULayers,
		Threads:   p.req.Threads,
	}
	if err := s.store.CreateWorker(ctx, wk); err != nil {
		return wk, err
	}
	s.log.Info("spawning worker", "worker_id", wk.ID, "hive", wk.Hive, "model", wk.Model,
		"device", wk.Device, "slots", wk.Slots, "restart", wk.Restart)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerStarting, "spawn requested")
	return s.startOnHive(ctx, p.hive, wk)
}

// startOnHive has the hive start the recorded worker wk (a new one, or one
// started again under its id), and records where it runs.
func (s *Server) startOnHive(ctx context.Context, hive registry.Hive,
	wk registry.Worker) (registry.Worker, error) {
	log := s.log.With("worker_id", wk.ID, "hive", wk.Hive, "model", wk.Model)
	args := []string{"worker", "spawn", "--id", wk.ID, "--model", wk.ModelPath,
		"--name", wk.Model, "--device", wk.Device, "--slots", strconv.Itoa(wk.Slots),
		"--ctx-size", strconv.Itoa(wk.CtxSize), "--host", hive.Host,
		"--queen-url", s.queenURLFor(hive)}
	if wk.GPULayers != nil {
		args = append(args, "--gpu-layers", strconv.Itoa(*wk.GPULayers))
	}
	if wk.Threads > 0 {
		args = append(args, "--threads", strconv.Itoa(wk.Threads))
	}
	var res api.SpawnResult
	if err := s.hives.run(ctx, hive, args, wk.Token+"\n", &res); err != nil {
		log.Warn("spawn failed", "error", err)
		reason := httpapi.AsError(err).Message
		_ = s.setWorkerState(context.WithoutCancel(ctx), wk.ID, api.WorkerFailed, reason)
		s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerFailed, reason)
		return wk, err
	}
	if err := s.store.SetSpawned(ctx, wk.ID, res.PID, res.URL, res.LogPath); err != nil {
		return wk, err
	}
	// The worker may have heartbeated already (loading, even ready): only
	// move starting forward, in one statement, so a heartbeat in between
	// is never overwritten nor announced twice.
	if moved, err := s.store.AdvanceState(ctx, wk.ID, api.WorkerStarting, api.WorkerLoading); err == nil && moved {
		s.hbIndex.drop(wk.ID)
		s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerLoading,
			"started on the hive, pid "+strconv.Itoa(res.PID))
	}
	s.router.add(wk.ID, wk.Model, res.URL, wk.Token, wk.Slots)
	s.tracker.Arm(wk.ID)
	log.Info("worker started", "pid", res.PID, "url", res.URL)
	return s.store.Worker(ctx, wk.ID)
}

func (s *Server) handleStopWorker(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	wk, err := s.worker(ctx, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	out, err := s.stopWorker(ctx, wk, "")
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// stopWorker has the worker's hive stop it (SIGTERM: the worker finishes
// what is in flight within its own drain bound), and records it stopped
// so that nothing starts it again. how says why, for the event.
func (s *Server) stopWorker(ctx context.Context, wk registry.Worker, how string) (api.Worker, error) {
	hive, err := s.store.Hive(ctx, wk.Hive)
	if err != nil {
		return api.Worker{}, err
	}
	// Stop routing first, so no new request lands on a worker going away.
	s.router.setState(wk.ID, api.WorkerDraining)
	var res api.StopResult
	err = s.hives.run(ctx, hive, []string{"worker", "stop", wk.ID,
		"--timeout", stopTimeout.String()}, "", &res)
	if err != nil && httpapi.AsError(err).Status != http.StatusNotFound {
		return api.Worker{}, err
	}
	s.forget(wk.ID)
	if err := s.setWorkerState(ctx, wk.ID, api.WorkerStopped, ""); err != nil {
		return api.Worker{}, err
	}
	s.log.Info("worker stopped", "worker_id", wk.ID, "outcome", res.Outcome)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerStopped, stopReason(how, res.Outcome))
	wk, err = s.worker(ctx, wk.ID)
	if err != nil {
		return api.Worker{}, err
	}
	return s.public(wk), nil
}

// stopReason says how a stop on request ended; how names the request
// ("drained"), or is empty for a plain stop.
func stopReason(how, outcome string) string {
	reason := "stopped on request"
	if how != "" {
		reason = how + ", then " + reason
	}
	if outcome == "" {
		return reason
	}
	return reason + " (" + outcome + ")"
}

// forget drops a worker from routing and deadline tracking.
func (s *Server) forget(id string) {
	// The route goes with the index entry, so that no heartbeat read
	// before can put the route back.
	s.hbIndex.dropThen(id, func() { s.router.remove(id) })
	s.tracker.Remove(id)
	s.live.remove(id)
}

func newWorkerID() string { return "w-" + randomHex(workerIDSize) }

func newToken() string { return randomHex(tokenBytes) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}
