package queen

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

var restartStart = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// restartHive answers `rbee-hive worker spawn` and `worker stop` as the local
// hive would, and records each command.
type restartHive struct {
	mu       sync.Mutex
	cmds     []string
	pid      int
	stopExit int // exit code of `worker stop`; 0: the worker stopped
}

func (h *restartHive) Run(_ context.Context, argv []string, _ io.Reader) (sshexec.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	args := argv[1:] // argv[0] is the rbee-hive program
	h.cmds = append(h.cmds, strings.Join(args[:2], " "))

	var out any
	switch {
	case args[1] == "stop" && h.stopExit != 0:
		return sshexec.Result{ExitCode: h.stopExit, Stdout: []byte(`{"error":"stop failed"}`)}, nil
	case args[1] == "stop":
		out = api.StopResult{ID: args[2], Outcome: "not_running"}
	case args[1] == "spawn":
		h.pid++
		out = api.SpawnResult{ID: args[3], PID: h.pid, URL: "http://127.0.0.1:1", LogPath: "/l"}
	}
	data, err := json.Marshal(out)
	return sshexec.Result{Stdout: data}, err
}

func (h *restartHive) commands() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.cmds...)
}

// newRestartServer is a queen on a fake clock, a fake local hive and no
// jitter.
func newRestartServer(t *testing.T) (*Server, *heartbeat.FakeClock, *restartHive) {
	t.Helper()
	clock := heartbeat.NewFakeClock(restartStart)
	cfg := Config{Addr: "127.0.0.1:0", DBPath: filepath.Join(t.TempDir(), "queen.db"),
		Clock: clock}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	hive := &restartHive{}
	s.hives.local = hive
	s.jitter = func() float64 { return 0 }
	return s, clock, hive
}

// endings are the ways a worker's process can end, as the queen sees them.
var endings = map[string]func(ctx context.Context, s *registry.Store, id string) error{
	"lost": func(ctx context.Context, s *registry.Store, id string) error {
		return s.SetState(ctx, id, api.WorkerLost, "no heartbeat before the deadline")
	},
	"failed": func(ctx context.Context, s *registry.Store, id string) error {
		hb := api.Heartbeat{WorkerID: id, State: api.WorkerFailed, Error: "out of memory"}
		return s.RecordHeartbeat(ctx, id, hb, restartStart)
	},
	"goodbye": func(ctx context.Context, s *registry.Store, id string) error {
		hb := api.Heartbeat{WorkerID: id, State: api.WorkerStopped}
		return s.RecordHeartbeat(ctx, id, hb, restartStart)
	},
	"user stop": func(ctx context.Context, s *registry.Store, id string) error {
		return s.SetState(ctx, id, api.WorkerStopped, "")
	},
}

// recordReady records a worker that got ready once, under policy.
func recordReady(t *testing.T, s *Server, id, policy string) {
	t.Helper()
	wk := registry.Worker{
		Worker: api.Worker{ID: id, Hive: defaultHive, Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, CreatedAt: restartStart, Restart: policy},
		Token: "old-token", ReadyAt: restartStart,
	}
	assert.NilError(t, s.store.CreateWorker(context.Background(), wk))
}

func TestRestartPolicy(t *testing.T) {
	tests := []struct {
		policy, ending string
		want           bool
		wantReason     string
	}{
		{policy: api.RestartNever, ending: "lost"},
		{policy: api.RestartNever, ending: "failed"},
		{policy: api.RestartNever, ending: "goodbye"},
		{policy: api.RestartOnFailure, ending: "lost", want: true,
			wantReason: "lost: no heartbeat before the deadline"},
		{policy: api.RestartOnFailure, ending: "failed", want: true,
			wantReason: "failed: out of memory"},
		{policy: api.RestartOnFailure, ending: "goodbye"},
		{policy: api.RestartAlways, ending: "lost", want: true,
			wantReason: "lost: no heartbeat before the deadline"},
		{policy: api.RestartAlways, ending: "failed", want: true,
			wantReason: "failed: out of memory"},
		{policy: api.RestartAlways, ending: "goodbye", want: true, wantReason: "exited"},
		{policy: api.RestartAlways, ending: "user stop"},
		{policy: api.RestartOnFailure, ending: "user stop"},
	}
	for _, tc := range tests {
		t.Run(tc.policy+" "+tc.ending, func(t *testing.T) {
			ctx := context.Background()
			s, clock, hive := newRestartServer(t)
			recordReady(t, s, "w-1", tc.policy)
			assert.NilError(t, endings[tc.ending](ctx, s.store, "w-1"))

			s.reconcile(ctx) // schedules the restart
			clock.Advance(backoffBase)
			s.reconcile(ctx) // runs it

			got, err := s.store.Worker(ctx, "w-1")
			assert.NilError(t, err)
			if !tc.want {
				assert.Check(t, is.Len(hive.commands(), 0))
				assert.Equal(t, got.Restarts, 0)
				assert.Check(t, got.NextRestart.IsZero())
				return
			}
			assert.DeepEqual(t, hive.commands(), []string{"worker stop", "worker spawn"})
			assert.Equal(t, got.State, api.WorkerLoading)
			assert.Equal(t, got.Restarts, 1)
			assert.Equal(t, got.RestartReason, tc.wantReason)
			assert.Equal(t, got.PID, 1)
			assert.Check(t, got.Token != "old-token", "a restarted worker gets a new token")
			assert.Equal(t, got.Desired, registry.DesiredRunning)
		})
	}
}

func TestRestartLeavesAlone(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, s *Server)
	}{
		{name: "never ready on its first start", setup: func(t *testing.T, s *Server) {
			wk := registry.Worker{Worker: api.Worker{ID: "w-1", Hive: defaultHive,
				Model: testModel, ModelPath: "/m.gguf", Device: "cpu", Slots: 1,
				Restart: api.RestartAlways}, Token: "t"}
			assert.NilError(t, s.store.CreateWorker(context.Background(), wk))
			assert.NilError(t, endings["failed"](context.Background(), s.store, "w-1"))
		}},
		{name: "stopped by the user while the restart waits", setup: func(t *testing.T, s *Server) {
			recordReady(t, s, "w-1", api.RestartAlways)
			assert.NilError(t, endings["lost"](context.Background(), s.store, "w-1"))
			s.reconcile(context.Background())
			assert.NilError(t, endings["user stop"](context.Background(), s.store, "w-1"))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, clock, hive := newRestartServer(t)
			tc.setup(t, s)
			for range 3 {
				clock.Advance(backoffCap)
				s.reconcile(context.Background())
			}
			assert.Check(t, is.Len(hive.commands(), 0))
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name   string
		streak int
		want   time.Duration // without jitter
	}{
		{name: "first", streak: 0, want: time.Second},
		{name: "second", streak: 1, want: 2 * time.Second},
		{name: "fourth", streak: 3, want: 8 * time.Second},
		{name: "just under the cap", streak: 5, want: 32 * time.Second},
		{name: "capped", streak: 6, want: backoffCap},
		{name: "far past the cap", streak: 500, want: backoffCap},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, backoff(tc.streak, 0), tc.want)
			lowest := tc.want - time.Duration(float64(tc.want)*backoffJitter)
			for _, r := range []float64{0.25, 0.5, 0.999999} {
				got := backoff(tc.streak, r)
				assert.Check(t, got <= tc.want && got >= lowest,
					"r %v: %s not in [%s, %s]", r, got, lowest, tc.want)
				assert.Check(t, got < tc.want, "r %v: jitter takes something off", r)
			}
		})
	}
}

func TestRestartBackoffGrows(t *testing.T) {
	ctx := context.Background()
	s, clock, hive := newRestartServer(t)
	recordReady(t, s, "w-1", api.RestartOnFailure)

	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60}
	for i, secs := range want {
		assert.NilError(t, endings["failed"](ctx, s.store, "w-1"))
		s.reconcile(ctx)
		wk, err := s.store.Worker(ctx, "w-1")
		assert.NilError(t, err)
		assert.Equal(t, wk.NextRestart.Sub(clock.Now()), secs*time.Second, "restart %d", i+1)

		clock.Advance(secs*time.Second - time.Millisecond)
		s.reconcile(ctx)
		assert.Equal(t, len(hive.commands()), 2*i, "restart %d ran early", i+1)
		clock.Advance(time.Millisecond)
		s.reconcile(ctx)
		assert.Equal(t, len(hive.commands()), 2*(i+1), "restart %d did not run", i+1)
	}
}

func TestRestartBackoffJitter(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	s.jitter = func() float64 { return 0.5 }
	recordReady(t, s, "w-1", api.RestartAlways)
	assert.NilError(t, endings["lost"](ctx, s.store, "w-1"))

	s.reconcile(ctx)
	wk, err := s.store.Worker(ctx, "w-1")
	assert.NilError(t, err)
	assert.Equal(t, wk.NextRestart.Sub(clock.Now()), 900*time.Millisecond)
}

func TestRestartStreakResetsAfterHealthyPeriod(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	wk := registry.Worker{
		Worker: api.Worker{ID: "w-1", Hive: defaultHive, Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, Restart: api.RestartAlways, Restarts: 4},
		Token: "t", RestartStreak: 4,
	}
	assert.NilError(t, s.store.CreateWorker(ctx, wk))
	ready := api.Heartbeat{WorkerID: "w-1", State: api.WorkerReady}
	assert.NilError(t, s.store.RecordHeartbeat(ctx, "w-1", ready, clock.Now()))

	streak := func() int {
		got, err := s.store.Worker(ctx, "w-1")
		assert.NilError(t, err)
		assert.Equal(t, got.Restarts, 4, "the count in all stays")
		return got.RestartStreak
	}
	clock.Advance(healthyPeriod - time.Second)
	s.reconcile(ctx)
	assert.Equal(t, streak(), 4)

	clock.Advance(time.Second)
	s.reconcile(ctx)
	assert.Equal(t, streak(), 0)
}

func TestRestartStopFailureWaits(t *testing.T) {
	tests := []struct {
		name      string
		stopExit  int
		wantCmds  []string
		wantState api.WorkerState
	}{
		{name: "old process not found", stopExit: api.HiveExitNotFound,
			wantCmds: []string{"worker stop", "worker spawn"}, wantState: api.WorkerLoading},
		{name: "hive failed to stop it", stopExit: api.HiveExitFailed,
			wantCmds: []string{"worker stop"}, wantState: api.WorkerLost},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, clock, hive := newRestartServer(t)
			hive.stopExit = tc.stopExit
			recordReady(t, s, "w-1", api.RestartAlways)
			assert.NilError(t, endings["lost"](ctx, s.store, "w-1"))

			s.reconcile(ctx)
			clock.Advance(backoffBase)
			s.reconcile(ctx)

			assert.DeepEqual(t, hive.commands(), tc.wantCmds)
			got, err := s.store.Worker(ctx, "w-1")
			assert.NilError(t, err)
			assert.Equal(t, got.State, tc.wantState)
			if tc.wantState == api.WorkerLost {
				assert.Equal(t, got.NextRestart.Sub(clock.Now()), 2*backoffBase)
			}
		})
	}
}

func TestReconcileLoopTicksOnTheClock(t *testing.T) {
	s, clock, _ := newRestartServer(t)
	recordReady(t, s, "w-1", api.RestartAlways)
	assert.NilError(t, endings["lost"](context.Background(), s.store, "w-1"))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.runReconcile(ctx, reconcileInterval) }()

	clock.BlockUntil(1)
	clock.Advance(reconcileInterval)
	clock.BlockUntil(1) // set again once the pass is done

	wk, err := s.store.Worker(context.Background(), "w-1")
	assert.NilError(t, err)
	assert.Equal(t, wk.NextRestart, clock.Now().Add(backoffBase))

	cancel()
	<-done
	assert.Equal(t, clock.Pending(), 0, "the loop stops its timer")
}
