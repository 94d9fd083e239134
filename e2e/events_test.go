package e2e

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

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

	w := c.spawn("--restart", "never") // stays lost: not started again
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

// tinyReceiveWindow dials with a small socket receive buffer, so that a
// client that reads nothing soon stops the queen's writes to it.
func tinyReceiveWindow() *websocket.Dialer {
	d := &net.Dialer{Control: func(_, _ string, raw syscall.RawConn) error {
		var serr error
		err := raw.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &websocket.Dialer{NetDialContext: d.DialContext, ReadBufferSize: 1024}
}

func TestEventsDropASlowConsumerAndKeepServing(t *testing.T) {
	// A tiny buffer and a fast summary fill a stuck consumer quickly.
	c := newCluster(t, clusterOptions{heartbeatInterval: 300 * time.Millisecond,
		eventBuffer: 4, summaryInterval: 100 * time.Microsecond})
	w := c.spawn()
	conn := c.dialEvents(t, tinyReceiveWindow())

	// The client reads nothing until the queen has let go of it.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if strings.Contains(c.queenLog.String(), "event subscriber dropped") {
			return poll.Success()
		}
		return poll.Continue("the queen still holds the slow consumer")
	}, poll.WithTimeout(2*time.Minute), poll.WithDelay(50*time.Millisecond))

	// The queen answers while its write to the consumer is stuck.
	status, body := c.postJSON("/v1/completions",
		`{"model":"`+w.Model+`","prompt":"Once upon a time","max_tokens":8}`)
	assert.Equal(t, status, http.StatusOK, string(body))

	// Reading now drains what was sent and ends with the close reason.
	assert.NilError(t, conn.SetReadDeadline(time.Now().Add(time.Minute)))
	for {
		_, _, err := conn.NextReader()
		if err == nil {
			continue
		}
		var closed *websocket.CloseError
		assert.Assert(t, errors.As(err, &closed), "the stream ended without a close: %v", err)
		assert.Check(t, is.Equal(closed.Code, websocket.ClosePolicyViolation))
		assert.Check(t, is.Contains(closed.Text, "slow consumer"))
		break
	}
}
