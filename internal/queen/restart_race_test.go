package queen

import (
	"context"
	"io"
	"net/http"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// beatDuringStop is a restartHive whose `worker stop` first calls onStop,
// as when the old process beats while the hive is stopping it.
type beatDuringStop struct {
	*restartHive
	onStop func()
}

func (h beatDuringStop) Run(ctx context.Context, argv []string, in io.Reader) (sshexec.Result, error) {
	if len(argv) > 2 && argv[2] == "stop" {
		h.onStop()
	}
	return h.restartHive.Run(ctx, argv, in)
}

// TestRestartForgetsBeatDuringStop: a beat of the old process, taken
// while the hive stops it, must not leave its route (old URL, old token,
// ready) for the restarted worker to inherit.
func TestRestartForgetsBeatDuringStop(t *testing.T) {
	ctx := context.Background()
	s, clock, hive := newRestartServer(t)
	recordReady(t, s, "w-1", api.RestartAlways)
	assert.NilError(t, s.store.SetState(ctx, "w-1", api.WorkerLost, "no heartbeat"))
	h := s.routes()
	s.hives.local = beatDuringStop{restartHive: hive, onStop: func() {
		status, _ := hbPost(t, h, "w-1", "old-token", api.WorkerReady, 0)
		assert.Equal(t, status, http.StatusOK)
	}}

	s.reconcile(ctx) // schedules the restart
	clock.Advance(backoffBase)
	s.reconcile(ctx) // runs it

	got := hbStored(t, s, "w-1")
	assert.Equal(t, got.Restarts, 1)
	rt := s.router.routes["w-1"]
	assert.Assert(t, rt != nil)
	assert.Equal(t, rt.token, got.Token, "the route keeps the old process's token")
	assert.Equal(t, rt.url, "http://127.0.0.1:1", "the route keeps the old process's URL")
	assert.Equal(t, rt.state, api.WorkerLoading)
}
