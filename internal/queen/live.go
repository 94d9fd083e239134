package queen

import (
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// liveStats keeps each worker's figures from its latest heartbeat. They are
// readings, not state, so they live in memory and are not written to SQLite.
type liveStats struct {
	mu    sync.Mutex
	stats map[string]api.WorkerStats
	at    map[string]time.Time // when each worker's latest heartbeat came
}

func newLiveStats() *liveStats {
	return &liveStats{stats: map[string]api.WorkerStats{}, at: map[string]time.Time{}}
}

func (l *liveStats) record(hb api.Heartbeat) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at[hb.WorkerID] = time.Now()
	l.stats[hb.WorkerID] = api.WorkerStats{
		PromptTokensPerSec: hb.PromptTokensPerSec,
		GenTokensPerSec:    hb.GenTokensPerSec,
		RequestsServed:     hb.RequestsServed,
		RSSBytes:           hb.RSSBytes,
		VRAM:               hb.VRAM,
	}
}

// get returns a worker's latest figures, or nil before its first heartbeat.
func (l *liveStats) get(id string) *api.WorkerStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.stats[id]
	if !ok {
		return nil
	}
	return &st
}

func (l *liveStats) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.stats, id)
	delete(l.at, id)
}

// latest returns a worker's latest figures and when they came.
func (l *liveStats) latest(id string) (api.WorkerStats, time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.stats[id]
	return st, l.at[id], ok
}
