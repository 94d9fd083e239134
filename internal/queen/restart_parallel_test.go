package queen

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// waitLong bounds how long a test waits for something that should happen
// at once; reaching it fails the test instead of hanging it.
const waitLong = 10 * time.Second

// recordLostOn records a worker on hive, under restart always, that got
// ready once and has since been lost.
func recordLostOn(t *testing.T, s *Server, id, hive string) {
	t.Helper()
	ctx := context.Background()
	wk := registry.Worker{
		Worker: api.Worker{ID: id, Hive: hive, Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, CreatedAt: restartStart, Restart: api.RestartAlways},
		Token: "old-token", ReadyAt: restartStart,
	}
	assert.NilError(t, s.store.CreateWorker(ctx, wk))
	assert.NilError(t, endings["lost"](ctx, s.store, id))
}

// passWithin runs a pass of r, and fails the test when the pass does not
// return within waitLong.
func passWithin(t *testing.T, r *restarter) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); r.pass(context.Background()) }()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("the pass waits for a restart")
	}
}

// addHives records remote hives by name; the tests that use them fake
// the restarts, so nothing reaches them.
func addHives(t *testing.T, s *Server, names ...string) {
	t.Helper()
	for _, name := range names {
		assert.NilError(t, s.store.CreateHive(context.Background(),
			registry.Hive{Name: name, Host: name + ".invalid"}))
	}
}

// fakeRestarts stands in for restarter.restart: each call is sent on
// started, the restarts of the workers in block wait for release (or for
// ctx to end), and then each records the restart, so that it is no longer
// due.
type fakeRestarts struct {
	s       *Server
	started chan string
	block   map[string]bool
	release chan struct{}
}

func newFakeRestarts(s *Server, block ...string) *fakeRestarts {
	f := &fakeRestarts{s: s, started: make(chan string, 16), block: map[string]bool{},
		release: make(chan struct{})}
	for _, id := range block {
		f.block[id] = true
	}
	return f
}

func (f *fakeRestarts) restart(ctx context.Context, id string) error {
	// As restartIfDue does: a pass's list of workers can be older than a
	// restart that ended meanwhile, which leaves the worker no longer due.
	wk, err := f.s.store.Worker(ctx, id)
	if err != nil || restartDue(wk, f.s.clock.Now()) == "" {
		return err
	}
	f.started <- id
	if f.block[id] {
		select {
		case <-f.release:
		case <-ctx.Done():
		}
	}
	return f.s.store.RecordRestart(ctx, id, "new-token", "fake")
}

// next returns the id of the next restart started.
func (f *fakeRestarts) next(t *testing.T) string {
	t.Helper()
	select {
	case id := <-f.started:
		return id
	case <-time.After(waitLong):
		t.Fatal("no restart started")
		return ""
	}
}

// none checks that no restart has started since the last next.
func (f *fakeRestarts) none(t *testing.T) {
	t.Helper()
	select {
	case id := <-f.started:
		t.Errorf("restart of %s started", id)
	default:
	}
}

func TestRestartSlowHiveHoldsUpNoOther(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	addHives(t, s, "slow", "fast", "other")
	recordLostOn(t, s, "w-slow", "slow")
	recordLostOn(t, s, "w-fast", "fast")
	r := newRestarter(s)
	f := newFakeRestarts(s, "w-slow")
	r.restart = f.restart

	r.pass(ctx) // schedules both
	clock.Advance(backoffBase)
	passWithin(t, r) // starts both, and returns while w-slow's hangs

	got := map[string]bool{f.next(t): true, f.next(t): true}
	assert.DeepEqual(t, got, map[string]bool{"w-slow": true, "w-fast": true})

	// Nor does a restart due at a later pass, on a third hive.
	recordLostOn(t, s, "w-other", "other")
	r.pass(ctx)
	clock.Advance(backoffBase)
	passWithin(t, r)
	assert.Equal(t, f.next(t), "w-other")
	f.none(t)

	close(f.release)
	r.wait()
}

func TestRestartPassSkipsBusyHive(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	addHives(t, s, "slow")
	recordLostOn(t, s, "w-1", "slow")
	r := newRestarter(s)
	f := newFakeRestarts(s, "w-1")
	r.restart = f.restart

	r.pass(ctx)
	clock.Advance(backoffBase)
	r.pass(ctx)
	assert.Equal(t, f.next(t), "w-1")

	// While w-1's restart runs, a second worker on its hive is scheduled
	// but not restarted, and w-1 is not restarted twice.
	recordLostOn(t, s, "w-2", "slow")
	r.pass(ctx)
	wk, err := s.store.Worker(ctx, "w-2")
	assert.NilError(t, err)
	assert.Equal(t, wk.NextRestart, clock.Now().Add(backoffBase), "scheduled while busy")
	clock.Advance(backoffBase)
	r.pass(ctx)
	assert.Check(t, !r.inFlight("w-2"), "started on a busy hive")
	f.none(t)
	assert.Check(t, r.busy("slow"))

	close(f.release)
	r.wait()
	assert.Check(t, !r.busy("slow"))
	assert.Check(t, !r.inFlight("w-1"))

	// Free again: w-2's restart, left due, runs at the next pass.
	r.pass(ctx)
	assert.Equal(t, f.next(t), "w-2")
	r.wait()
	f.none(t)
}

func TestRestartHivesBounded(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	var ids []string
	for i := range restartHives + 1 {
		hive := string(rune('a' + i))
		addHives(t, s, hive)
		recordLostOn(t, s, "w-"+hive, hive)
		ids = append(ids, "w-"+hive)
	}
	r := newRestarter(s)
	f := newFakeRestarts(s, ids...)
	r.restart = f.restart

	r.pass(ctx)
	clock.Advance(backoffBase)
	r.pass(ctx)
	for range restartHives {
		f.next(t)
	}
	assert.Equal(t, len(r.slots), restartHives)
	f.none(t) // the last hive waits for a slot
	assert.Check(t, r.busy(ids[len(ids)-1][2:]), "waiting for a slot counts as busy")

	close(f.release)
	f.next(t)
	r.wait()
}

// gatedHive is a restartHive whose `worker spawn` says which worker it
// starts on entered, then waits for gate or for its context to end. It
// records how many spawns ran at once, at most.
type gatedHive struct {
	*restartHive
	entered chan string
	gate    chan struct{}

	mu       sync.Mutex
	running  int
	most     int
	canceled []string // spawns that saw their context end
}

func newGatedHive() *gatedHive {
	return &gatedHive{restartHive: &restartHive{}, entered: make(chan string),
		gate: make(chan struct{})}
}

func (h *gatedHive) Run(ctx context.Context, argv []string, in io.Reader) (sshexec.Result, error) {
	if len(argv) > 4 && argv[2] == "spawn" {
		id := argv[4] // rbee-hive worker spawn --id ID
		h.mu.Lock()
		h.running++
		h.most = max(h.most, h.running)
		h.mu.Unlock()
		defer func() {
			h.mu.Lock()
			h.running--
			h.mu.Unlock()
		}()

		select {
		case h.entered <- id:
		case <-ctx.Done():
		}
		select {
		case <-h.gate:
		case <-ctx.Done():
			h.mu.Lock()
			h.canceled = append(h.canceled, id)
			h.mu.Unlock()
			return sshexec.Result{}, ctx.Err()
		}
	}
	return h.restartHive.Run(ctx, argv, in)
}

func (h *gatedHive) waitEntered(t *testing.T) string {
	t.Helper()
	select {
	case id := <-h.entered:
		return id
	case <-time.After(waitLong):
		t.Fatal("no spawn started")
		return ""
	}
}

func TestRestartsOnOneHiveRunOneAtATime(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := newRestartServer(t)
	hive := newGatedHive()
	s.hives.local = hive
	recordLostOn(t, s, "w-1", defaultHive)
	recordLostOn(t, s, "w-2", defaultHive)
	r := newRestarter(s)

	r.pass(ctx)
	clock.Advance(backoffBase)
	r.pass(ctx)

	first := hive.waitEntered(t)
	assert.DeepEqual(t, hive.commands(), []string{"worker stop"})
	hive.gate <- struct{}{}
	second := hive.waitEntered(t)
	hive.gate <- struct{}{}
	r.wait()

	assert.DeepEqual(t, []string{first, second}, []string{"w-1", "w-2"})
	assert.DeepEqual(t, hive.commands(),
		[]string{"worker stop", "worker spawn", "worker stop", "worker spawn"})
	assert.Equal(t, hive.most, 1, "spawns on one hive ran at once")
	for _, id := range []string{"w-1", "w-2"} {
		wk, err := s.store.Worker(ctx, id)
		assert.NilError(t, err)
		assert.Check(t, is.Equal(wk.Restarts, 1), id)
		assert.Check(t, is.Equal(wk.RestartStreak, 1), id)
	}
}

func TestReconcileLoopWaitsForRestartsOnShutdown(t *testing.T) {
	s, clock, _ := newRestartServer(t)
	hive := newGatedHive()
	s.hives.local = hive
	recordLostOn(t, s, "w-1", defaultHive)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.runReconcile(ctx, reconcileInterval) }()

	clock.BlockUntil(1)
	clock.Advance(reconcileInterval) // schedules the restart
	clock.BlockUntil(1)
	clock.Advance(reconcileInterval) // starts it
	assert.Equal(t, hive.waitEntered(t), "w-1")
	clock.BlockUntil(1) // the loop goes on while the spawn hangs

	cancel()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("the reconcile loop did not end")
	}
	hive.mu.Lock()
	defer hive.mu.Unlock()
	assert.DeepEqual(t, hive.canceled, []string{"w-1"})
	assert.Equal(t, hive.running, 0, "the loop ended before the spawn")
	assert.Equal(t, clock.Pending(), 0, "the loop stops its timer")
}
