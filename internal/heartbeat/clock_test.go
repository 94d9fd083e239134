package heartbeat

import (
	"testing"
	"time"

	"gotest.tools/v3/assert"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestFakeClockRunsDueTimersInOrder(t *testing.T) {
	c := NewFakeClock(epoch)
	var ran []string
	var at []time.Duration
	record := func(name string) func() {
		return func() {
			ran = append(ran, name)
			at = append(at, c.Now().Sub(epoch))
		}
	}
	c.AfterFunc(3*time.Second, record("c"))
	c.AfterFunc(time.Second, record("a"))
	c.AfterFunc(time.Second, record("b")) // same instant: after a
	c.AfterFunc(time.Second, func() {
		c.AfterFunc(time.Second, record("chained")) // due at 2s, within the advance
	})
	late := c.AfterFunc(10*time.Second, record("late"))

	c.Advance(5 * time.Second)

	assert.DeepEqual(t, ran, []string{"a", "b", "chained", "c"})
	s := time.Second
	assert.DeepEqual(t, at, []time.Duration{s, s, 2 * s, 3 * s})
	assert.Equal(t, c.Now(), epoch.Add(5*time.Second))
	assert.Equal(t, c.Pending(), 1)
	assert.Check(t, late.Stop())
	assert.Check(t, !late.Stop(), "a second Stop finds nothing")
	assert.Equal(t, c.Pending(), 0)
}

func TestFakeClockStoppedTimerDoesNotRun(t *testing.T) {
	c := NewFakeClock(epoch)
	ran := false
	tm := c.AfterFunc(time.Second, func() { ran = true })

	assert.Check(t, tm.Stop())
	c.Advance(time.Hour)

	assert.Check(t, !ran)
}

func TestFakeClockBlockUntil(t *testing.T) {
	c := NewFakeClock(epoch)
	fired := make(chan struct{})
	go c.AfterFunc(time.Second, func() { close(fired) })

	c.BlockUntil(1)
	c.Advance(time.Second)

	<-fired // closed synchronously by Advance
}
