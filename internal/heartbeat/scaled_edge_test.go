package heartbeat

import (
	"math"
	"testing"
	"time"
)

// TestScaledTinyRate: a ceiling so low that the fleet's interval overflows
// a Duration still gives the longest interval, not the shortest.
func TestScaledTinyRate(t *testing.T) {
	cfg := TrackerConfig{MaxBeatsPerSecond: 1e-12}.withDefaults()
	interval, grace := cfg.scaled(1000)
	if interval != MaxInterval {
		t.Fatalf("interval = %s, want %s", interval, MaxInterval)
	}
	if want := 2 * MaxInterval; grace != want {
		t.Fatalf("grace = %s, want %s", grace, want)
	}
}

// TestScaledNaNRate: a rate that is not a number takes the default.
func TestScaledNaNRate(t *testing.T) {
	cfg := TrackerConfig{MaxBeatsPerSecond: math.NaN()}.withDefaults()
	if cfg.MaxBeatsPerSecond != DefaultMaxBeatsPerSecond {
		t.Fatalf("MaxBeatsPerSecond = %v, want the default", cfg.MaxBeatsPerSecond)
	}
	if interval, _ := cfg.scaled(20_000); interval != 40*time.Second {
		t.Fatalf("interval = %s, want 40s", interval)
	}
}
