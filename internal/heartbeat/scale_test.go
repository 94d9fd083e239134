package heartbeat

import (
	"fmt"
	"testing"
	"time"

	"gotest.tools/v3/assert"
)

func TestScaledInterval(t *testing.T) {
	cfg := TrackerConfig{Interval: 2 * time.Second, Grace: 4 * time.Second,
		MaxBeatsPerSecond: 100}.withDefaults()
	tests := []struct {
		workers   int
		interval  time.Duration
		grace     time.Duration
		firstDead time.Duration
	}{
		{workers: 1, interval: 2 * time.Second, grace: 4 * time.Second, firstDead: 30 * time.Second},
		{workers: 200, interval: 2 * time.Second, grace: 4 * time.Second, firstDead: 30 * time.Second},
		{workers: 300, interval: 3 * time.Second, grace: 6 * time.Second, firstDead: 30 * time.Second},
		{workers: 1000, interval: 10 * time.Second, grace: 20 * time.Second, firstDead: 30 * time.Second},
		{workers: 2000, interval: 20 * time.Second, grace: 40 * time.Second, firstDead: 60 * time.Second},
		// Capped at what a Sender accepts.
		{workers: 100000, interval: MaxInterval, grace: 2 * MaxInterval, firstDead: 3 * MaxInterval},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.workers), func(t *testing.T) {
			interval, grace := cfg.scaled(tc.workers)
			assert.Equal(t, interval, tc.interval)
			assert.Equal(t, grace, tc.grace)
			assert.Equal(t, cfg.firstDeadline(tc.workers), tc.firstDead)
		})
	}
}

func TestScaledIntervalAboveMaxInterval(t *testing.T) {
	// An Interval set above MaxInterval is kept: the cap only bounds scaling.
	cfg := TrackerConfig{Interval: 2 * MaxInterval, MaxBeatsPerSecond: 1}.withDefaults()
	interval, grace := cfg.scaled(1000)
	assert.Equal(t, interval, 2*MaxInterval)
	assert.Equal(t, grace, 4*MaxInterval)
}

// TestBeatScalesWithFleet: the interval handed out, and the deadline set,
// grow with the number of workers tracked.
func TestBeatScalesWithFleet(t *testing.T) {
	clock := NewFakeClock(epoch)
	exp := &expiries{}
	tr := NewTracker(TrackerConfig{Interval: time.Second, Grace: 2 * time.Second,
		MaxBeatsPerSecond: 10}, clock, exp.record)
	t.Cleanup(tr.Stop)

	for i := range 10 {
		assert.Equal(t, tr.Beat(fmt.Sprintf("w%d", i)), time.Second, "below the ceiling")
	}
	for i := 10; i < 49; i++ {
		tr.Beat(fmt.Sprintf("w%d", i))
	}
	next := tr.Beat("w49") // the 50th worker: 50 beats per 5s is 10/s
	assert.Equal(t, next, 5*time.Second)
	assert.Equal(t, tr.Beat("w49"), 5*time.Second, "a worker beating again is no new one")

	// w49's deadline is 5s + 10s (grace scaled alike) after its beat.
	clock.Advance(15*time.Second - time.Nanosecond)
	assert.Equal(t, exp.count("w49"), 0)
	clock.Advance(time.Nanosecond)
	assert.Equal(t, exp.count("w49"), 1)
}

func TestBeatJitter(t *testing.T) {
	clock := NewFakeClock(epoch)
	exp := &expiries{}
	tr := NewTracker(TrackerConfig{Interval: 10 * time.Second, Grace: 20 * time.Second,
		Jitter: 0.5}, clock, exp.record)
	t.Cleanup(tr.Stop)
	draws := []float64{0, 0.5, 0.999}
	tr.random = func() float64 { r := draws[0]; draws = draws[1:]; return r }

	assert.Equal(t, tr.Beat("w1"), 10*time.Second)
	assert.Equal(t, tr.Beat("w1"), 12500*time.Millisecond)
	next := tr.Beat("w1")
	assert.Assert(t, next > 14*time.Second && next < 15*time.Second, "next %s", next)

	// The deadline follows the jittered interval: the grace comes after it.
	clock.Advance(next + 20*time.Second - time.Nanosecond)
	assert.Equal(t, exp.count("w1"), 0)
	clock.Advance(time.Nanosecond)
	assert.Equal(t, exp.count("w1"), 1)
}

// TestArmExtendsForGrownFleet: while the queen restores its fleet it arms
// one worker after another. The first armed must not get the deadline of
// a one-worker fleet when the fleet it joins was told a longer interval.
func TestArmExtendsForGrownFleet(t *testing.T) {
	clock := NewFakeClock(epoch)
	exp := &expiries{}
	tr := NewTracker(TrackerConfig{Interval: time.Second, Grace: 2 * time.Second,
		FirstGrace: 10 * time.Second, MaxBeatsPerSecond: 5, Jitter: 0.1}, clock, exp.record)
	t.Cleanup(tr.Stop)

	const n = 200 // 200 workers at 5/s: 40s, and 80s of grace
	for i := range n {
		tr.Arm(fmt.Sprintf("w%d", i))
	}
	want := 40*time.Second + 4*time.Second + 80*time.Second // jitter's most included
	clock.Advance(want - time.Nanosecond)
	for i := range n {
		assert.Equal(t, exp.count(fmt.Sprintf("w%d", i)), 0, "w%d expired early", i)
	}
	clock.Advance(time.Nanosecond)
	for i := range n {
		assert.Equal(t, exp.count(fmt.Sprintf("w%d", i)), 1, "w%d", i)
	}
}

// TestFleetStaysUnderCeiling simulates a fleet that obeys the intervals it
// is handed: the beats of all of them together stay under the ceiling, and
// none is lost.
func TestFleetStaysUnderCeiling(t *testing.T) {
	clock := NewFakeClock(epoch)
	exp := &expiries{}
	const rate, workers = 20, 200
	tr := NewTracker(TrackerConfig{Interval: time.Second, MaxBeatsPerSecond: rate,
		Jitter: DefaultJitter}, clock, exp.record)
	t.Cleanup(tr.Stop)

	var beats []time.Time
	var beat func(id string)
	beat = func(id string) {
		beats = append(beats, clock.Now())
		next := tr.Beat(id)
		clock.AfterFunc(next, func() { beat(id) })
	}
	for i := range workers {
		id := fmt.Sprintf("w%d", i)
		// They all start within the first second: far above the ceiling.
		clock.AfterFunc(time.Duration(i)*time.Second/workers, func() { beat(id) })
	}
	const run, window = 5 * time.Minute, time.Minute
	clock.Advance(run)

	var last int
	for _, at := range beats {
		if at.After(epoch.Add(run - window)) {
			last++
		}
	}
	perSec := float64(last) / window.Seconds()
	t.Logf("%d workers, ceiling %d/s: %.1f beats/s in the last %s", workers, rate, perSec, window)
	assert.Assert(t, perSec <= rate, "%.1f beats/s over the ceiling of %d", perSec, rate)
	assert.Assert(t, perSec >= rate*0.8, "%.1f beats/s: the interval grew too much", perSec)
	for i := range workers {
		assert.Equal(t, exp.count(fmt.Sprintf("w%d", i)), 0, "w%d lost", i)
	}
}
