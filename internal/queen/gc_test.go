package queen

import (
	"context"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

func TestFindOrphans(t *testing.T) {
	row := func(hive, desired string, state api.WorkerState, pid int) registry.Worker {
		// Ready once, under on-failure: restarted when it ends.
		return registry.Worker{Worker: api.Worker{Hive: hive, State: state, PID: pid,
			Restart: api.RestartOnFailure}, Desired: desired, ReadyAt: restartStart}
	}
	neverRestarted := func(w registry.Worker) registry.Worker {
		w.Restart = api.RestartNever
		return w
	}
	always := func(w registry.Worker) registry.Worker {
		w.Restart = api.RestartAlways
		return w
	}
	running := registry.DesiredRunning
	tests := []struct {
		name       string
		rec        api.HiveWorker
		row        *registry.Worker
		wantReason string // "": no orphan
		wantAction string
	}{
		{name: "wanted", rec: api.HiveWorker{PID: 7, Alive: true},
			row: new(row("h1", running, api.WorkerReady, 7))},
		{name: "being spawned", rec: api.HiveWorker{PID: 7, Alive: true},
			row: new(row("h1", running, api.WorkerStarting, 0))},
		{name: "ended, to be restarted", rec: api.HiveWorker{PID: 7},
			row: new(row("h1", running, api.WorkerLost, 7))},
		{name: "ended, not yet seen", rec: api.HiveWorker{PID: 7},
			row: new(row("h1", running, api.WorkerReady, 7))},
		{name: "ended for good", rec: api.HiveWorker{PID: 7},
			row:        new(neverRestarted(row("h1", running, api.WorkerFailed, 7))),
			wantReason: "its process ended (failed)", wantAction: api.OrphanRemoveRecord},
		{name: "no row", rec: api.HiveWorker{PID: 7, Alive: true},
			wantReason: "the queen has no worker w-1", wantAction: api.OrphanStop},
		{name: "dead, no row", rec: api.HiveWorker{PID: 7},
			wantReason: "the queen has no worker w-1", wantAction: api.OrphanRemoveRecord},
		{name: "stopped", rec: api.HiveWorker{PID: 7, Alive: true},
			row:        new(row("h1", registry.DesiredStopped, api.WorkerLost, 7)),
			wantReason: "the queen wants it stopped (its state: lost)", wantAction: api.OrphanStop},
		{name: "other pid", rec: api.HiveWorker{PID: 8, Alive: true},
			row:        new(row("h1", running, api.WorkerReady, 7)),
			wantReason: "pid 8 runs, but the queen knows worker w-1 as pid 7",
			wantAction: api.OrphanStop},
		// One machine added as two hives shares one state directory:
		// the process is the other hive's wanted worker.
		{name: "other hive, wanted", rec: api.HiveWorker{PID: 7, Alive: true},
			row: new(row("h2", running, api.WorkerReady, 7))},
		{name: "other hive, stopped", rec: api.HiveWorker{PID: 7, Alive: true},
			row:        new(row("h2", registry.DesiredStopped, api.WorkerReady, 7)),
			wantReason: "the queen wants it stopped", wantAction: api.OrphanStop},
		// Exited under restart always: gc's stop could kill the restart.
		{name: "exited, to be restarted", rec: api.HiveWorker{PID: 7},
			row: new(always(row("h1", running, api.WorkerStopped, 7)))},
		{name: "exited, alive, not restarted", rec: api.HiveWorker{PID: 7, Alive: true},
			row:        new(row("h1", running, api.WorkerStopped, 7)),
			wantReason: "the queen saw it stop", wantAction: api.OrphanStop},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.rec.ID = "w-1"
			known := map[string]registry.Worker{}
			if tc.row != nil {
				known["w-1"] = *tc.row
			}
			got := findOrphans("h1", []api.HiveWorker{tc.rec}, known)
			if tc.wantReason == "" {
				assert.Check(t, is.Len(got, 0))
				return
			}
			assert.Assert(t, is.Len(got, 1))
			assert.Check(t, is.Contains(got[0].Reason, tc.wantReason))
			assert.Check(t, is.Equal(got[0].Action, tc.wantAction))
		})
	}
}

func TestCollectGarbage(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 2)
	s.reconcile(ctx)
	ids := replicas(t, s).Workers
	// One row removed behind the queen's back, one stop that never reached
	// the hive, and one process started by hand.
	assert.NilError(t, s.store.DeleteWorker(ctx, ids[0]))
	assert.NilError(t, s.store.RetireWorker(ctx, ids[1]))
	hive.records["w-hand"] = api.HiveWorker{ID: "w-hand", PID: 99, Alive: true}
	hive.records["w-gone"] = api.HiveWorker{ID: "w-gone", PID: 98}

	dry, err := s.collectGarbage(ctx, defaultHive, true)
	assert.NilError(t, err)
	assert.Check(t, is.Len(dry.Orphans, 4))
	assert.Check(t, is.Len(hive.records, 4), "a dry run touches nothing")

	res, err := s.collectGarbage(ctx, defaultHive, false)
	assert.NilError(t, err)
	assert.Assert(t, is.Len(res.Orphans, 4))
	for _, o := range res.Orphans {
		assert.Check(t, o.Done, o.ID)
	}
	assert.Check(t, is.Len(hive.records, 0))
	wk, err := s.store.Worker(ctx, ids[1])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.State, api.WorkerStopped))

	_, err = s.collectGarbage(ctx, "absent", true)
	assert.Check(t, is.ErrorContains(err, "no hive"))
}

// TestFindOrphansHiveReported: a worker the hive flags as unknown to the
// queen (its heartbeats get 404) is an orphan when the queen has no row,
// and the flag never stops a worker the queen wants running.
func TestFindOrphansHiveReported(t *testing.T) {
	const hiveReason = "the queen at http://q:7833 has not known this worker since " +
		"2026-03-04T05:06:07Z (its heartbeats get 404 worker_not_found)"
	rec := api.HiveWorker{ID: "w-1", PID: 7, Alive: true, Orphan: true, OrphanReason: hiveReason}
	wanted := registry.Worker{Worker: api.Worker{Hive: "h1", State: api.WorkerReady, PID: 7,
		Restart: api.RestartOnFailure}, Desired: registry.DesiredRunning, ReadyAt: restartStart}

	got := findOrphans("h1", []api.HiveWorker{rec}, map[string]registry.Worker{})
	assert.Equal(t, len(got), 1)
	assert.Check(t, is.Equal(got[0].Action, api.OrphanStop))
	assert.Check(t, is.Contains(got[0].Reason, "the queen has no worker w-1"))
	assert.Check(t, is.Contains(got[0].Reason, hiveReason))

	// A stale flag: the queen has the row and wants it running.
	got = findOrphans("h1", []api.HiveWorker{rec}, map[string]registry.Worker{"w-1": wanted})
	assert.Check(t, is.Len(got, 0))

	// The queen's own rules still apply to a flagged record.
	stopped := wanted
	stopped.Desired = registry.DesiredStopped
	got = findOrphans("h1", []api.HiveWorker{rec}, map[string]registry.Worker{"w-1": stopped})
	assert.Equal(t, len(got), 1)
	assert.Check(t, is.Contains(got[0].Reason, "the queen wants it stopped"))
}
