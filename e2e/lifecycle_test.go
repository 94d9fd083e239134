package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// health reads a worker's /health, which needs no token.
func health(t *testing.T, w api.Worker) api.WorkerHealth {
	t.Helper()
	resp, err := http.Get(w.URL + "/health")
	assert.NilError(t, err)
	defer resp.Body.Close()
	var h api.WorkerHealth
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&h))
	return h
}

func TestClientDisconnectStopsGeneration(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	w := c.spawn("--slots", "1", "--ctx-size", "4096")

	resp, err := http.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"`+w.Model+`","prompt":"Once upon a time","max_tokens":4000,"stream":true}`))
	assert.NilError(t, err)
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	_, _, err = httpapi.NewSSEReader(resp.Body).Next()
	assert.NilError(t, err)
	resp.Body.Close() // the client goes away after the first token

	// The worker sees the disconnect through the queen and frees the slot;
	// the generation counts as failed, not served to the end.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		h := health(t, w)
		if h.SlotsBusy == 0 && h.RequestsFailed == 1 {
			return poll.Success()
		}
		return poll.Continue("busy %d, failed %d, served %d", h.SlotsBusy, h.RequestsFailed, h.RequestsServed)
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(20*time.Millisecond))
	assert.Equal(t, health(t, w).RequestsServed, int64(0))
	assert.Equal(t, c.worker(w.ID).SlotsBusy, 0)
}

func TestSIGTERMDrainsAndSaysGoodbye(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	w := c.spawn("--slots", "2", "--ctx-size", "2048")

	// A request in flight when SIGTERM arrives finishes, or ends with an
	// error event: it never hangs.
	resp, err := http.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"`+w.Model+`","prompt":"Once upon a time","max_tokens":1500,"stream":true}`))
	assert.NilError(t, err)
	defer resp.Body.Close()
	events := httpapi.NewSSEReader(resp.Body)
	_, _, err = events.Next()
	assert.NilError(t, err)

	assert.NilError(t, syscall.Kill(w.PID, syscall.SIGTERM))
	ended := make(chan error, 1)
	go func() {
		for {
			_, done, err := events.Next()
			if done || err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		assert.NilError(t, err, "the stream should end with [DONE]")
	case <-time.After(15 * time.Second):
		t.Fatal("the in-flight stream did not end after SIGTERM")
	}

	// The worker told the queen it stopped, and exited on its own.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if state := c.worker(w.ID).State; state != api.WorkerStopped {
			return poll.Continue("worker is %s", state)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(20*time.Millisecond))
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if processAlive(w.PID) {
			return poll.Continue("worker process %d still runs", w.PID)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(20*time.Millisecond))
	log, err := os.ReadFile(w.LogPath)
	assert.NilError(t, err)
	assert.Assert(t, is.Contains(string(log), "msg=stopped"))

	// New requests for the model now fail fast with a clear error.
	status, body := c.postJSON("/v1/completions", `{"model":"`+w.Model+`","prompt":"hi"}`)
	assert.Equal(t, status, http.StatusNotFound, string(body))
}

func TestModelThatFailsToLoadReportsWhy(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	// A GGUF cut short passes the hive's quick check of the magic bytes,
	// so it is the worker that finds it broken and tells the queen.
	data, err := os.ReadFile(c.model.Path)
	assert.NilError(t, err)
	broken := filepath.Join(t.TempDir(), "broken.gguf")
	assert.NilError(t, os.WriteFile(broken, data[:len(data)/2], 0o600))

	_, errOut, code := c.rbee("worker", "spawn", "-m", broken)
	assert.Equal(t, code, 1)
	assert.Assert(t, is.Contains(errOut, "not a valid GGUF model"))

	var list api.WorkerList
	c.getJSON("/v1/workers", &list)
	assert.Equal(t, len(list.Workers), 1)
	assert.Equal(t, list.Workers[0].State, api.WorkerFailed)
	assert.Assert(t, is.Contains(list.Workers[0].Error, "not a valid GGUF model"))
}

// A worker the queen no longer wants (stopped in the registry, as when a
// `rbee worker stop` races a restart) shuts itself down at its next
// heartbeat, when the queen answers 410.
func TestWorkerExitsWhenTheQueenRetiresIt(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 200 * time.Millisecond})
	w := c.spawn("--restart", "never")

	store, err := registry.Open(c.dbPath)
	assert.NilError(t, err)
	defer store.Close()
	assert.NilError(t, store.SetState(context.Background(), w.ID, api.WorkerStopped, ""))

	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if processAlive(w.PID) {
			return poll.Continue("worker process %d still runs", w.PID)
		}
		return poll.Success()
	}, poll.WithTimeout(15*time.Second), poll.WithDelay(50*time.Millisecond))
	log, err := os.ReadFile(w.LogPath)
	assert.NilError(t, err)
	assert.Assert(t, is.Contains(string(log), "the queen stopped this worker"))
}
