package keeper

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
)

func TestFormatAge(t *testing.T) {
	tests := []struct {
		name string
		ago  time.Duration
		zero bool
		want string
	}{
		{name: "never", zero: true, want: "-"},
		{name: "just now", ago: 0, want: "0.0s ago"},
		{name: "in the future", ago: -time.Second, want: "0.0s ago"},
		{name: "seconds", ago: 1200 * time.Millisecond, want: "1.2s ago"},
		{name: "minutes", ago: 3*time.Minute + 10*time.Second, want: "3m ago"},
		{name: "hours", ago: 5 * time.Hour, want: "5h ago"},
		{name: "days", ago: 72 * time.Hour, want: "3d ago"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var then time.Time
			if !tc.zero {
				then = testNow.Add(-tc.ago)
			}
			assert.Equal(t, formatAge(testNow, then), tc.want)
		})
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	assert.NilError(t, err)
	defer f.Close()

	tests := []struct {
		name string
		w    any
		want bool
	}{
		{"regular file", f, false},
		{"not a file", &struct{}{}, false},
		{"nil", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, isTerminal(tc.w), tc.want)
		})
	}
}
