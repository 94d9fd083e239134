package e2e

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestKilledWorkerComesBackUnderRestartAlways(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 250 * time.Millisecond})
	w := c.spawn("--restart", "always", "--ctx-size", "2048")
	assert.Equal(t, w.Restart, api.RestartAlways)

	killed := time.Now()
	assert.NilError(t, syscall.Kill(w.PID, syscall.SIGKILL))

	// Lost at its deadline, then started again under the same id.
	var back api.Worker
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		back = c.worker(w.ID)
		if back.State == api.WorkerReady && back.PID != w.PID && back.Restarts == 1 {
			return poll.Success()
		}
		return poll.Continue("worker is %s, pid %d, restarts %d", back.State, back.PID,
			back.Restarts)
	}, poll.WithTimeout(60*time.Second), poll.WithDelay(50*time.Millisecond))
	t.Logf("kill -9 to ready again: %s", time.Since(killed).Round(time.Millisecond))
	assert.Check(t, is.Contains(back.RestartReason, "lost"))
	assert.Check(t, processAlive(back.PID))

	out := c.mustRbee("worker", "list")
	assert.Check(t, is.Contains(out, w.ID+"\t"))
	assert.Check(t, is.Contains(out, "\t1 (lost"))

	status, body := c.postJSON("/v1/completions",
		`{"model":"`+w.Model+`","prompt":"Hello","max_tokens":2}`)
	assert.Equal(t, status, http.StatusOK, string(body))

	// Stopped by the user, it stays stopped: watched over several
	// reconcile passes (one a second).
	c.mustRbee("worker", "stop", w.ID)
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if processAlive(back.PID) {
			return poll.Continue("worker process %d still runs", back.PID)
		}
		return poll.Success()
	}, poll.WithTimeout(20*time.Second), poll.WithDelay(50*time.Millisecond))
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		got := c.worker(w.ID)
		assert.Equal(t, got.State, api.WorkerStopped)
		assert.Equal(t, got.Restarts, 1)
		time.Sleep(100 * time.Millisecond)
	}
	var list api.WorkerList
	c.getJSON("/v1/workers", &list)
	for _, lw := range list.Workers {
		assert.Check(t, !strings.EqualFold(lw.ID, w.ID), "stopped worker still listed")
	}
}
