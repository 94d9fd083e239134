package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// BenchmarkSpawnToFirstToken measures what a person waits for: from
// `rbee worker spawn` (the keeper asking the queen, the hive starting the
// worker, the model loading, the first ready heartbeat) to the first
// streamed token of a completion through the queen.
func BenchmarkSpawnToFirstToken(b *testing.B) {
	c := newCluster(b, clusterOptions{heartbeatInterval: 500 * time.Millisecond})
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		out, errOut, code := c.rbee("worker", "spawn", "-m", c.model.Path, "--json")
		assert.Equal(b, code, 0, errOut)
		var w api.Worker
		assert.NilError(b, json.Unmarshal([]byte(out), &w))

		firstToken(b, c)
		total += time.Since(start)

		c.mustRbee("worker", "stop", w.ID)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms_spawn_to_first_token")
}

// firstToken starts a streaming completion and returns at its first chunk.
func firstToken(b *testing.B, c *cluster) {
	b.Helper()
	resp, err := http.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"`+c.model.Name+`","prompt":"Once upon a time","max_tokens":8,"stream":true}`))
	assert.NilError(b, err)
	defer resp.Body.Close()
	assert.Equal(b, resp.StatusCode, http.StatusOK)
	_, done, err := httpapi.NewSSEReader(resp.Body).Next()
	assert.NilError(b, err)
	assert.Assert(b, !done)
}

// BenchmarkKillToReady measures how long a model misses a worker that
// crashed: from kill -9 of a `--restart always` worker to the queen seeing
// its replacement ready. That is the heartbeat deadline (three beats of
// 500ms here), the first restart's backoff (about 1s), the spawn, the model
// load and the first ready heartbeat. Each round kills a fresh worker, so
// that every kill is a first restart: a worker killed again and again
// waits a longer backoff each time, by design.
func BenchmarkKillToReady(b *testing.B) {
	c := newCluster(b, clusterOptions{heartbeatInterval: 500 * time.Millisecond})
	var toLost, toReady time.Duration
	for b.Loop() {
		b.StopTimer()
		w := c.spawn("--restart", "always")
		b.StartTimer()

		killed := time.Now()
		assert.NilError(b, syscall.Kill(w.PID, syscall.SIGKILL))
		lost := false
		for {
			got := c.worker(w.ID)
			if !lost && got.State != api.WorkerReady {
				lost = true
				toLost += time.Since(killed)
			}
			if lost && got.State == api.WorkerReady && got.Restarts == 1 {
				break
			}
			assert.Assert(b, time.Since(killed) < time.Minute, "worker %s is %s", w.ID, got.State)
			time.Sleep(10 * time.Millisecond)
		}
		toReady += time.Since(killed)

		b.StopTimer()
		c.mustRbee("worker", "stop", w.ID)
		b.StartTimer()
	}
	b.ReportMetric(float64(toLost.Milliseconds())/float64(b.N), "ms_kill_to_lost")
	b.ReportMetric(float64(toReady.Milliseconds())/float64(b.N), "ms_kill_to_ready")
}
