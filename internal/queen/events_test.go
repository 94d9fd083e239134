package queen

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// subscribe opens the queen's event stream and reads its first summary.
func subscribe(t *testing.T, ts *httptest.Server) *websocket.Conn {
	t.Helper()
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/events"
	conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
	assert.NilError(t, err)
	resp.Body.Close()
	t.Cleanup(func() { conn.Close() })
	ev := readEvent(t, conn)
	assert.Equal(t, ev.Type, api.EventSummary)
	return conn
}

// readEvent reads one event, failing the test after a bound.
func readEvent(t *testing.T, conn *websocket.Conn) api.Event {
	t.Helper()
	assert.NilError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	var ev api.Event
	assert.NilError(t, conn.ReadJSON(&ev))
	return ev
}

// nextWorkerEvent skips summaries and returns the next other event.
func nextWorkerEvent(t *testing.T, conn *websocket.Conn) api.Event {
	t.Helper()
	for {
		if ev := readEvent(t, conn); ev.Type != api.EventSummary {
			return ev
		}
	}
}

// spawningHive is an rbee-hive whose `worker spawn` reports a worker at
// url without starting one, and whose `worker stop` says it exited.
func spawningHive(t *testing.T, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rbee-hive")
	script := `#!/bin/sh
case "$1 $2" in
"worker spawn") read token; echo '{"id":"'"$4"'","pid":4242,"port":1,"url":"` + url +
		`","log_path":"/dev/null"}' ;;
"worker stop") echo '{"id":"'"$3"'","outcome":"exited"}' ;;
version*) echo '{"version":"test","protocol_version":` + strconv.Itoa(api.ProtocolVersion) +
		`}' ;;
*) echo '{"error":"unexpected '"$*"'"}'; exit 1 ;;
esac
`
	assert.NilError(t, os.WriteFile(path, []byte(script), 0o755))
	return path
}

type eventWant struct {
	typ    string
	state  api.WorkerState
	reason string // a substring
}

func TestEventsFollowAWorkersLife(t *testing.T) {
	tests := []struct {
		name string
		// after spawning, the worker beats these states, then is stopped
		// (when stop) or its deadline passes (when lost).
		beats []api.Heartbeat
		stop  bool
		lost  bool
		want  []eventWant
	}{
		{
			name:  "spawn, ready, stop",
			beats: []api.Heartbeat{{State: api.WorkerReady}},
			stop:  true,
			want: []eventWant{
				{api.EventWorker, api.WorkerStarting, "spawn requested"},
				{api.EventWorker, api.WorkerLoading, "pid 4242"},
				{api.EventWorker, api.WorkerReady, "reported by the worker"},
				{api.EventWorker, api.WorkerStopped, "stopped on request (exited)"},
			},
		},
		{
			name:  "a model that fails to load",
			beats: []api.Heartbeat{{State: api.WorkerFailed, Error: "bad magic"}},
			want: []eventWant{
				{api.EventWorker, api.WorkerStarting, ""},
				{api.EventWorker, api.WorkerLoading, ""},
				{api.EventWorker, api.WorkerFailed, "bad magic"},
			},
		},
		{
			name:  "a worker that goes silent",
			beats: []api.Heartbeat{{State: api.WorkerReady}},
			lost:  true,
			want: []eventWant{
				{api.EventWorker, api.WorkerStarting, ""},
				{api.EventWorker, api.WorkerLoading, ""},
				{api.EventWorker, api.WorkerReady, ""},
				{api.EventWorker, api.WorkerLost, "no heartbeat"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			s.hives.bin = spawningHive(t, "http://127.0.0.1:1")
			conn := subscribe(t, ts)

			status, body := readAll(t, post(t, ts, "/v1/workers", `{"model":"/m/tiny.gguf"}`))
			assert.Equal(t, status, http.StatusCreated, string(body))
			var wk api.Worker
			assert.NilError(t, json.Unmarshal(body, &wk))
			stored, err := s.store.Worker(context.Background(), wk.ID)
			assert.NilError(t, err)
			for _, hb := range tc.beats {
				hb.WorkerID, hb.ProtocolVersion, hb.URL = wk.ID, api.ProtocolVersion, "http://x"
				data, _ := json.Marshal(hb)
				req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/heartbeat",
					strings.NewReader(string(data)))
				req.Header.Set("Authorization", "Bearer "+stored.Token)
				resp, err := ts.Client().Do(req)
				assert.NilError(t, err)
				resp.Body.Close()
				assert.Equal(t, resp.StatusCode, http.StatusOK)
			}
			if tc.stop {
				req, _ := http.NewRequest(http.MethodDelete, ts.URL+"/v1/workers/"+wk.ID, nil)
				resp, err := ts.Client().Do(req)
				assert.NilError(t, err)
				resp.Body.Close()
				assert.Equal(t, resp.StatusCode, http.StatusOK)
			}
			if tc.lost {
				s.workerLost(wk.ID) // what the tracker calls when the deadline passes
			}

			for i, want := range tc.want {
				ev := nextWorkerEvent(t, conn)
				assert.Check(t, is.Equal(ev.Type, want.typ), "event %d", i)
				assert.Check(t, is.Equal(ev.WorkerID, wk.ID), "event %d", i)
				assert.Check(t, is.Equal(ev.State, want.state), "event %d", i)
				assert.Check(t, is.Equal(ev.Hive, "localhost"), "event %d", i)
				assert.Check(t, is.Contains(ev.Reason, want.reason), "event %d", i)
			}
		})
	}
}

func TestHiveCheckIsAnEvent(t *testing.T) {
	s, ts := newTestServer(t)
	s.hives.bin = fakeHive(t)
	conn := subscribe(t, ts)

	status, body := readAll(t, post(t, ts, "/v1/hives/localhost/check", ""))
	assert.Equal(t, status, http.StatusOK, string(body))

	ev := nextWorkerEvent(t, conn)
	assert.Equal(t, ev.Type, api.EventHive)
	assert.Equal(t, ev.Hive, "localhost")
	assert.Assert(t, ev.Reachable != nil && *ev.Reachable)
}

func TestSummaryCarriesLiveFigures(t *testing.T) {
	s, _ := newTestServer(t)
	addWorker(s, "w-a", "http://127.0.0.1:1", 4)
	s.live.record(api.Heartbeat{WorkerID: "w-a", GenTokensPerSec: 12})
	l, err := s.router.acquire(context.Background(), testModel)
	assert.NilError(t, err)
	defer l.release()

	ev := s.summary()

	assert.DeepEqual(t, ev.Workers, []api.WorkerSummary{{ID: "w-a", Model: testModel,
		State: api.WorkerReady, SlotsBusy: 1, SlotsTotal: 4, GenTokensPerSec: 12}})
}

func TestSlowConsumerIsDropped(t *testing.T) {
	s, ts := newTestServer(t)
	conn := subscribe(t, ts) // and then read nothing until dropped
	reason := strings.Repeat("x", 32<<10)

	// Publish until the hub lets go of the subscriber: its socket fills,
	// then its buffer. No publish may wait for it.
	var slowest time.Duration
	published := 0
	for s.events.count() > 0 && published < 100000 {
		start := time.Now()
		s.events.publish(api.Event{Type: api.EventWorker, Reason: reason})
		slowest = max(slowest, time.Since(start))
		published++
	}
	// That the loop ends at all shows no publish waited for the consumer;
	// how long they took is a figure, not a check (no timed assertions).
	assert.Equal(t, s.events.count(), 0, "not dropped after %d events", published)
	t.Logf("dropped after %d events; slowest publish %s", published, slowest)

	// The queen still answers at once.
	status, _ := readAll(t, post(t, ts, "/v1/completions", `{"model":"none","prompt":"x"}`))
	assert.Equal(t, status, http.StatusNotFound)

	// Reading now drains what was sent, then the close with its reason.
	var err error
	for err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err = conn.ReadMessage()
	}
	var closeErr *websocket.CloseError
	assert.Assert(t, errors.As(err, &closeErr), "%v", err)
	assert.Equal(t, closeErr.Code, websocket.ClosePolicyViolation)
	assert.Assert(t, is.Contains(closeErr.Text, "slow consumer"))
}

func TestIdleSubscriberIsPinged(t *testing.T) {
	s, ts := newTestServer(t)
	s.pingInterval = 20 * time.Millisecond
	conn := subscribe(t, ts)
	pinged := make(chan struct{}, 1)
	conn.SetPingHandler(func(data string) error {
		select {
		case pinged <- struct{}{}:
		default:
		}
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()

	select {
	case <-pinged:
	case <-time.After(10 * time.Second):
		t.Fatal("no ping within 10s")
	}
	assert.Equal(t, s.events.count(), 1, "a subscriber that answers pings stays")
}
