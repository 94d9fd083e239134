package queen

// Deployments keep N workers of one model running. The reconcile loop
// (restart.go) calls reconcileDeployments after the restart pass; each
// deployment's workers are counted, dead ones are given up on and
// replaced, missing ones are spawned through placement, and extra ones are
// drained.
//
// What counts as a replica: a worker of the deployment that the queen
// wants running and that is starting, loading or ready, or that is lost,
// failed or exited and that its restart policy will start again
// (restartReason). The restart path owns that one: it keeps its slot, so
// the deployment never spawns a second worker beside one being restarted.
// A draining worker is on its way out and is not counted. A worker that
// ended and that no restart will bring back (policy never, or it never got
// ready) is retired (desired stopped, process stopped if it may still run)
// and replaced; each retirement and each failed spawn lengthens the wait
// before the next spawn (the restart backoff), so a model that cannot load
// does not spawn a worker every second. The wait is forgotten once every
// replica is ready.
//
// A hive that goes down: a worker of a deployment without --hive that is
// down (lost, or failed or exited and waiting for a restart) on a hive the
// queen cannot reach (its last contact failed, see hiveWait) keeps its
// replica for hiveDownGrace, then is retired and replaced through
// placement, which cannot ask that hive. A ready worker is never replaced,
// whatever SSH says: workers serve without it. The retired worker's
// process may still run, cut off from the queen; it is stopped as soon as
// its hive is reachable again (stopStranded), and told to exit by the
// queen if it heartbeats first.
//
// Shortcomings: spawns run one after another inside the reconcile pass,
// so a slow hive delays restarts too (as restarts already delay each
// other); placement still asks the unreachable hive (and waits for its
// SSH connect timeout); a worker pinned to its hive (--hive) waits for it;
// the backoff, the grace and the processes still to stop live in memory
// and start afresh with the queen (`rbee hive gc` then finds the
// processes: their workers are wanted stopped).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
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

// maxReplicas bounds one deployment.
const maxReplicas = 64

// hiveDownGrace is how long a worker of a deployment without --hive stays
// down on an unreachable hive before another hive gets its replica,
// counted from the first reconcile pass that sees both. Its heartbeat
// deadline has passed already, and the hive has failed at least one probe
// (every 10 s): 30 s more is three probes, long enough that a network blip
// or a quick reboot leaves the worker to its restart, and short beside the
// minutes a model takes to load elsewhere.
const hiveDownGrace = 30 * time.Second

// deploymentName is what a deployment may be called: it is a path segment
// of /v1/deployments/{name}, where a slash would make it unreachable.
var deploymentName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// deployState is the queen's in-memory side of deployments.
type deployState struct {
	// mu makes one reconcile of deployments run at a time, whether the
	// loop or a request started it, so that two never spawn for one gap.
	mu sync.Mutex
	// halted is set by a cascading shutdown: nothing is spawned any more.
	halted bool
	// retry holds, per deployment, the failures in a row and when the next
	// spawn may happen. retryMu guards it alone, so that reading where a
	// deployment stands never waits for a spawn.
	retryMu sync.Mutex
	retry   map[string]spawnRetry
	// lifetime is Serve's context, which ends with the queen (set before
	// the queen takes requests; nil in tests without Serve); scale-down
	// drains are cut short with it.
	lifetime context.Context
	// drains tracks the scale-down drains running in the background.
	drains sync.WaitGroup
	// leaving holds the workers those drains are taking away. A worker's
	// heartbeat can write its state over draining (one that still loads
	// says loading), and it would count as a replica again: another
	// worker would be drained in its place.
	leavingMu sync.Mutex
	leaving   map[string]bool
	// down holds, per worker, since when reconcile passes have seen it down
	// on an unreachable hive (hiveDownGrace), and the last pass that did.
	// Guarded by mu.
	down map[string]downMark
	pass int
	// stranded holds the retired workers whose process may still run on a
	// hive that was unreachable: stopped once it is reachable again.
	strandMu sync.Mutex
	stranded map[string]strandedWorker
}

// downMark is when a worker was first seen down on an unreachable hive.
type downMark struct {
	since time.Time
	pass  int
}

// strandedWorker is a retired worker to stop on its hive when it can be
// reached: the deployment that replaced it (if any), and when to try next.
type strandedWorker struct {
	wk         registry.Worker
	deployment string
	next       time.Time
	tries      int
}

// maxStrandedStops is how many times stopping a stranded worker's process
// on a reachable hive may fail before it is left to `rbee hive gc`.
const maxStrandedStops = 5

// strand records that retired worker wk's process may still run.
func (d *deployState) strand(wk registry.Worker, deployment string) {
	d.strandMu.Lock()
	defer d.strandMu.Unlock()
	if d.stranded == nil {
		d.stranded = map[string]strandedWorker{}
	}
	d.stranded[wk.ID] = strandedWorker{wk: wk, deployment: deployment}
}

// setLeaving records whether scale-down is taking worker id away.
func (d *deployState) setLeaving(id string, on bool) {
	d.leavingMu.Lock()
	defer d.leavingMu.Unlock()
	if d.leaving == nil {
		d.leaving = map[string]bool{}
	}
	if on {
		d.leaving[id] = true
	} else {
		delete(d.leaving, id)
	}
}

// isLeaving reports whether scale-down is taking worker id away.
func (d *deployState) isLeaving(id string) bool {
	d.leavingMu.Lock()
	defer d.leavingMu.Unlock()
	return d.leaving[id]
}

// spawnRetry is one deployment's recent spawn failures.
type spawnRetry struct {
	streak int
	next   time.Time
	err    string
}

// lifetimeCtx is the context background drains run under.
func (d *deployState) lifetimeCtx() context.Context {
	if d.lifetime == nil {
		return context.Background()
	}
	return d.lifetime
}

// retryOf returns deployment name's recent failures, if any.
func (d *deployState) retryOf(name string) (spawnRetry, bool) {
	d.retryMu.Lock()
	defer d.retryMu.Unlock()
	r, ok := d.retry[name]
	return r, ok
}

// clearRetry forgets deployment name's failures.
func (d *deployState) clearRetry(name string) {
	d.retryMu.Lock()
	defer d.retryMu.Unlock()
	delete(d.retry, name)
}

// halt stops every deployment from spawning, for good.
func (d *deployState) halt() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.halted = true
}

// reconcileDeployments brings every deployment to its replica count.
func (s *Server) reconcileDeployments(ctx context.Context) {
	s.deploys.mu.Lock()
	defer s.deploys.mu.Unlock()
	if s.deploys.halted {
		return
	}
	s.stopStranded(ctx)
	deployments, err := s.store.Deployments(ctx)
	if err != nil {
		s.log.Error("reconcile: list deployments", "error", err)
		return
	}
	s.deploys.pass++
	for _, d := range deployments {
		if ctx.Err() != nil {
			return
		}
		if _, err := s.reconcileDeployment(ctx, d); err != nil {
			s.log.Warn("reconcile deployment", "deployment", d.Name, "error", err)
		}
	}
	for id, m := range s.deploys.down {
		if m.pass != s.deploys.pass {
			delete(s.deploys.down, id) // gone from every deployment, or back up
		}
	}
}

// reconcileDeployment does reconcileDeployments' work for d, and reports
// where d stands after it. The caller holds s.deploys.mu.
func (s *Server) reconcileDeployment(ctx context.Context,
	d registry.Deployment) (api.Deployment, error) {
	workers, err := s.store.DeploymentWorkers(ctx, d.Name)
	if err != nil {
		return api.Deployment{}, err
	}
	live, dead := tally(workers, s.deploys.isLeaving)
	for _, wk := range dead {
		s.retire(ctx, d, wk)
	}
	live = s.replaceDownHives(ctx, d, live)

	var spawnErr error
	switch {
	case len(live) > d.Replicas:
		live = s.scaleDown(ctx, d, live)
	case len(live) < d.Replicas:
		var started []registry.Worker
		started, spawnErr = s.scaleUp(ctx, d, d.Replicas-len(live), len(live))
		live = append(live, started...)
	}
	st := s.deploymentStatus(d, live)
	if st.Ready == d.Replicas {
		s.deploys.clearRetry(d.Name) // healthy: the next failure waits the least again
		st.Error, st.NextSpawn = "", time.Time{}
	}
	return st, spawnErr
}

// tally sorts a deployment's wanted workers into live ones, which fill a
// replica, and dead ones, which are to be replaced. Draining ones, and
// those scale-down is taking away, are in neither.
func tally(workers []registry.Worker,
	leaving func(id string) bool) (live, dead []registry.Worker) {
	for _, wk := range workers {
		if leaving(wk.ID) {
			continue
		}
		switch wk.State {
		case api.WorkerStarting, api.WorkerLoading, api.WorkerReady:
			live = append(live, wk)
		case api.WorkerDraining:
		default:
			if restartReason(wk) != "" {
				live = append(live, wk) // the restart path brings it back
			} else {
				dead = append(dead, wk)
			}
		}
	}
	return live, dead
}

// retire gives up on a dead worker of d, so that a new one replaces it.
func (s *Server) retire(ctx context.Context, d registry.Deployment, wk registry.Worker) {
	why := fmt.Sprintf("%s: %s; deployment %s replaces it", wk.State,
		orText(wk.Error, "no reason given"), d.Name)
	s.forget(wk.ID)
	var err error
	if wk.State == api.WorkerLost {
		// A lost process may still run, hung: stop it, now or once its hive
		// is reachable again (stopStranded), and record it stopped, so that
		// a late heartbeat tells it to exit.
		if h, herr := s.store.Hive(ctx, wk.Hive); herr == nil && hiveWait(h) != "" {
			s.deploys.strand(wk, d.Name)
		} else if err := s.stopOnHive(ctx, wk); err != nil {
			s.log.Warn("stop retired worker", "worker_id", wk.ID, "error", err)
			s.deploys.strand(wk, d.Name)
		}
		err = s.setWorkerState(ctx, wk.ID, api.WorkerStopped, why)
	} else {
		err = s.store.RetireWorker(ctx, wk.ID) // keeps failed, with its error
	}
	if err != nil {
		s.log.Error("retire worker", "worker_id", wk.ID, "error", err)
		return
	}
	s.noteSpawnFailure(d.Name, why)
	s.log.Warn("worker retired", "worker_id", wk.ID, "deployment", d.Name, "reason", why)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, wk.State, why)
}

// replaceDownHives retires, when d is not pinned to a hive, each of its
// live workers that has been down on an unreachable hive for
// hiveDownGrace, and returns the others: scale-up places replacements for
// the ones it took. The caller holds s.deploys.mu.
func (s *Server) replaceDownHives(ctx context.Context, d registry.Deployment,
	live []registry.Worker) []registry.Worker {
	if d.Hive != "" {
		return live
	}
	if s.deploys.down == nil {
		s.deploys.down = map[string]downMark{}
	}
	now := s.clock.Now()
	hives := map[string]registry.Hive{}
	kept := make([]registry.Worker, 0, len(live))
	for _, wk := range live {
		h, down := s.downOnLostHive(ctx, wk, hives)
		if !down {
			kept = append(kept, wk)
			continue
		}
		m, seen := s.deploys.down[wk.ID]
		if !seen {
			m.since = now
		}
		m.pass = s.deploys.pass
		s.deploys.down[wk.ID] = m
		if now.Sub(m.since) < hiveDownGrace || !s.retireDown(ctx, d, wk, h, now.Sub(m.since)) {
			kept = append(kept, wk)
		}
	}
	return kept
}

// downOnLostHive reports whether wk is down (lost, or ended and waiting
// for its restart: never when it starts, loads or is ready) on a hive the
// queen could not reach the last time it tried, and returns that hive.
// hives caches the hives looked up.
func (s *Server) downOnLostHive(ctx context.Context, wk registry.Worker,
	hives map[string]registry.Hive) (registry.Hive, bool) {
	switch wk.State {
	case api.WorkerLost, api.WorkerFailed, api.WorkerStopped:
	default:
		return registry.Hive{}, false
	}
	h, ok := hives[wk.Hive]
	if !ok {
		var err error
		if h, err = s.store.Hive(ctx, wk.Hive); err != nil {
			return h, false
		}
		hives[wk.Hive] = h
	}
	return h, hiveWait(h) != ""
}

// retireDown gives up on wk, down for downFor on unreachable hive h, so
// that another hive takes its replica, and reports whether it did: a
// heartbeat or a restart that got there first keeps it. Its process is
// stopped once h is reachable again.
func (s *Server) retireDown(ctx context.Context, d registry.Deployment, wk registry.Worker,
	h registry.Hive, downFor time.Duration) bool {
	why := fmt.Sprintf("%s on hive %s, unreachable for %s (%s): deployment %s replaces it "+
		"on another hive", wk.State, h.Name, downFor.Round(time.Second),
		orText(h.Contact.LastError, "no answer"), d.Name)
	ok, err := s.store.RetireDownWorker(ctx, wk.ID, why)
	if err != nil {
		s.log.Error("retire worker", "worker_id", wk.ID, "error", err)
	}
	if !ok {
		return false
	}
	delete(s.deploys.down, wk.ID)
	s.forget(wk.ID) // a late heartbeat reads the stopped state, and is told to exit
	s.deploys.strand(wk, d.Name)
	state := wk.State
	if state == api.WorkerLost {
		state = api.WorkerStopped
	}
	s.log.Warn("worker retired: hive unreachable", "worker_id", wk.ID, "hive", h.Name,
		"deployment", d.Name, "down_for", downFor)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, state, why)
	return true
}

// stopStranded stops the processes of workers retired while their hive
// was unreachable, on each such hive that is reachable again. One whose
// stop fails is tried again after hiveDownGrace, up to maxStrandedStops
// times, and then left to `rbee hive gc` (its worker is wanted stopped).
func (s *Server) stopStranded(ctx context.Context) {
	s.deploys.strandMu.Lock()
	todo := make([]strandedWorker, 0, len(s.deploys.stranded))
	for _, st := range s.deploys.stranded {
		todo = append(todo, st)
	}
	s.deploys.strandMu.Unlock()
	sort.Slice(todo, func(i, j int) bool { return todo[i].wk.ID < todo[j].wk.ID })

	now := s.clock.Now()
	for _, st := range todo {
		if ctx.Err() != nil {
			return
		}
		if now.Before(st.next) {
			continue
		}
		done, err := s.stopStrandedOne(ctx, st)
		if err != nil {
			st.tries++
			st.next = now.Add(hiveDownGrace)
			s.log.Warn("stop stranded worker", "worker_id", st.wk.ID, "hive", st.wk.Hive,
				"tries", st.tries, "error", err)
			done = st.tries >= maxStrandedStops
		}
		s.deploys.strandMu.Lock()
		if done {
			delete(s.deploys.stranded, st.wk.ID)
		} else if err != nil {
			s.deploys.stranded[st.wk.ID] = st
		}
		s.deploys.strandMu.Unlock()
	}
}

// stopStrandedOne does stopStranded's work for st, and reports whether st
// is done with (stopped, or no longer the queen's to stop), or why its
// stop failed.
func (s *Server) stopStrandedOne(ctx context.Context, st strandedWorker) (bool, error) {
	wk := st.wk
	h, err := s.store.Hive(ctx, wk.Hive)
	if errors.Is(err, registry.ErrNotFound) {
		return true, nil // the hive was removed: nothing left to reach
	}
	if err != nil {
		return false, err
	}
	if hiveWait(h) != "" {
		return false, nil // still unreachable: wait for the hive probe
	}
	if row, err := s.store.Worker(ctx, wk.ID); err == nil &&
		row.Desired == registry.DesiredRunning {
		return true, nil // wanted again: not a leftover any more
	}
	if err := s.stopOnHive(ctx, wk); err != nil {
		s.markUnreachable(ctx, h, err)
		return false, err
	}
	why := fmt.Sprintf("hive %s is reachable again: stopped what was left of the worker", h.Name)
	if st.deployment != "" {
		why += fmt.Sprintf(", which deployment %s replaced", st.deployment)
	}
	s.log.Info("stranded worker stopped", "worker_id", wk.ID, "hive", h.Name,
		"deployment", st.deployment)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerStopped, why)
	return true, nil
}

// stopOnHive has wk's hive stop its process; a hive that never heard of
// it is fine.
func (s *Server) stopOnHive(ctx context.Context, wk registry.Worker) error {
	hive, err := s.store.Hive(ctx, wk.Hive)
	if err != nil {
		return err
	}
	var res api.StopResult
	err = s.hives.run(ctx, hive, []string{"worker", "stop", wk.ID,
		"--timeout", restartStopTimeout.String()}, "", &res)
	if err != nil && httpapi.AsError(err).Status != http.StatusNotFound {
		return err
	}
	return nil
}

// noteSpawnFailure lengthens the wait before d's next spawn.
func (s *Server) noteSpawnFailure(name, why string) {
	s.deploys.retryMu.Lock()
	defer s.deploys.retryMu.Unlock()
	if s.deploys.retry == nil {
		s.deploys.retry = map[string]spawnRetry{}
	}
	r := s.deploys.retry[name]
	r.next = s.clock.Now().Add(backoff(r.streak, s.jitter()))
	r.streak++
	r.err = why
	s.deploys.retry[name] = r
}

// scaleUp spawns up to n workers for d, one after another, each placed
// anew, and stops at the first failure. have is how many d has already.
func (s *Server) scaleUp(ctx context.Context, d registry.Deployment,
	n, have int) ([]registry.Worker, error) {
	if r, ok := s.deploys.retryOf(d.Name); ok && s.clock.Now().Before(r.next) {
		return nil, nil
	}
	var started []registry.Worker
	for i := range n {
		wk, err := s.spawnReplica(ctx, d)
		if err != nil {
			why := httpapi.AsError(err).Message
			s.noteSpawnFailure(d.Name, why)
			return started, err
		}
		s.log.Info("deployment scaled up", "deployment", d.Name, "worker_id", wk.ID,
			"hive", wk.Hive, "replicas", d.Replicas)
		s.workerEvent(wk.ID, wk.Hive, wk.Model, wk.State, fmt.Sprintf(
			"replica %d of %d of deployment %s", have+i+1, d.Replicas, d.Name))
		started = append(started, wk)
	}
	return started, nil
}

// spawnReplica starts one worker of d, placed as a spawn without --hive
// is, and ties it to d. A worker recorded but not started is retired at
// once, so that only one failure is counted for it. (When placement tried
// several hives, only the last record is tied; the others stay failed,
// as after a plain spawn.)
func (s *Server) spawnReplica(ctx context.Context, d registry.Deployment) (registry.Worker, error) {
	plan, err := s.planSpawn(ctx, spawnRequestOf(d))
	if err != nil {
		return registry.Worker{}, hiveGone(d, err)
	}
	wk, err := s.spawnPlaced(ctx, plan) // the next hive when the first refuses
	if wk.ID == "" {
		return wk, err
	}
	// The record exists unless CreateWorker failed: tie it either way.
	tagErr := s.store.SetWorkerDeployment(ctx, wk.ID, d.Name)
	switch {
	case err != nil && tagErr == nil:
		if rerr := s.store.RetireWorker(ctx, wk.ID); rerr != nil {
			s.log.Error("retire worker", "worker_id", wk.ID, "error", rerr)
		}
		return wk, err
	case err != nil:
		return wk, err
	case tagErr != nil:
		return wk, fmt.Errorf("tie worker %s to deployment %s: %w", wk.ID, d.Name, tagErr)
	}
	return wk, nil
}

// hiveGone explains a spawn refused because d's own hive was removed after
// d was recorded, and what to do about it; other errors pass unchanged.
func hiveGone(d registry.Deployment, err error) error {
	if d.Hive == "" || httpapi.AsError(err).Code != "hive_not_found" {
		return err
	}
	return httpapi.NotFound("hive_not_found", "deployment %s runs its workers on hive %q, "+
		"which was removed: add the hive back with `rbee hive add %s ...`, or run "+
		"`rbee deploy rm %s` and deploy again without --hive", d.Name, d.Hive, d.Hive, d.Name)
}

// spawnRequestOf is the spawn request for one worker of d.
func spawnRequestOf(d registry.Deployment) api.SpawnRequest {
	return api.SpawnRequest{Model: d.Model, Name: d.Name, Hive: d.Hive, Device: d.Device,
		Slots: d.Slots, CtxSize: d.CtxSize, GPULayers: d.GPULayers, Threads: d.Threads,
		Restart: d.Restart}
}

// scaleDown drains the live workers d has beyond its replica count, in the
// background, and returns the ones it keeps.
func (s *Server) scaleDown(ctx context.Context, d registry.Deployment,
	live []registry.Worker) []registry.Worker {
	drainFirst(live, s.router.busy)
	extra := len(live) - d.Replicas
	for _, wk := range live[:extra] {
		s.drainInBackground(ctx, d, wk)
	}
	return live[extra:]
}

// drainFirst orders workers by how little is lost by draining them: those
// not ready yet first, then the least busy, then the newest.
func drainFirst(workers []registry.Worker, busy func(id string) int) {
	sort.SliceStable(workers, func(i, j int) bool {
		a, b := workers[i], workers[j]
		aReady, bReady := a.State == api.WorkerReady, b.State == api.WorkerReady
		if aReady != bReady {
			return !aReady
		}
		if ba, bb := busy(a.ID), busy(b.ID); ba != bb {
			return ba < bb
		}
		return a.CreatedAt.After(b.CreatedAt)
	})
}

// drainInBackground marks wk draining at once, so that it no longer counts
// as a replica nor gets new requests, then lets what it serves finish and
// stops it, as `rbee worker drain` does. A queen that stops meanwhile cuts
// the wait short and stops the worker.
//
// Shortcoming: a queen that dies (not stops) during the wait leaves the
// worker draining; `rbee worker stop ID` ends it.
func (s *Server) drainInBackground(ctx context.Context, d registry.Deployment, wk registry.Worker) {
	s.router.setState(wk.ID, api.WorkerDraining)
	if err := s.setWorkerState(ctx, wk.ID, api.WorkerDraining, ""); err != nil {
		s.log.Error("mark worker draining", "worker_id", wk.ID, "error", err)
		return
	}
	s.log.Info("deployment scaled down", "deployment", d.Name, "worker_id", wk.ID,
		"replicas", d.Replicas)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerDraining,
		fmt.Sprintf("scaled down: deployment %s wants %d", d.Name, d.Replicas))

	life := s.deploys.lifetimeCtx()
	s.deploys.setLeaving(wk.ID, true)
	s.deploys.drains.Add(1)
	go func() {
		defer s.deploys.drains.Done()
		defer s.deploys.setLeaving(wk.ID, false)
		how := "scaled down, drained"
		if !s.waitIdle(life, wk.ID, defaultDrainTimeout) {
			how = "scaled down, drain cut short with requests in flight"
		}
		stopCtx := context.WithoutCancel(life)
		if _, err := s.stopWorker(stopCtx, wk, how); err != nil {
			s.log.Warn("stop scaled-down worker", "worker_id", wk.ID, "error", err)
			// Not wanted any more either way: stopped once the hive can be
			// reached (stopStranded), or by `rbee hive gc`.
			if s.store.RetireWorker(stopCtx, wk.ID) == nil {
				s.deploys.strand(wk, d.Name)
			}
		}
	}()
}

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
