package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// dialEvents connects to the queen's event stream with dialer.
func (c *cluster) dialEvents(t *testing.T, dialer *websocket.Dialer) *websocket.Conn {
	t.Helper()
	conn, resp, err := dialer.Dial("ws://"+c.addr+"/v1/events", nil)
	assert.NilError(t, err)
	resp.Body.Close()
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readEvents reads conn until it fails, sending each event on the channel
// it returns; the channel closes when the stream ends.
func readEvents(t *testing.T, conn *websocket.Conn) <-chan api.Event {
	events := make(chan api.Event, 1024)
	go func() {
		defer close(events)
		for {
			var ev api.Event
			if err := conn.ReadJSON(&ev); err != nil {
				return
			}
			events <- ev
		}
	}()
	return events
}

func TestEventsFollowAWorkerFromSpawnToLost(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 200 * time.Millisecond})
	events := readEvents(t, c.dialEvents(t, websocket.DefaultDialer))
	first := <-events
	assert.Equal(t, first.Type, api.EventSummary, "the stream opens with a summary")

	w := c.spawn()
	assert.NilError(t, syscall.Kill(w.PID, syscall.SIGKILL))

	want := []api.WorkerState{api.WorkerStarting, api.WorkerLoading, api.WorkerReady,
		api.WorkerLost}
	var got []api.WorkerState
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		select {
		case ev, ok := <-events:
			assert.Assert(t, ok, "the stream ended after %v", got)
			if ev.Type != api.EventWorker || ev.WorkerID != w.ID {
				continue
			}
			assert.Check(t, is.Equal(ev.Model, w.Model))
			assert.Check(t, is.Equal(ev.Hive, "localhost"))
			assert.Check(t, ev.Reason != "", "event %s has no reason", ev.State)
			got = append(got, ev.State)
		case <-timeout:
			t.Fatalf("worker events so far: %v, want %v", got, want)
		}
	}
	assert.DeepEqual(t, got, want)
}
