// Package heartbeat is both ends of the worker heartbeat. On the queen's
// side, a Tracker keeps one deadline per worker, reports the workers whose
// deadline passes, and stretches the interval it hands out as the fleet
// grows, so that the heartbeats of the whole fleet stay under a ceiling. On the worker's side, a Sender posts heartbeats at
// the interval the queen asks for, and backs off while the queen is away.
package heartbeat

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Defaults for TrackerConfig.
const (
	DefaultInterval   = 2 * time.Second
	DefaultFirstGrace = 30 * time.Second
	// DefaultMaxBeatsPerSecond keeps heartbeats to a small share of what
	// one queen handles: internal/queen's TestHeartbeatLoad, with no
	// ceiling, measured about 3,300 heartbeats/s on 2 shared cores (the
	// simulated fleet on the same cores), so 500/s leaves most of the CPU
	// to routing. 10,000 workers then beat every 20s.
	DefaultMaxBeatsPerSecond = 500
	// DefaultJitter is the jitter the queen asks for (TrackerConfig.Jitter).
	DefaultJitter = 0.1
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
	// Interval+Grace (both scaled to the fleet, see MaxBeatsPerSecond).
	FirstGrace time.Duration
	// MaxBeatsPerSecond is the ceiling on the heartbeats of all workers
	// together. With n workers tracked, the interval handed out is
	// max(Interval, n/MaxBeatsPerSecond), and Grace grows in the same
	// proportion; the interval stops growing at MaxInterval, what a
	// Sender accepts, so beyond MaxInterval*MaxBeatsPerSecond workers the
	// ceiling gives. Default DefaultMaxBeatsPerSecond.
	MaxBeatsPerSecond float64
	// Jitter is the largest share of the interval added at random to each
	// reply, so that workers which beat together (after a queen restart,
	// say) drift apart. Zero: none; the queen uses DefaultJitter.
	Jitter float64
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
	if !(c.MaxBeatsPerSecond > 0) { // NaN too
		c.MaxBeatsPerSecond = DefaultMaxBeatsPerSecond
	}
	c.Jitter = max(c.Jitter, 0)
	return c
}

// scaled returns the interval to hand out, before jitter, and the grace
// after it, when n workers are tracked: the fleet's beats stay under
// MaxBeatsPerSecond, and the grace keeps its ratio to the interval.
func (c TrackerConfig) scaled(n int) (interval, grace time.Duration) {
	interval = c.Interval
	limit := max(MaxInterval, c.Interval)
	// Capped as a float: a tiny ceiling would overflow the Duration.
	fleet := float64(n) / c.MaxBeatsPerSecond * float64(time.Second)
	if fleet > float64(interval) {
		interval = time.Duration(min(fleet, float64(limit)))
	}
	grace = time.Duration(float64(c.Grace) * (float64(interval) / float64(c.Interval)))
	return interval, grace
}

// firstDeadline is how long a worker known but not heard from has, with n
// workers tracked: FirstGrace, or longer when the fleet is so large that
// a worker may have been told a longer interval (with the most jitter)
// by the queen before this one.
func (c TrackerConfig) firstDeadline(n int) time.Duration {
	interval, grace := c.scaled(n)
	return max(c.FirstGrace, interval+time.Duration(c.Jitter*float64(interval))+grace)
}

// Tracker keeps one heartbeat deadline per worker and calls onExpire when
// a deadline passes. It is safe for concurrent use.
type Tracker struct {
	cfg      TrackerConfig
	clock    Clock
	onExpire func(id string)
	random   func() float64 // in [0, 1), for the jitter

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
	// armedAt is when Arm set the first deadline of a worker not heard
	// from yet; zero once it has beaten. Its first deadline is checked
	// again at expiry against the fleet size then, because Arm is called
	// for one worker after another while the fleet is restored.
	armedAt time.Time
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
		random:   rand.Float64,
		entries:  make(map[string]*entry),
	}
}

// Config returns the configuration in use, defaults filled in.
func (t *Tracker) Config() TrackerConfig { return t.cfg }

// Beat records a heartbeat from worker id and returns the interval the
// worker should wait before its next beat: Interval, or longer for a large
// fleet (see MaxBeatsPerSecond), plus jitter. The worker's deadline moves
// to that interval and the grace after it, and an earlier deadline will
// no longer expire it.
//
// When Beat returns, any onExpire for an earlier deadline of id has
// finished, so a caller that records the heartbeat after Beat always
// writes last.
func (t *Tracker) Beat(id string) time.Duration {
	next, e := t.beat(id)
	if e != nil {
		e.waitFiring()
	}
	return next
}

// beat sets id's deadline after a heartbeat and returns the interval to
// hand back, and the entry (nil after Stop).
func (t *Tracker) beat(id string) (time.Duration, *entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.entries)
	if _, ok := t.entries[id]; !ok {
		n++
	}
	interval, grace := t.cfg.scaled(n)
	next := interval + time.Duration(t.cfg.Jitter*t.random()*float64(interval))
	if t.stopped {
		return next, nil
	}
	e := t.setLocked(id, next+grace, true)
	e.armedAt = time.Time{}
	return next, e
}

// Arm gives worker id a first deadline of FirstGrace from now, for a
// worker known but not yet heard from; longer when the fleet is so large
// that its interval exceeds FirstGrace. It does nothing when the worker is
// already tracked.
func (t *Tracker) Arm(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	if _, ok := t.entries[id]; ok {
		return
	}
	e := t.setLocked(id, t.cfg.firstDeadline(len(t.entries)+1), false)
	e.armedAt = t.clock.Now()
}

// setLocked sets a deadline d from now for id, replacing an existing one
// only when replace is set, and returns the entry. t.mu must be held, and
// t not stopped.
func (t *Tracker) setLocked(id string, d time.Duration, replace bool) *entry {
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
	if t.extendFirstLocked(id, e) {
		t.mu.Unlock()
		return
	}
	e.timer = nil
	e.gen++ // this deadline is spent: once per deadline, whatever the clock does
	t.running.Add(1)
	t.mu.Unlock()

	defer t.running.Done()
	t.onExpire(id)
}

// extendFirstLocked moves the first deadline of a worker not heard from
// yet further out when the fleet has grown since Arm, and reports whether
// it did. t.mu must be held.
func (t *Tracker) extendFirstLocked(id string, e *entry) bool {
	if e.armedAt.IsZero() {
		return false
	}
	left := e.armedAt.Add(t.cfg.firstDeadline(len(t.entries))).Sub(t.clock.Now())
	if left <= 0 {
		return false
	}
	e.gen++
	gen := e.gen
	e.timer = t.clock.AfterFunc(left, func() { t.expire(id, e, gen) })
	return true
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
