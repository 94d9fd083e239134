package queen

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/registry"
)

// hbFlushInterval is how often batched heartbeats reach the registry. What
// reads them (`rbee worker list`: last heartbeat, busy slots) may lag by
// this much; routing never reads them from the registry.
const hbFlushInterval = 250 * time.Millisecond

// hbWriter batches the registry writes of heartbeats that change no state,
// so that a heartbeat never waits on SQLite: it keeps each worker's latest
// beat in memory and writes them all in one transaction every
// hbFlushInterval. Writes that change a worker's state go through
// writeNow, which orders them with the batches.
type hbWriter struct {
	store    *registry.Store
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex
	pending map[string]registry.SteadyBeat // latest beat per worker, not yet written

	// writing is held while a batch or a writeNow write runs, so that the
	// two never interleave.
	writing sync.Mutex

	stop context.CancelFunc
	done chan struct{}
}

// startHBWriter returns an hbWriter flushing every interval until close.
func startHBWriter(store *registry.Store, log *slog.Logger, interval time.Duration) *hbWriter {
	ctx, stop := context.WithCancel(context.Background())
	w := &hbWriter{store: store, log: log, interval: interval,
		pending: map[string]registry.SteadyBeat{}, stop: stop, done: make(chan struct{})}
	go w.loop(ctx)
	return w
}

// add queues a steady beat, replacing the worker's earlier one.
func (w *hbWriter) add(b registry.SteadyBeat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[b.ID] = b
}

// writeNow runs write, a synchronous write of worker id's state, after any
// batch being written, and discards id's queued beat: what write records
// is newer.
func (w *hbWriter) writeNow(id string, write func() error) error {
	w.writing.Lock()
	defer w.writing.Unlock()
	w.mu.Lock()
	delete(w.pending, id)
	w.mu.Unlock()
	return write()
}

// loop flushes every interval until ctx ends, then once more.
func (w *hbWriter) loop(ctx context.Context) {
	defer close(w.done)
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			w.flush(context.Background())
			return
		case <-tick.C:
			w.flush(ctx)
		}
	}
}

// flush writes the queued beats in one transaction. When it fails, the
// beats go back in the queue unless newer ones came meanwhile.
func (w *hbWriter) flush(ctx context.Context) {
	w.writing.Lock()
	defer w.writing.Unlock()
	w.mu.Lock()
	if len(w.pending) == 0 {
		w.mu.Unlock()
		return
	}
	batch := make([]registry.SteadyBeat, 0, len(w.pending))
	for _, b := range w.pending {
		batch = append(batch, b)
	}
	clear(w.pending)
	w.mu.Unlock()

	written, err := w.store.RecordHeartbeats(ctx, batch)
	if err != nil {
		w.log.Error("write heartbeats", "count", len(batch), "error", err)
		w.requeue(batch)
		return
	}
	if skipped := len(batch) - written; skipped > 0 {
		// Workers restarted, stopped or moved on since: not an error.
		w.log.Debug("heartbeats skipped", "count", skipped)
	}
}

// requeue puts back the beats of a failed batch that nothing replaced.
func (w *hbWriter) requeue(batch []registry.SteadyBeat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range batch {
		if _, newer := w.pending[b.ID]; !newer {
			w.pending[b.ID] = b
		}
	}
}

// close stops the flushes and writes what is queued.
func (w *hbWriter) close() {
	w.stop()
	<-w.done
}
