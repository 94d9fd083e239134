package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

// A worker the queen does not know (started on the hive behind its back,
// as after a reset of the queen's database) hears 404 to its heartbeats:
// it keeps serving, writes its status file, and `rbee-hive worker list`
// reports it as an orphan by itself; `rbee hive gc` then stops it, and a
// worker the queen wants is left alone.
func TestHiveReportsOrphan(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 250 * time.Millisecond})
	wanted := c.spawn("--ctx-size", "2048")
	orphan := c.hiveSpawn("w-unknown")

	var list api.HiveWorkerList
	byID := func() map[string]api.HiveWorker {
		list = api.HiveWorkerList{}
		assert.NilError(t, json.Unmarshal(c.runHive([]string{"worker", "list"}, ""), &list))
		out := map[string]api.HiveWorker{}
		for _, w := range list.Workers {
			out[w.ID] = w
		}
		return out
	}
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if w := byID()["w-unknown"]; !w.Orphan {
			return poll.Continue("w-unknown not reported as an orphan yet: %+v", w)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(100*time.Millisecond))
	workers := byID()
	got := workers["w-unknown"]
	assert.Check(t, got.Alive, "a 404 must not stop the worker")
	assert.Check(t, is.Contains(got.OrphanReason, "the queen at "+c.url+" has not known this worker since"))
	assert.Check(t, is.Contains(got.OrphanReason, "404 worker_not_found"))
	assert.Check(t, !workers[wanted.ID].Orphan, "the queen knows %s", wanted.ID)
	statusPath := filepath.Join(c.hiveDir, "workers", "w-unknown.status.json")
	_, err := os.Stat(statusPath)
	assert.NilError(t, err)

	var gc api.GCResult
	assert.NilError(t, json.Unmarshal([]byte(c.mustRbee("hive", "gc", "localhost", "--json")), &gc))
	assert.Assert(t, is.Len(gc.Orphans, 1), "%+v", gc.Orphans)
	assert.Check(t, is.Equal(gc.Orphans[0].ID, "w-unknown"))
	assert.Check(t, gc.Orphans[0].Orphan)
	assert.Check(t, is.Contains(gc.Orphans[0].Reason, "the hive reports: the queen at "+c.url))
	assert.Check(t, is.Equal(gc.Orphans[0].Action, api.OrphanStop))
	assert.Check(t, gc.Orphans[0].Done)
	waitProcessGone(t, orphan.PID)
	_, err = os.Stat(statusPath)
	assert.Check(t, os.IsNotExist(err), "the status file goes with the record")
	assert.Check(t, processAlive(c.worker(wanted.ID).PID), "gc stopped a wanted worker")
}
