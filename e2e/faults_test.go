package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

// Fault tests (issue 7): a worker that hangs, a worker killed mid-stream,
// a queen restarted under load, and a hive whose sshd goes away. Figures
// are logged; the bounds asserted are generous, for a loaded machine.

// faultHeartbeat is the heartbeat interval of the fault tests: a worker is
// lost three intervals after its last beat.
const faultHeartbeat = 200 * time.Millisecond

// restartQueen stops the queen (SIGTERM, as `rbee queen stop` would) and
// starts it again on the same address and registry with args added to the
// base flags. It returns how long the old queen took to stop.
func (c *cluster) restartQueen(args ...string) time.Duration {
	c.t.Helper()
	start := time.Now()
	assert.NilError(c.t, c.queen.Process.Signal(syscall.SIGTERM))
	_ = c.queen.Wait()
	stopped := time.Since(start)
	c.startQueen(append([]string{"--addr", c.addr, "--db", c.dbPath, "--verbose"}, args...))
	return stopped
}

// streamEnd is how one live stream ended, and when.
type streamEnd struct {
	stream int
	at     time.Time
	err    error
}

// watchEnds reports each stream's end on the returned channel.
func watchEnds(streams []*liveStream) <-chan streamEnd {
	ends := make(chan streamEnd, len(streams))
	for i, s := range streams {
		go func() {
			err := s.finish()
			ends <- streamEnd{stream: i, at: time.Now(), err: err}
		}()
	}
	return ends
}

// burst sends n short completions at once and returns the errors.
func burst(client openai.Client, model string, n int) []error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := client.Completions.New(ctx, completionParams(model, 8)); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("request %d: %w", i, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// waitState waits until the queen shows worker id in one of states, and
// returns it.
func waitState(t *testing.T, c *cluster, id string, limit time.Duration,
	states ...api.WorkerState) api.Worker {
	t.Helper()
	var w api.Worker
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		w = c.worker(id)
		if slices.Contains(states, w.State) {
			return poll.Success()
		}
		return poll.Continue("worker %s is %s, want %v", id, w.State, states)
	}, poll.WithTimeout(limit), poll.WithDelay(20*time.Millisecond))
	return w
}

// TestWorkerFaults shares one queen and two workers of ten slots between
// three faults, in order: a hang (SIGSTOP) of a, a kill -9 of b under
// streams, and a queen restart under 20 streams.
func TestWorkerFaults(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: faultHeartbeat})
	// a is left alone when lost, so that it can come back by itself; b is
	// started again by the queen.
	a := c.spawn("--slots", "10", "--ctx-size", "8192", "--restart", "never")
	b := c.spawn("--slots", "10", "--ctx-size", "8192", "--restart", "always")
	client := c.sdk()

	t.Run("SIGSTOP", func(t *testing.T) { testHungWorker(t, c, client, a, b) })
	t.Run("kill -9 under streams", func(t *testing.T) { testKilledUnderStreams(t, c, client, a, b) })
	t.Run("queen restart under 20 streams", func(t *testing.T) {
		testQueenRestartUnderStreams(t, c, client, a, b)
	})
}

// testHungWorker: a stopped (hung, not dead) worker turns lost at its
// deadline, gets no request while it hangs, and rejoins after SIGCONT.
func testHungWorker(t *testing.T, c *cluster, client openai.Client, a, b api.Worker) {
	servedA, servedB := health(t, a).RequestsServed, health(t, b).RequestsServed
	stopped := time.Now()
	assert.NilError(t, syscall.Kill(a.PID, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(a.PID, syscall.SIGCONT) })

	waitState(t, c, a.ID, 10*time.Second, api.WorkerLost)
	t.Logf("SIGSTOP to lost: %s (deadline: last beat + 3 x %s)",
		time.Since(stopped).Round(time.Millisecond), faultHeartbeat)

	const requests = 12
	start := time.Now()
	for _, err := range burst(client, c.model.Name, requests) {
		assert.Check(t, err)
	}
	t.Logf("%d requests while a hangs: all served in %s", requests,
		time.Since(start).Round(time.Millisecond))
	waitServed(t, b, servedB+requests)

	resumed := time.Now()
	assert.NilError(t, syscall.Kill(a.PID, syscall.SIGCONT))
	back := waitState(t, c, a.ID, 15*time.Second, api.WorkerReady)
	t.Logf("SIGCONT to ready again: %s", time.Since(resumed).Round(time.Millisecond))
	assert.Equal(t, back.PID, a.PID, "the same process rejoined")
	assert.Equal(t, health(t, a).RequestsServed, servedA, "a request went to the hung worker")

	// Routable again: of two streams at once, one goes to each worker.
	s1 := openStream(t, client, c.model.Name, longMaxTokens)
	s2 := openStream(t, client, c.model.Name, longMaxTokens)
	waitBusy(t, c, a.ID, 1)
	waitBusy(t, c, b.ID, 1)
	s1.leave()
	s2.leave()
	waitBusy(t, c, a.ID, 0)
	waitBusy(t, c, b.ID, 0)
}

// testKilledUnderStreams: kill -9 of b ends its streams with an error
// event at once, the other worker's streams go on, requests after the
// detection all succeed, and b (--restart always) is ready again.
func testKilledUnderStreams(t *testing.T, c *cluster, client openai.Client, a, b api.Worker) {
	// Least busy first: two streams on each worker.
	streams := make([]*liveStream, 4)
	for i := range streams {
		streams[i] = openStream(t, client, c.model.Name, longMaxTokens)
	}
	waitBusy(t, c, a.ID, 2)
	waitBusy(t, c, b.ID, 2)
	ends := watchEnds(streams)

	killed := time.Now()
	assert.NilError(t, syscall.Kill(b.PID, syscall.SIGKILL))

	var slowest time.Duration
	ended := map[int]bool{}
	for range 2 {
		select {
		case end := <-ends:
			took := end.at.Sub(killed)
			slowest = max(slowest, took)
			ended[end.stream] = true
			var streamErr *ssestream.StreamError
			assert.Assert(t, errors.As(end.err, &streamErr), "want an error event, got %v", end.err)
			assert.Check(t, is.Contains(string(streamErr.Event.Data), "upstream_error"))
			assert.Check(t, took < 3*time.Second, "error event after %s", took)
		case <-time.After(15 * time.Second):
			t.Fatal("the killed worker's streams did not end")
		}
	}
	t.Logf("kill -9 to error event on both of its streams: %s", slowest.Round(time.Millisecond))
	select {
	case end := <-ends:
		t.Fatalf("stream %d on the survivor ended: %v", end.stream, end.err)
	case <-time.After(300 * time.Millisecond):
	}
	for _, s := range streams {
		s.leave()
	}

	// Detection: lost, or already being started again.
	waitState(t, c, b.ID, 10*time.Second, api.WorkerLost, api.WorkerStarting, api.WorkerLoading)
	t.Logf("kill -9 to detection: %s", time.Since(killed).Round(time.Millisecond))

	// From detection until b is back, requests keep coming: none fails.
	sent, failed := 0, 0
	var back api.Worker
	for {
		back = c.worker(b.ID)
		if back.State == api.WorkerReady && back.Restarts == 1 {
			break
		}
		assert.Assert(t, time.Since(killed) < 60*time.Second, "b is %s: not back", back.State)
		for _, err := range burst(client, c.model.Name, 4) {
			t.Error(err)
			failed++
		}
		sent += 4
	}
	t.Logf("kill -9 to replacement ready: %s (backoff %s); %d requests meanwhile, %d failed",
		time.Since(killed).Round(time.Millisecond), time.Second, sent, failed)
	assert.Check(t, is.Contains(back.RestartReason, "lost"))
	assert.Check(t, back.PID != b.PID)
}

// testQueenRestartUnderStreams: a queen restarted while 20 streams run
// marks no worker lost, and serves right after it is back. The streams
// through the old queen end with it (they are proxied): that is expected.
func testQueenRestartUnderStreams(t *testing.T, c *cluster, client openai.Client,
	a, b api.Worker) {
	b = c.worker(b.ID) // restarted by the previous fault: a new URL
	streams := make([]*liveStream, 20)
	for i := range streams {
		streams[i] = openStream(t, client, c.model.Name, longMaxTokens)
	}
	waitBusy(t, c, a.ID, 10)
	waitBusy(t, c, b.ID, 10)
	ends := watchEnds(streams)

	logFrom := len(c.queenLog.String())
	stopTook := c.restartQueen("--heartbeat-interval", faultHeartbeat.String())
	back := time.Now()
	t.Logf("queen stopped in %s (it drains open streams for up to 5s)", stopTook.Round(time.Millisecond))

	const requests = 10
	for _, err := range burst(client, c.model.Name, requests) {
		assert.Check(t, err, "right after the queen came back")
	}
	t.Logf("%d requests right after the restart: all served within %s", requests,
		time.Since(back).Round(time.Millisecond))

	broken := 0
	for range streams {
		select {
		case end := <-ends:
			if end.err != nil {
				broken++
			}
		case <-time.After(15 * time.Second):
			t.Fatal("a stream through the old queen hangs")
		}
	}
	t.Logf("streams through the old queen: %d of %d ended with an error", broken, len(streams))

	// Both workers beat again, and none was ever marked lost.
	for _, w := range []api.Worker{a, b} {
		poll.WaitOn(t, func(poll.LogT) poll.Result {
			got := c.worker(w.ID)
			if got.LastHeartbeat.After(back) {
				return poll.Success()
			}
			return poll.Continue("worker %s last beat at %s", w.ID, got.LastHeartbeat)
		}, poll.WithTimeout(30*time.Second), poll.WithDelay(50*time.Millisecond))
		assert.Equal(t, c.worker(w.ID).State, api.WorkerReady)
	}
	t.Logf("both workers beat again %s after the restart", time.Since(back).Round(time.Millisecond))
	assert.Check(t, !strings.Contains(c.queenLog.String()[logFrom:], "worker lost"))
}

// TestSSHHiveUnreachable: when a hive's sshd stops, the hive shows
// unreachable with its reason, its workers keep serving, and a restart
// due there waits until sshd is back.
func TestSSHHiveUnreachable(t *testing.T) {
	h := startSSHHive(t, "gpu1", "127.0.0.2")
	c := newCluster(t, clusterOptions{advertise: true, heartbeatInterval: faultHeartbeat})
	c.addHive(h)
	c.installHive(h.name)
	c.restartQueen("--heartbeat-interval", faultHeartbeat.String(), "--advertise-url", c.url,
		"--hive-probe-interval", "300ms")
	w := c.spawn("--hive", h.name, "--restart", "always")

	stopped := time.Now()
	h.server.Stop()
	var hive api.Hive
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if hive = c.hiveNamed(h.name); !hive.Reachable {
			return poll.Success()
		}
		return poll.Continue("hive %s still reachable", h.name)
	}, poll.WithTimeout(20*time.Second), poll.WithDelay(50*time.Millisecond))
	t.Logf("sshd stopped to hive unreachable: %s; reason: %s",
		time.Since(stopped).Round(time.Millisecond), hive.LastError)
	assert.Check(t, is.Contains(hive.LastError, `hive "gpu1"`))
	out := c.mustRbee("hive", "list")
	assert.Check(t, is.Contains(out, hive.LastError), out)

	// Its worker serves on: it needs no SSH.
	assert.Assert(t, len(strings.TrimSpace(c.complete(w.Model))) > 0)
	assert.Equal(t, c.worker(w.ID).State, api.WorkerReady)

	// Killed now, it is due for a restart that must wait for the hive.
	assert.NilError(t, syscall.Kill(w.PID, syscall.SIGKILL))
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		got := c.worker(w.ID)
		if strings.HasPrefix(got.RestartReason, "waiting for hive gpu1: ") {
			return poll.Success()
		}
		return poll.Continue("worker %s is %s, restart reason %q", w.ID, got.State,
			got.RestartReason)
	}, poll.WithTimeout(20*time.Second), poll.WithDelay(50*time.Millisecond))
	got := c.worker(w.ID)
	assert.Equal(t, got.State, api.WorkerLost)
	assert.Equal(t, got.Restarts, 0)

	started := time.Now()
	h.server.Start()
	got = waitState(t, c, w.ID, 60*time.Second, api.WorkerReady)
	t.Logf("sshd back to the worker ready again: %s", time.Since(started).Round(time.Millisecond))
	assert.Equal(t, got.Restarts, 1)
	assert.Check(t, is.Contains(got.RestartReason, "lost"))
	assert.Check(t, c.hiveNamed(h.name).Reachable)
	assert.Assert(t, len(strings.TrimSpace(c.complete(w.Model))) > 0)
}

// hiveNamed reads hive name from GET /v1/hives.
func (c *cluster) hiveNamed(name string) api.Hive {
	c.t.Helper()
	var list api.HiveList
	c.getJSON("/v1/hives", &list)
	for _, h := range list.Hives {
		if h.Name == name {
			return h
		}
	}
	c.t.Fatalf("no hive %q in GET /v1/hives", name)
	return api.Hive{}
}
