package queen

import (
	"context"
	"sync"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

// hbWorker is what a heartbeat needs to know of its worker: the token to
// check, the state last recorded, and what the router and events name.
// gen is the index's generation of the worker when it was read.
type hbWorker struct {
	id, token, hive, model string
	state                  api.WorkerState
	slots                  int
	gen                    uint64
	// givenUp: the worker failed and the queen wants it stopped (a
	// deployment replaced it, or a cascade stopped the fleet). A process
	// that lives on after all must exit, not serve beside its replacement.
	givenUp bool
}

func toHBWorker(w registry.Worker) hbWorker {
	return hbWorker{id: w.ID, token: w.Token, hive: w.Hive, model: w.Model, state: w.State,
		slots:   w.Slots,
		givenUp: w.State == api.WorkerFailed && w.Desired == registry.DesiredStopped}
}

// hbIndex is a read-through copy of the registry's workers for heartbeats,
// so that a heartbeat of a worker in the same state as before reads
// nothing from SQLite. It must never be newer-looking than the registry:
// every write to a worker's token, state or existence, outside the
// heartbeat's own batched fields, is followed by drop (see setWorkerState).
//
// Each drop bumps the worker's generation. A lookup that misses reads the
// registry and fills the entry unless a drop came in between, so a slow
// read never brings back what a write replaced; and a heartbeat updates
// the router through commit, which refuses it when the worker changed
// since the heartbeat looked it up.
type hbIndex struct {
	mu   sync.Mutex
	gens map[string]uint64 // kept after drop: a reader may hold an older one
	byID map[string]hbWorker
}

func newHBIndex() *hbIndex {
	return &hbIndex{gens: map[string]uint64{}, byID: map[string]hbWorker{}}
}

// get returns the entry of id, if any, and the generation to fill with.
func (x *hbIndex) get(id string) (hbWorker, uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	w, ok := x.byID[id]
	return w, x.gens[id], ok
}

// fill stores w, read from the registry at generation w.gen, unless a
// drop came since.
func (x *hbIndex) fill(w hbWorker) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gens[w.id] == w.gen {
		x.byID[w.id] = w
	}
}

// drop forgets id, after its row changed in the registry, and returns its
// new generation.
func (x *hbIndex) drop(id string) uint64 {
	return x.dropThen(id, func() {})
}

// dropThen drops id and runs fn, at once for heartbeats: none commits
// what it read before the drop after fn.
func (x *hbIndex) dropThen(id string, fn func()) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gens[id]++
	delete(x.byID, id)
	fn()
	return x.gens[id]
}

// dropSince drops id after a heartbeat's own write, by a heartbeat that
// read id at generation gen, and returns the generation it may commit
// with: the new one, or gen when another drop came since, so that commit
// refuses a beat that another write may have overtaken.
func (x *hbIndex) dropSince(id string, gen uint64) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	clean := x.gens[id] == gen
	x.gens[id]++
	delete(x.byID, id)
	if !clean {
		return gen
	}
	return x.gens[id]
}

// commit runs fn, a heartbeat's update of the router from w, and reports
// true, unless worker w.id was dropped since w was read.
func (x *hbIndex) commit(w hbWorker, fn func()) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gens[w.id] != w.gen {
		return false
	}
	fn()
	return true
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
		w.gen = gen
		return w, true, nil
	}
	w, err := s.hbRead(ctx, id, gen)
	return w, false, err
}

// hbRead reads worker id from the registry, at the index's generation gen
// of it, and fills the index with it.
func (s *Server) hbRead(ctx context.Context, id string, gen uint64) (hbWorker, error) {
	wk, err := s.worker(ctx, id)
	if err != nil {
		return hbWorker{}, err
	}
	w := toHBWorker(wk)
	w.gen = gen
	s.hbIndex.fill(w)
	return w, nil
}

// setWorkerState records a worker's state, as registry.SetState does, and
// keeps the heartbeat index and, for a state that takes no requests, the
// router in step. Every state write outside the
// heartbeat handler goes through it.
func (s *Server) setWorkerState(ctx context.Context, id string, state api.WorkerState,
	errMsg string) error {
	err := s.store.SetState(ctx, id, state, errMsg)
	s.hbIndex.dropThen(id, func() {
		if takesNoRequests(state) {
			// With the drop, so that no heartbeat read before the write
			// makes the worker routable after it.
			s.router.setState(id, state)
		}
	})
	return err
}

// takesNoRequests reports whether a worker in state must get no more
// requests, whatever it last said.
func takesNoRequests(state api.WorkerState) bool {
	switch state {
	case api.WorkerDraining, api.WorkerLost, api.WorkerStopped, api.WorkerFailed:
		return true
	}
	return false
}
