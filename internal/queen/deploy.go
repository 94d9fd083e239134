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
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// maxReplicas bounds one deployment.
const maxReplicas = 64

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
// The registry retires it only if it is still down, in one statement: a
// worker that beat again since the tally (a lost one that was only slow)
// is kept, and its process is left alone. A lost process may still run,
// hung: it is stopped after the retirement, so that a heartbeat in between
// reads the stopped state and is told to exit; now, or once its hive is
// reachable again (stopStranded).
func (s *Server) retire(ctx context.Context, d registry.Deployment, wk registry.Worker) {
	why := fmt.Sprintf("%s: %s; deployment %s replaces it", wk.State,
		orText(wk.Error, "no reason given"), d.Name)
	ok, err := s.store.RetireDownWorker(ctx, wk.ID, why)
	if err != nil {
		s.log.Error("retire worker", "worker_id", wk.ID, "error", err)
	}
	if !ok {
		return
	}
	s.forget(wk.ID)
	if wk.State == api.WorkerLost {
		s.stopRetired(ctx, d, wk)
	}
	s.noteSpawnFailure(d.Name, why)
	s.log.Warn("worker retired", "worker_id", wk.ID, "deployment", d.Name, "reason", why)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, wk.State, why)
}

// stopRetired stops the process of retired worker wk, or leaves it to
// stopStranded when its hive cannot be reached.
func (s *Server) stopRetired(ctx context.Context, d registry.Deployment, wk registry.Worker) {
	if h, err := s.store.Hive(ctx, wk.Hive); err == nil && hiveWait(h) != "" {
		s.deploys.strand(wk, d.Name)
		return
	}
	if err := s.stopOnHive(ctx, wk); err != nil {
		s.log.Warn("stop retired worker", "worker_id", wk.ID, "error", err)
		s.deploys.strand(wk, d.Name)
	}
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
