// Package heartbeat is both ends of the worker heartbeat. On the queen's
// side, a Tracker keeps one deadline per worker and reports the workers
// whose deadline passes. On the worker's side, a Sender posts heartbeats at
// the interval the queen asks for, and backs off while the queen is away.
package heartbeat

import (
	"sync"
	"time"
)

// Defaults for TrackerConfig.
const (
	DefaultInterval   = 2 * time.Second
	DefaultFirstGrace = 30 * time.Second
)

// TrackerConfig sets a Tracker's timing. Zero fields take defaults.
type TrackerConfig struct {
	// Interval is how often workers are asked to beat. Default 2s.
	Interval time.Duration
	// Grace is how late a beat may be before the worker is lost: its
	// deadline is Interval+Grace after its last beat. Default 2*Interval,
	// so a worker is lost after missing about two beats in a row.
	Grace time.Duration
	// FirstGrace is the deadline Arm gives a worker known but not heard
	// from yet, such as every worker in the registry when the queen starts.
	// It must outlast a worker's retry backoff, so that a queen restart
	// never condemns the fleet. Default 30s, and never less than
	// Interval+Grace.
	FirstGrace time.Duration
}

// withDefaults fills in the zero (or negative) fields.
func (c TrackerConfig) withDefaults() TrackerConfig {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Grace <= 0 {
		c.Grace = 2 * c.Interval
	}
	if c.FirstGrace <= 0 {
		c.FirstGrace = DefaultFirstGrace
	}
	c.FirstGrace = max(c.FirstGrace, c.Interval+c.Grace)
	return c
}

// Tracker keeps one heartbeat deadline per worker and calls onExpire when
// a deadline passes. It is safe for concurrent use.
type Tracker struct {
	cfg      TrackerConfig
	clock    Clock
	onExpire func(id string)

	mu      sync.Mutex
	entries map[string]*entry
	stopped bool
	running sync.WaitGroup // onExpire calls in progress
}

// entry is one worker's deadline. gen counts the deadlines set for it: a
// timer carries the gen it was set with and does nothing when a newer
// deadline has replaced it, even when it fired before it could be stopped.
type entry struct {
	gen   uint64
	timer Timer
	// firing is held while onExpire runs for this worker, so that Beat can
	// wait for an expiry that is already on its way.
	firing sync.Mutex
}

// NewTracker returns a Tracker that calls onExpire(id), from the timer's
// goroutine, once for each deadline a worker misses. onExpire must not call
// Beat for the same worker (Beat waits for it) nor Stop.
func NewTracker(cfg TrackerConfig, clock Clock, onExpire func(id string)) *Tracker {
	return &Tracker{
		cfg:      cfg.withDefaults(),
		clock:    clock,
		onExpire: onExpire,
		entries:  make(map[string]*entry),
	}
}

// Config returns the configuration in use, defaults filled in.
func (t *Tracker) Config() TrackerConfig { return t.cfg }

// Beat records a heartbeat from worker id: its deadline moves to
// now+Interval+Grace, and an earlier deadline will no longer expire it.
// It returns the interval the worker should wait before its next beat.
//
// When Beat returns, any onExpire for an earlier deadline of id has
// finished, so a caller that records the heartbeat after Beat always
// writes last.
func (t *Tracker) Beat(id string) time.Duration {
	if e := t.arm(id, t.cfg.Interval+t.cfg.Grace, true); e != nil {
		e.waitFiring()
	}
	return t.cfg.Interval
}

// Arm gives worker id a first deadline of FirstGrace from now, for a
// worker known but not yet heard from. It does nothing when the worker is
// already tracked.
func (t *Tracker) Arm(id string) {
	t.arm(id, t.cfg.FirstGrace, false)
}

// arm sets a deadline d from now for id, replacing an existing one only
// when replace is set, and returns the entry (nil after Stop).
func (t *Tracker) arm(id string, d time.Duration, replace bool) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return nil
	}

	e, ok := t.entries[id]
	if ok && !replace {
		return e
	}
	if !ok {
		e = &entry{}
		t.entries[id] = e
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	e.gen++
	gen := e.gen
	e.timer = t.clock.AfterFunc(d, func() { t.expire(id, e, gen) })
	return e
}

// waitFiring returns once no onExpire runs for e.
func (e *entry) waitFiring() {
	e.firing.Lock()
	defer e.firing.Unlock()
}

// expire runs when the deadline numbered gen of entry e passes.
func (t *Tracker) expire(id string, e *entry, gen uint64) {
	e.firing.Lock()
	defer e.firing.Unlock()

	t.mu.Lock()
	if t.stopped || t.entries[id] != e || e.gen != gen {
		t.mu.Unlock()
		return // stopped, removed, or beat again since this timer was set
	}
	e.timer = nil
	e.gen++ // this deadline is spent: once per deadline, whatever the clock does
	t.running.Add(1)
	t.mu.Unlock()

	defer t.running.Done()
	t.onExpire(id)
}

// Remove forgets worker id: its deadline is cancelled. An onExpire already
// running for it may still finish after Remove returns.
func (t *Tracker) Remove(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if e, ok := t.entries[id]; ok {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(t.entries, id)
	}
}

// Len returns the number of workers tracked, expired ones included.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// Stop cancels every deadline and waits for onExpire calls in progress.
// Afterwards Beat and Arm do nothing but return; a Tracker is not
// restarted.
func (t *Tracker) Stop() {
	t.mu.Lock()
	t.stopped = true
	for id, e := range t.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(t.entries, id)
	}
	t.mu.Unlock()

	t.running.Wait()
}
