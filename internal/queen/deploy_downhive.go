package queen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// Deployments and dead hives: a replica whose worker is down on a hive the
// queen cannot reach is retired and placed elsewhere (replaceDownHives);
// what is left of a retired worker is stopped once its hive answers again
// (stopStranded).

// hiveDownGrace is how long a worker of a deployment without --hive stays
// down on an unreachable hive before another hive gets its replica,
// counted from the first reconcile pass that sees both. Its heartbeat
// deadline has passed already, and the hive has failed at least one probe
// (every 10 s): 30 s more is three probes, long enough that a network blip
// or a quick reboot leaves the worker to its restart, and short beside the
// minutes a model takes to load elsewhere.
const hiveDownGrace = 30 * time.Second

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
