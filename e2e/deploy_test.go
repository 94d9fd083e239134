package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

// One cluster, the whole life of a deployment: two replicas, one killed
// and replaced by its restart, scaled down to one; then an orphan found
// and stopped by `rbee hive gc`; then a cascading queen stop that leaves
// no worker behind.
func TestDeploymentLifecycle(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 250 * time.Millisecond})

	d := c.deploy("--replicas", "2")
	assert.Equal(t, d.Ready, 2)
	assert.Assert(t, is.Len(d.Workers, 2))
	pids := map[string]int{}
	for _, id := range d.Workers {
		pids[id] = c.worker(id).PID
	}

	// kill -9: the restart policy brings it back under its id, and the
	// deployment spawns no extra worker meanwhile.
	victim := d.Workers[0]
	assert.NilError(t, syscall.Kill(pids[victim], syscall.SIGKILL))
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		w := c.worker(victim)
		got := c.deployment(d.Name)
		if w.State == api.WorkerReady && w.PID != pids[victim] && got.Ready == 2 {
			return poll.Success()
		}
		return poll.Continue("victim %s pid %d; deployment %d/2 ready", w.State, w.PID, got.Ready)
	}, poll.WithTimeout(60*time.Second), poll.WithDelay(100*time.Millisecond))
	assert.Check(t, is.DeepEqual(c.deployment(d.Name).Workers, d.Workers))
	pids[victim] = c.worker(victim).PID

	// Scale down: one replica left, the other drained and stopped.
	d = c.deploy("--replicas", "1")
	assert.Assert(t, is.Len(d.Workers, 1))
	for id, pid := range pids {
		if id == d.Workers[0] {
			continue
		}
		waitProcessGone(t, pid)
		assert.Check(t, is.Equal(c.worker(id).State, api.WorkerStopped))
	}
	out := c.mustRbee("deploy", "list")
	assert.Check(t, is.Contains(out, d.Name+"\t"))
	assert.Check(t, is.Contains(out, "\t1\t1\t"+d.Workers[0]+"\t"))

	// An orphan: a worker started on the hive behind the queen's back.
	orphan := c.hiveSpawn("w-orphan")
	var gc api.GCResult
	assert.NilError(t, json.Unmarshal([]byte(c.mustRbee("hive", "gc", "localhost", "--json")), &gc))
	assert.Assert(t, is.Len(gc.Orphans, 1), "%+v", gc.Orphans)
	assert.Check(t, is.Equal(gc.Orphans[0].ID, "w-orphan"))
	assert.Check(t, is.Contains(gc.Orphans[0].Reason, "the queen has no worker"))
	assert.Check(t, gc.Orphans[0].Done)
	waitProcessGone(t, orphan.PID)
	assert.Check(t, processAlive(c.worker(d.Workers[0]).PID), "gc stopped a wanted worker")

	// Cascade: every worker drained and stopped, then the queen.
	last := c.worker(d.Workers[0])
	out = c.mustRbee("queen", "stop", "--cascade", "--timeout", "5s")
	assert.Check(t, is.Contains(out, "stopped worker "+last.ID))
	assert.Check(t, is.Contains(out, "queen stopped"))
	waitProcessGone(t, last.PID)
	var list api.HiveWorkerList
	assert.NilError(t, json.Unmarshal(c.runHive([]string{"worker", "list"}, ""), &list))
	for _, w := range list.Workers {
		assert.Check(t, !w.Alive, "worker %s still runs", w.ID)
	}
}

// deploy runs `rbee deploy` on the test model and returns the deployment.
func (c *cluster) deploy(args ...string) api.Deployment {
	c.t.Helper()
	args = append([]string{"deploy", "-m", c.model.Path, "--ctx-size", "2048", "--json"}, args...)
	var d api.Deployment
	assert.NilError(c.t, json.Unmarshal([]byte(c.mustRbee(args...)), &d))
	return d
}

// deployment reads one deployment from the queen's API.
func (c *cluster) deployment(name string) api.Deployment {
	c.t.Helper()
	var d api.Deployment
	c.getJSON("/v1/deployments/"+name, &d)
	return d
}

// runHive runs rbee-hive on the local hive, as the queen would, and returns
// its stdout.
func (c *cluster) runHive(args []string, stdin string) []byte {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "rbee-hive"), args...)
	cmd.Env = c.env
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	assert.NilError(c.t, err, "rbee-hive %v: %s", args, stderr.String())
	return out
}

// hiveSpawn starts a worker with rbee-hive directly, unknown to the queen.
func (c *cluster) hiveSpawn(id string) api.SpawnResult {
	c.t.Helper()
	var res api.SpawnResult
	out := c.runHive([]string{"worker", "spawn", "--id", id, "--model", c.model.Path,
		"--ctx-size", "2048", "--queen-url", c.url}, "orphan-token\n")
	assert.NilError(c.t, json.Unmarshal(out, &res))
	return res
}

// waitProcessGone waits until process pid is gone.
func waitProcessGone(t *testing.T, pid int) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if processAlive(pid) {
			return poll.Continue("process %d still runs", pid)
		}
		return poll.Success()
	}, poll.WithTimeout(30*time.Second), poll.WithDelay(50*time.Millisecond))
}
