package workerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func readQueenStatus(t *testing.T, path string) api.WorkerQueenStatus {
	t.Helper()
	data, err := os.ReadFile(path)
	assert.NilError(t, err)
	var st api.WorkerQueenStatus
	assert.NilError(t, json.Unmarshal(data, &st))
	return st
}

// dirNames lists dir, so that a test sees no temp file was left behind.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestQueenStatusFileWrittenOn404AndClearedOnSuccess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w1.status.json")
	s := newQueenStatusFile(path, "http://queen:7833", quietLog)
	notFound := fmt.Errorf("send heartbeat: %w", &heartbeat.StatusError{StatusCode: 404,
		Message: `no worker "w1"`, Code: "worker_not_found"})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	s.observe(notFound, t0)
	st := readQueenStatus(t, path)
	assert.DeepEqual(t, st, api.WorkerQueenStatus{QueenURL: "http://queen:7833",
		UnknownSince: t0, LastReply: "404 worker_not_found"})
	assert.DeepEqual(t, dirNames(t, dir), []string{"w1.status.json"}) // no temp file left

	// Later 404s keep the first time; other failures say nothing either way.
	s.observe(notFound, t0.Add(time.Minute))
	s.observe(&heartbeat.StatusError{StatusCode: 503, Message: "busy"}, t0.Add(2*time.Minute))
	s.observe(errors.New("connection refused"), t0.Add(3*time.Minute))
	assert.Equal(t, readQueenStatus(t, path).UnknownSince, t0)

	s.observe(nil, t0.Add(4*time.Minute))
	_, err := os.Stat(path)
	assert.Assert(t, errors.Is(err, os.ErrNotExist))

	// Known again, then unknown again: a fresh time.
	s.observe(notFound, t0.Add(5*time.Minute))
	assert.Equal(t, readQueenStatus(t, path).UnknownSince, t0.Add(5*time.Minute))
}

func TestQueenStatusFileClearsLeftoverAtFirstSuccess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w1.status.json")
	assert.NilError(t, os.WriteFile(path, []byte(`{"queen_url":"old"}`), 0o600))

	s := newQueenStatusFile(path, "http://queen:7833", quietLog)
	s.observe(nil, time.Now())
	assert.DeepEqual(t, dirNames(t, dir), []string{})

	// No path: nothing is written.
	none := newQueenStatusFile("", "http://queen:7833", quietLog)
	none.observe(&heartbeat.StatusError{StatusCode: 404}, time.Now())
	assert.DeepEqual(t, dirNames(t, dir), []string{})
}

func TestWriteQueenStatusReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w1.status.json")
	for i := range 20 {
		want := api.WorkerQueenStatus{QueenURL: fmt.Sprintf("http://q%d", i),
			LastReply: "404 worker_not_found"}
		assert.NilError(t, writeQueenStatus(path, want))
		assert.Equal(t, readQueenStatus(t, path).QueenURL, want.QueenURL)
	}
	assert.DeepEqual(t, dirNames(t, dir), []string{"w1.status.json"})
	assert.NilError(t, clearQueenStatus(path))
	assert.NilError(t, clearQueenStatus(path)) // already gone is fine
}

// TestHeartbeatsMarkUnknownWorker runs the real heartbeat loop against a
// queen that first does not know the worker, then does: the worker keeps
// beating (it does not exit), and the file comes and goes.
func TestHeartbeatsMarkUnknownWorker(t *testing.T) {
	var known atomic.Bool
	var beats atomic.Int32
	queen := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		beats.Add(1)
		if !known.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{
				Message: "no such worker", Type: "invalid_request_error",
				Code: "worker_not_found"}})
			return
		}
		_ = json.NewEncoder(w).Encode(api.HeartbeatReply{NextIntervalMS: 100})
	}))
	defer queen.Close()

	path := filepath.Join(t.TempDir(), "w1.status.json")
	w := &worker{cfg: Config{ID: "w1", Name: "m", Slots: 1, QueenURL: queen.URL,
		Token: testToken, StatusFile: path}, log: quietLog, state: api.WorkerReady}
	loop := w.startHeartbeats(context.Background())
	defer loop.finish(w.heartbeat())

	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if _, err := os.Stat(path); err != nil {
			return poll.Continue("no status file yet: %v", err)
		}
		return poll.Success()
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(20*time.Millisecond))
	st := readQueenStatus(t, path)
	assert.Equal(t, st.QueenURL, queen.URL)
	assert.Equal(t, st.LastReply, "404 worker_not_found")

	known.Store(true)
	loop.kick()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if _, err := os.Stat(path); err == nil {
			return poll.Continue("status file still there")
		}
		return poll.Success()
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(20*time.Millisecond))
	select {
	case <-loop.retired:
		t.Fatal("a 404 retired the worker")
	default:
	}
	assert.Assert(t, beats.Load() >= 2)
}
