package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// A drained worker takes no new request, lets the one in flight finish
// whole, then stops.
func TestDrainLetsInFlightFinish(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	w := c.spawn("--slots", "2", "--ctx-size", "2048", "--restart", "always")

	resp, err := http.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"`+w.Model+`","prompt":"Once upon a time","max_tokens":1500,"stream":true}`))
	assert.NilError(t, err)
	defer resp.Body.Close()
	events := httpapi.NewSSEReader(resp.Body)
	_, _, err = events.Next()
	assert.NilError(t, err)

	type result struct {
		out, errOut string
		code        int
	}
	drained := make(chan result, 1)
	go func() {
		out, errOut, code := c.rbee("worker", "drain", w.ID, "--timeout", "60s")
		drained <- result{out, errOut, code}
	}()

	// While it drains, the model has no routable worker.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		status, body := c.postJSON("/v1/completions", `{"model":"`+w.Model+`","prompt":"hi","max_tokens":2}`)
		if status == http.StatusServiceUnavailable && strings.Contains(string(body), "draining") {
			return poll.Success()
		}
		return poll.Continue("status %d: %s", status, body)
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(20*time.Millisecond))

	// The request in flight ends normally, with its finish reason.
	var final struct {
		Choices []struct {
			FinishReason *string `json:"finish_reason"`
		}
	}
	for {
		data, done, err := events.Next()
		assert.NilError(t, err, "the in-flight stream broke during the drain")
		if done {
			break
		}
		assert.NilError(t, json.Unmarshal(data, &final))
		assert.Assert(t, !strings.Contains(string(data), `"error"`), string(data))
	}

	select {
	case r := <-drained:
		assert.Equal(t, r.code, 0, r.errOut)
		assert.Assert(t, is.Contains(r.out, "drained and stopped "+w.ID))
	case <-time.After(90 * time.Second):
		t.Fatal("rbee worker drain did not return")
	}
	got := c.worker(w.ID)
	assert.Equal(t, got.State, api.WorkerStopped)
	assert.Assert(t, !processAlive(w.PID))
}

func TestHiveDrainStopsEveryWorker(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	a := c.spawn()
	b := c.spawn()

	out := c.mustRbee("hive", "drain", "localhost", "--timeout", "5s", "--json")
	var list api.WorkerList
	assert.NilError(t, json.Unmarshal([]byte(out), &list))
	assert.Equal(t, len(list.Workers), 2)
	for _, w := range []api.Worker{a, b} {
		assert.Equal(t, c.worker(w.ID).State, api.WorkerStopped)
		assert.Assert(t, !processAlive(w.PID))
	}
}
