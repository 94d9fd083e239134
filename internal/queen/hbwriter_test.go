package queen

import (
	"context"
	"database/sql"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

// seedWorker records worker id on the local hive, in state, with token
// "token-"+id, as a spawn and its heartbeats would have.
func hbSeed(tb testing.TB, store *registry.Store, id string, state api.WorkerState) {
	tb.Helper()
	ctx := context.Background()
	wk := registry.Worker{Worker: api.Worker{ID: id, Hive: registry.LocalHive, Model: testModel,
		ModelPath: "/m/" + testModel + ".gguf", Device: "cpu", Slots: 2},
		Token: "token-" + id}
	assert.NilError(tb, store.CreateWorker(ctx, wk))
	if state != api.WorkerStarting {
		assert.NilError(tb, store.RecordHeartbeat(ctx, id, api.Heartbeat{WorkerID: id,
			State: state, URL: "http://" + id}, time.Now()))
	}
}

// beat posts a heartbeat of worker id in state with token, through the
// queen's routes, and returns the status and reply.
func hbPost(tb testing.TB, h http.Handler, id, token string, state api.WorkerState,
	slotsBusy int) (int, api.HeartbeatReply) {
	tb.Helper()
	body, err := json.Marshal(api.Heartbeat{WorkerID: id, ProtocolVersion: api.ProtocolVersion,
		State: state, URL: "http://" + id, SlotsBusy: slotsBusy})
	assert.NilError(tb, err)
	req := httptest.NewRequest(http.MethodPost, "/v1/heartbeat", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var reply api.HeartbeatReply
	if rec.Code == http.StatusOK {
		assert.NilError(tb, json.Unmarshal(rec.Body.Bytes(), &reply))
	}
	return rec.Code, reply
}

// slowFlushes replaces s's heartbeat writer with one that writes only
// when the test calls flush.
func hbSlowFlushes(s *Server) {
	s.hbWriter.close()
	s.hbWriter = startHBWriter(s.store, s.log, time.Hour)
}

func hbStored(t *testing.T, s *Server, id string) registry.Worker {
	t.Helper()
	wk, err := s.store.Worker(context.Background(), id)
	assert.NilError(t, err)
	return wk
}

func TestSteadyHeartbeatIsBatched(t *testing.T) {
	s, _ := newTestServer(t)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	before := hbStored(t, s, "w-a")
	h := s.routes()

	status, reply := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 1)
	assert.Equal(t, status, http.StatusOK)
	assert.Assert(t, reply.NextIntervalMS >= hbBaseIntervalMS(s))
	assert.Equal(t, hbStored(t, s, "w-a").LastHeartbeat, before.LastHeartbeat,
		"written before the flush")
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerReady)

	s.hbWriter.flush(context.Background())
	after := hbStored(t, s, "w-a")
	assert.Assert(t, after.LastHeartbeat.After(before.LastHeartbeat))
	assert.Equal(t, after.SlotsBusy, 1)
	assert.Equal(t, after.State, api.WorkerReady)
}

func hbBaseIntervalMS(s *Server) int64 {
	return s.tracker.Config().Interval.Milliseconds()
}

// TestHeartbeatNeverWaitsOnTheDatabase holds the registry's write lock
// from another connection, as a long transaction would: steady heartbeats
// are still answered at once.
func TestHeartbeatNeverWaitsOnTheDatabase(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "queen.db")
	s, err := newServer(Config{Addr: "127.0.0.1:0", DBPath: dbPath},
		slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0) // fills the index
	assert.Equal(t, status, http.StatusOK)

	other, err := sql.Open("sqlite", "file:"+dbPath+"?_txlock=immediate")
	assert.NilError(t, err)
	defer other.Close()
	tx, err := other.Begin() // holds the write lock until Rollback
	assert.NilError(t, err)
	_, err = tx.Exec(`UPDATE workers SET error = 'locked' WHERE id = 'w-a'`)
	assert.NilError(t, err)

	start := time.Now()
	for range 20 {
		status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
		assert.Equal(t, status, http.StatusOK)
	}
	took := time.Since(start)
	assert.NilError(t, tx.Rollback())
	t.Logf("20 heartbeats with the database locked: %s", took)
	// The registry's busy timeout is 5s: a single write would wait that long.
	assert.Assert(t, took < 4*time.Second, "heartbeats waited on the database: %s", took)
}

func TestStateChangeIsWrittenAtOnce(t *testing.T) {
	s, _ := newTestServer(t)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerLoading)
	h := s.routes()

	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	wk := hbStored(t, s, "w-a")
	assert.Equal(t, wk.State, api.WorkerReady)
	assert.Assert(t, !wk.ReadyAt.IsZero())
}

// TestBatchedBeatNeverUndoesAState: a beat queued before a drain is
// written after it, and leaves the drain in place.
func TestBatchedBeatNeverUndoesAState(t *testing.T) {
	s, _ := newTestServer(t)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	ctx := context.Background()

	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 1) // queued
	assert.Equal(t, status, http.StatusOK)
	s.router.setState("w-a", api.WorkerDraining)
	assert.NilError(t, s.setWorkerState(ctx, "w-a", api.WorkerDraining, ""))
	s.hbWriter.flush(ctx)
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerDraining)

	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0) // still well
	assert.Equal(t, status, http.StatusOK)
	s.hbWriter.flush(ctx)
	wk := hbStored(t, s, "w-a")
	assert.Equal(t, wk.State, api.WorkerDraining)
	assert.Equal(t, wk.SlotsBusy, 0, "the beat after the drain was not written")
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerDraining)

	assert.NilError(t, s.setWorkerState(ctx, "w-a", api.WorkerStopped, ""))
	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusGone)
}

func TestRestartChangesTheToken(t *testing.T) {
	s, _ := newTestServer(t)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	ctx := context.Background()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 1) // queued, old token
	assert.Equal(t, status, http.StatusOK)

	// As restart does: a new token, and the index told.
	assert.NilError(t, s.store.RecordRestart(ctx, "w-a", "token-new", "test"))
	s.hbIndex.drop("w-a")
	s.hbWriter.flush(ctx)
	assert.Equal(t, hbStored(t, s, "w-a").URL, "", "the old process's beat was written")

	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusUnauthorized)
	status, _ = hbPost(t, h, "w-a", "token-new", api.WorkerLoading, 0)
	assert.Equal(t, status, http.StatusOK)
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerLoading)
}

// TestNewTokenWithoutDrop: a token written behind the index's back (a
// write that forgot to drop) is still accepted, after one more look.
func TestNewTokenWithoutDrop(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)

	assert.NilError(t, s.store.RecordRestart(context.Background(), "w-a", "token-new", "test"))
	status, _ = hbPost(t, h, "w-a", "token-new", api.WorkerLoading, 0)
	assert.Equal(t, status, http.StatusOK)
	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusUnauthorized)
}

func TestLostWorkerComesBackAtOnce(t *testing.T) {
	s, _ := newTestServer(t)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	h := s.routes()
	status, _ := hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)

	s.workerLost("w-a") // what the tracker calls when the deadline passes
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerLost)
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerLost)

	status, _ = hbPost(t, h, "w-a", "token-w-a", api.WorkerReady, 0)
	assert.Equal(t, status, http.StatusOK)
	assert.Equal(t, hbStored(t, s, "w-a").State, api.WorkerReady)
	assert.Equal(t, s.router.routes["w-a"].state, api.WorkerReady)
}

func TestCloseWritesQueuedHeartbeats(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "queen.db")
	cfg := Config{Addr: "127.0.0.1:0", DBPath: dbPath}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	hbSlowFlushes(s)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	status, _ := hbPost(t, s.routes(), "w-a", "token-w-a", api.WorkerReady, 2)
	assert.Equal(t, status, http.StatusOK)
	assert.NilError(t, s.Close())

	store, err := registry.Open(dbPath)
	assert.NilError(t, err)
	defer store.Close()
	wk, err := store.Worker(context.Background(), "w-a")
	assert.NilError(t, err)
	assert.Equal(t, wk.SlotsBusy, 2)
}

func TestHeartbeatRefusesUnknownState(t *testing.T) {
	s, _ := newTestServer(t)
	hbSeed(t, s.store, "w-a", api.WorkerReady)
	for _, state := range []api.WorkerState{"", "lost", "sleepy"} {
		status, _ := hbPost(t, s.routes(), "w-a", "token-w-a", state, 0)
		assert.Equal(t, status, http.StatusBadRequest, "state %q", state)
	}
}
