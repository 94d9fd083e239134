package queen

import (
	"context"
	"net/http"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

// The tests below change a worker in the registry behind the heartbeat
// index's back, as a drain or restart does between a beat's check and its
// write: the state-changing write must not undo what they recorded.

func TestStateBeatNeverUndoesADrain(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerLoading)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerLoading, 0) // index: loading
	assert.Equal(t, status, http.StatusOK)
	assert.NilError(t, s.store.SetState(context.Background(), "w-a", api.WorkerDraining, ""))

	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerDraining)
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerDraining)
}

func TestStateBeatNeverUndoesARestart(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerLoading)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerLoading, 0) // index: old token
	assert.Equal(t, status, http.StatusOK)
	assert.NilError(t, s.store.RecordRestart(context.Background(), "w-a", "token-new", "test"))

	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusUnauthorized)
	wk := hbStored(t, s, "w-a")
	assert.Equal(t, wk.State, api.WorkerStarting, "the old process's beat was written")
	assert.Equal(t, wk.URL, "")
}

// TestDrainingWorkerStaysDrainingWhenLost: a worker whose deadline passes
// while it drains must not come back routable at its next beat.
func TestDrainingWorkerStaysDrainingWhenLost(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	s.router.setState("w-a", api.WorkerDraining)
	assert.NilError(t, s.setWorkerState(context.Background(), "w-a", api.WorkerDraining, ""))

	s.workerLost("w-a")
	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerDraining)
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerDraining)
}

// TestBeatReadBeforeDrainIsNotRouted: a heartbeat that looked its worker
// up before a drain was recorded must not make it routable after.
func TestBeatReadBeforeDrainIsNotRouted(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	status, _ := hbPost(t, s.routes(), "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	ctx := context.Background()
	wk, cached, err := s.hbWorker(ctx, "w-a") // the racing heartbeat's look-up
	assert.NilError(t, err)
	assert.Assert(t, cached)

	assert.NilError(t, s.setWorkerState(ctx, "w-a", api.WorkerDraining, ""))
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerDraining)
	routed := s.hbIndex.commit(wk, func() { s.router.setState("w-a", api.WorkerReady) })
	assert.Assert(t, !routed)
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerDraining)
}

// TestStateBeatOvertakenIsNotCommitted: a drop between a heartbeat's look-up
// and the drop after its own write leaves it nothing to commit with.
func TestStateBeatOvertakenIsNotCommitted(t *testing.T) {
	x := newHBIndex()
	_, gen, _ := x.get("w-a")
	x.drop("w-a") // another write, after the heartbeat's
	gen = x.dropSince("w-a", gen)
	assert.Assert(t, !x.commit(hbWorker{id: "w-a", gen: gen}, func() {}))

	_, gen, _ = x.get("w-a")
	gen = x.dropSince("w-a", gen)
	assert.Assert(t, x.commit(hbWorker{id: "w-a", gen: gen}, func() {}))
}
