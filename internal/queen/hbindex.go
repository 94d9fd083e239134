package queen

import (
	"context"
	"sync"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

// hbWorker is what a heartbeat needs to know of its worker: the token to
// check, the state last recorded, and what the router and events name.
type hbWorker struct {
	id, token, hive, model string
	state                  api.WorkerState
	slots                  int
}

func toHBWorker(w registry.Worker) hbWorker {
	return hbWorker{id: w.ID, token: w.Token, hive: w.Hive, model: w.Model, state: w.State,
		slots: w.Slots}
}

// hbIndex is a read-through copy of the registry's workers for heartbeats,
// so that a heartbeat of a worker in the same state as before reads
// nothing from SQLite. It must never be newer-looking than the registry:
// every write to a worker's token, state or existence, outside the
// heartbeat's own batched fields, is followed by drop (see setWorkerState).
//
// A lookup that misses reads the registry and fills the entry, unless a
// drop came in between: each drop bumps gen, and fill refuses an entry
// read before it, so a slow read never brings back what a write replaced.
type hbIndex struct {
	mu   sync.Mutex
	gen  uint64
	byID map[string]hbWorker
}

func newHBIndex() *hbIndex { return &hbIndex{byID: map[string]hbWorker{}} }

// get returns the entry of id, if any, and the generation to fill with.
func (x *hbIndex) get(id string) (hbWorker, uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	w, ok := x.byID[id]
	return w, x.gen, ok
}

// fill stores w, read from the registry when the generation was gen,
// unless a drop came since.
func (x *hbIndex) fill(w hbWorker, gen uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gen == gen {
		x.byID[w.id] = w
	}
}

// drop forgets id, after its row changed in the registry.
func (x *hbIndex) drop(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	delete(x.byID, id)
}

// load fills the index with the workers the queen restored at start.
func (x *hbIndex) load(workers []registry.Worker) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, w := range workers {
		x.byID[w.ID] = toHBWorker(w)
	}
}

// hbWorker looks worker id up for a heartbeat: from the index, or from the
// registry (a 404 when it does not exist). cached says which.
func (s *Server) hbWorker(ctx context.Context, id string) (hbWorker, bool, error) {
	w, gen, ok := s.hbIndex.get(id)
	if ok {
		return w, true, nil
	}
	wk, err := s.worker(ctx, id)
	if err != nil {
		return hbWorker{}, false, err
	}
	w = toHBWorker(wk)
	s.hbIndex.fill(w, gen)
	return w, false, nil
}

// setWorkerState records a worker's state, as registry.SetState does, and
// keeps the heartbeat index in step. Every state write outside the
// heartbeat handler goes through it.
func (s *Server) setWorkerState(ctx context.Context, id string, state api.WorkerState,
	errMsg string) error {
	err := s.store.SetState(ctx, id, state, errMsg)
	s.hbIndex.drop(id)
	return err
}
