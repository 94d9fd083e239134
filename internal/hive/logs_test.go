package hive

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestLogsTail(t *testing.T) {
	long := strings.Repeat("x", tailBlock+10) + "\n" // makes tailStart read two blocks
	tests := []struct {
		name    string
		content string
		args    []string
		want    string
	}{
		{name: "all", content: "a\nb\nc\n", want: "a\nb\nc\n"},
		{name: "last two", content: "a\nb\nc\n", args: []string{"--tail", "2"}, want: "b\nc\n"},
		{name: "more than there are", content: "a\nb\n", args: []string{"--tail", "9"}, want: "a\nb\n"},
		{name: "none", content: "a\nb\n", args: []string{"--tail", "0"}, want: ""},
		{name: "unfinished last line", content: "a\nb\nc", args: []string{"--tail", "1"}, want: "c"},
		{name: "across blocks", content: "first\n" + long + "last\n", args: []string{"--tail", "2"},
			want: long + "last\n"},
		{name: "empty log", content: "", args: []string{"--tail", "3"}, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv(envStateDir, dir)
			st, err := openStore(true)
			assert.NilError(t, err)
			assert.NilError(t, os.WriteFile(st.logPath("w1"), []byte(tc.content), 0o600))

			run := runHive(t, "", append([]string{"worker", "logs", "w1"}, tc.args...)...)
			assert.Equal(t, run.code, api.HiveExitOK, run.stderr)
			header, rest, _ := strings.Cut(run.stdout, "\n")
			assert.Equal(t, header, `{"worker_id":"w1","log_path":"`+
				filepath.Join(dir, "workers", "w1.log")+`"}`)
			assert.Equal(t, rest, tc.want)
		})
	}
}

func TestLogsRefusals(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{name: "no log", args: []string{"w9"}, code: api.HiveExitNotFound, msg: `worker "w9" has no log`},
		{name: "bad id", args: []string{"../x"}, code: api.HiveExitUsage, msg: "invalid worker id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envStateDir, t.TempDir())
			run := runHive(t, "", append([]string{"worker", "logs"}, tc.args...)...)
			wantError(t, run, tc.code, tc.msg)
		})
	}
}

// lineSink collects what copyLog writes and lets a test wait for a text.
type lineSink struct {
	mu      sync.Mutex
	buf     strings.Builder
	changed chan struct{}
}

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// waitFor blocks until everything written equals want.
func (s *lineSink) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got := s.buf.String()
		s.mu.Unlock()
		if got == want {
			return
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("log output is %q, want %q", got, want)
		}
	}
}

func TestFollowGrowingLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w1.log")
	assert.NilError(t, os.WriteFile(path, []byte("old 1\nold 2\n"), 0o600))
	w, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	assert.NilError(t, err)
	defer w.Close()
	r, err := os.Open(path)
	assert.NilError(t, err)
	defer r.Close()

	var mu sync.Mutex
	recordGone := false
	gone := func() bool { mu.Lock(); defer mu.Unlock(); return recordGone }
	out := &lineSink{changed: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- copyLog(context.Background(), r, out, 1, gone, time.Millisecond) }()

	out.waitFor(t, "old 2\n")
	_, err = w.WriteString("new 1\n")
	assert.NilError(t, err)
	out.waitFor(t, "old 2\nnew 1\n")
	_, err = w.WriteString("new 2, half")
	assert.NilError(t, err)
	_, err = w.WriteString(" and the rest\n")
	assert.NilError(t, err)
	out.waitFor(t, "old 2\nnew 1\nnew 2, half and the rest\n")

	t.Run("truncated log is read again", func(t *testing.T) {
		assert.NilError(t, os.Truncate(path, 0))
		_, err = w.WriteString("fresh\n")
		assert.NilError(t, err)
		out.waitFor(t, "old 2\nnew 1\nnew 2, half and the rest\nfresh\n")
	})

	// With the record gone, follow ends once a poll finds nothing new.
	mu.Lock()
	recordGone = true
	mu.Unlock()
	select {
	case err := <-done:
		assert.NilError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after the worker's record went away")
	}
}

func TestFollowEndsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w1.log")
	assert.NilError(t, os.WriteFile(path, []byte("line\n"), 0o600))
	r, err := os.Open(path)
	assert.NilError(t, err)
	defer r.Close()

	ctx, cancel := context.WithCancel(context.Background())
	out := &lineSink{changed: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- copyLog(ctx, r, out, -1, func() bool { return false }, time.Millisecond) }()
	out.waitFor(t, "line\n")
	cancel()
	select {
	case err := <-done:
		assert.NilError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end with its context")
	}
	assert.Check(t, is.Equal(out.buf.String(), "line\n"))
}
