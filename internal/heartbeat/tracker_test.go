package heartbeat

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
)

// expiries counts onExpire calls per worker.
type expiries struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *expiries) record(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[id]++
}

func (e *expiries) count(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[id]
}

var testConfig = TrackerConfig{
	Interval:   2 * time.Second,
	Grace:      4 * time.Second,
	FirstGrace: 30 * time.Second,
}

// newFakeTracker returns a Tracker on a FakeClock, and its expiry counts.
func newFakeTracker(t *testing.T) (*Tracker, *FakeClock, *expiries) {
	t.Helper()
	clock := NewFakeClock(epoch)
	exp := &expiries{}
	tr := NewTracker(testConfig, clock, exp.record)
	t.Cleanup(tr.Stop)
	return tr, clock, exp
}

func TestTrackerDefaults(t *testing.T) {
	const rate = DefaultMaxBeatsPerSecond
	tests := []struct {
		name string
		in   TrackerConfig
		want TrackerConfig
	}{
		{
			name: "all zero",
			want: TrackerConfig{Interval: 2 * time.Second, Grace: 4 * time.Second,
				FirstGrace: 30 * time.Second, MaxBeatsPerSecond: rate},
		},
		{
			name: "grace follows interval",
			in:   TrackerConfig{Interval: 5 * time.Second},
			want: TrackerConfig{Interval: 5 * time.Second, Grace: 10 * time.Second,
				FirstGrace: 30 * time.Second, MaxBeatsPerSecond: rate},
		},
		{
			name: "first grace at least one deadline",
			in:   TrackerConfig{Interval: 20 * time.Second, FirstGrace: time.Second},
			want: TrackerConfig{Interval: 20 * time.Second, Grace: 40 * time.Second,
				FirstGrace: 60 * time.Second, MaxBeatsPerSecond: rate},
		},
		{
			name: "negative is default",
			in:   TrackerConfig{Interval: -1, Grace: -1, FirstGrace: -1, MaxBeatsPerSecond: -1, Jitter: -1},
			want: TrackerConfig{Interval: 2 * time.Second, Grace: 4 * time.Second,
				FirstGrace: 30 * time.Second, MaxBeatsPerSecond: rate},
		},
		{
			name: "rate and jitter kept",
			in:   TrackerConfig{MaxBeatsPerSecond: 50, Jitter: 0.25},
			want: TrackerConfig{Interval: 2 * time.Second, Grace: 4 * time.Second,
				FirstGrace: 30 * time.Second, MaxBeatsPerSecond: 50, Jitter: 0.25},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(tc.in, NewFakeClock(epoch), func(string) {})
			assert.Equal(t, tr.Config(), tc.want)
		})
	}
}

func TestBeatKeepsAlive(t *testing.T) {
	tr, clock, exp := newFakeTracker(t)

	for range 100 {
		next := tr.Beat("w1")
		assert.Equal(t, next, testConfig.Interval)
		clock.Advance(next + testConfig.Grace - time.Millisecond) // late, within grace
	}

	assert.Equal(t, exp.count("w1"), 0)
	assert.Equal(t, tr.Len(), 1)
}

func TestMissedDeadlineExpiresOnce(t *testing.T) {
	tr, clock, exp := newFakeTracker(t)
	tr.Beat("w1")
	tr.Beat("w2")

	clock.Advance(testConfig.Interval + testConfig.Grace - time.Nanosecond)
	assert.Equal(t, exp.count("w1"), 0, "expired before its deadline")
	tr.Beat("w2")

	clock.Advance(time.Nanosecond)
	assert.Equal(t, exp.count("w1"), 1)
	assert.Equal(t, exp.count("w2"), 0)

	clock.Advance(time.Hour)
	assert.Equal(t, exp.count("w1"), 1, "expired more than once")
	assert.Equal(t, exp.count("w2"), 1)
	assert.Equal(t, tr.Len(), 2, "a lost worker stays tracked")
}

func TestBeatAfterExpiryRearms(t *testing.T) {
	tr, clock, exp := newFakeTracker(t)
	deadline := testConfig.Interval + testConfig.Grace
	tr.Beat("w1")
	clock.Advance(deadline)
	assert.Equal(t, exp.count("w1"), 1)

	tr.Beat("w1")
	clock.Advance(deadline - time.Nanosecond)
	assert.Equal(t, exp.count("w1"), 1)
	clock.Advance(time.Nanosecond)

	assert.Equal(t, exp.count("w1"), 2)
}

func TestRemoveCancels(t *testing.T) {
	tr, clock, exp := newFakeTracker(t)
	tr.Beat("w1")
	tr.Arm("w2")

	tr.Remove("w1")
	tr.Remove("w2")
	tr.Remove("never-seen")
	clock.Advance(time.Hour)

	assert.Equal(t, exp.count("w1"), 0)
	assert.Equal(t, exp.count("w2"), 0)
	assert.Equal(t, tr.Len(), 0)
	assert.Equal(t, clock.Pending(), 0, "timers left behind")
}

func TestArm(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(tr *Tracker)
		wantExpiry time.Duration
	}{
		{
			name:       "first grace",
			setup:      func(tr *Tracker) { tr.Arm("w1") },
			wantExpiry: testConfig.FirstGrace,
		},
		{
			name:       "arm twice does not extend",
			setup:      func(tr *Tracker) { tr.Arm("w1"); tr.Arm("w1") },
			wantExpiry: testConfig.FirstGrace,
		},
		{
			name:       "arm after beat keeps the beat's deadline",
			setup:      func(tr *Tracker) { tr.Beat("w1"); tr.Arm("w1") },
			wantExpiry: testConfig.Interval + testConfig.Grace,
		},
		{
			name:       "beat after arm shortens to the normal deadline",
			setup:      func(tr *Tracker) { tr.Arm("w1"); tr.Beat("w1") },
			wantExpiry: testConfig.Interval + testConfig.Grace,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, clock, exp := newFakeTracker(t)
			tc.setup(tr)

			clock.Advance(tc.wantExpiry - time.Nanosecond)
			assert.Equal(t, exp.count("w1"), 0)
			clock.Advance(time.Nanosecond)
			assert.Equal(t, exp.count("w1"), 1)
			assert.Equal(t, clock.Pending(), 0)
		})
	}
}

func TestStopCancelsAll(t *testing.T) {
	tr, clock, exp := newFakeTracker(t)
	tr.Beat("w1")
	tr.Arm("w2")

	tr.Stop()
	tr.Beat("w3")
	tr.Arm("w4")
	clock.Advance(time.Hour)

	for _, id := range []string{"w1", "w2", "w3", "w4"} {
		assert.Equal(t, exp.count(id), 0, id)
	}
	assert.Equal(t, tr.Len(), 0)
	assert.Equal(t, clock.Pending(), 0)
}

// lateClock is a Clock whose timers cannot be stopped: Stop reports false,
// as when a timer has fired and its function is about to run. Its functions
// run only when the test calls them.
type lateClock struct {
	mu    sync.Mutex
	funcs []func()
}

type unstoppable struct{}

func (unstoppable) Stop() bool { return false }

func (c *lateClock) Now() time.Time { return epoch }

func (c *lateClock) AfterFunc(_ time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.funcs = append(c.funcs, f)
	return unstoppable{}
}

func (c *lateClock) fire(i int) {
	c.mu.Lock()
	f := c.funcs[i]
	c.mu.Unlock()
	f()
}

func TestStaleTimerDoesNotExpire(t *testing.T) {
	tests := []struct {
		name  string
		steps func(tr *Tracker, c *lateClock)
		want  int
	}{
		{
			name: "fired before the beat, ran after it",
			steps: func(tr *Tracker, c *lateClock) {
				tr.Beat("w1")
				tr.Beat("w1")
				c.fire(0)
			},
			want: 0,
		},
		{
			name: "the current deadline still expires",
			steps: func(tr *Tracker, c *lateClock) {
				tr.Beat("w1")
				tr.Beat("w1")
				c.fire(0)
				c.fire(1)
			},
			want: 1,
		},
		{
			name: "removed then beat again",
			steps: func(tr *Tracker, c *lateClock) {
				tr.Beat("w1")
				tr.Remove("w1")
				tr.Beat("w1")
				c.fire(0)
			},
			want: 0,
		},
		{
			name: "the same timer run twice",
			steps: func(tr *Tracker, c *lateClock) {
				tr.Beat("w1")
				c.fire(0)
				c.fire(0)
			},
			want: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &lateClock{}
			exp := &expiries{}
			tr := NewTracker(testConfig, c, exp.record)

			tc.steps(tr, c)

			assert.Equal(t, exp.count("w1"), tc.want)
		})
	}
}

func TestBeatWaitsForRunningExpiry(t *testing.T) {
	clock := NewFakeClock(epoch)
	var mu sync.Mutex
	var events []string
	log := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, s)
	}
	started, release := make(chan struct{}), make(chan struct{})
	tr := NewTracker(testConfig, clock, func(id string) {
		close(started)
		<-release
		log("expired")
	})
	defer tr.Stop()
	tr.Beat("w1")

	advanced := make(chan struct{})
	go func() {
		// Exactly to the deadline: the deadline set by the Beat below
		// falls after it.
		clock.Advance(testConfig.Interval + testConfig.Grace) // onExpire blocks
		close(advanced)
	}()
	<-started
	beaten := make(chan struct{})
	go func() {
		tr.Beat("w1")
		log("beat returned")
		close(beaten)
	}()
	close(release)
	<-beaten
	<-advanced

	mu.Lock()
	defer mu.Unlock()
	assert.DeepEqual(t, events, []string{"expired", "beat returned"})
}

// TestConcurrentBeatsAndExpiries is for the race detector: real timers
// with tiny deadlines fire while other goroutines beat, arm and remove.
func TestConcurrentBeatsAndExpiries(t *testing.T) {
	exp := &expiries{}
	cfg := TrackerConfig{Interval: time.Microsecond, Grace: time.Microsecond}
	tr := NewTracker(cfg, RealClock(), exp.record)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				id := fmt.Sprintf("w%d", i%5)
				switch (g + i) % 7 {
				case 0:
					tr.Remove(id)
				case 1:
					tr.Arm(id)
				default:
					tr.Beat(id)
				}
				_ = tr.Len()
			}
		})
	}
	wg.Wait()
	tr.Stop()

	after := make([]int, 5)
	for i := range after {
		after[i] = exp.count(fmt.Sprintf("w%d", i))
	}
	tr.Beat("w0") // after Stop: no new deadline
	for i := range after {
		assert.Equal(t, exp.count(fmt.Sprintf("w%d", i)), after[i], "expiry after Stop")
	}
}
