package registry

import (
	"context"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestRecordHeartbeats(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created), newWorker("w2", created),
		newWorker("w3", created), newWorker("w4", created))
	at := time.Date(2025, 4, 1, 12, 0, 0, 123, time.UTC)
	for _, id := range []string{"w1", "w2", "w3", "w4"} {
		assert.NilError(t, s.RecordHeartbeat(ctx, id, api.Heartbeat{WorkerID: id,
			State: api.WorkerReady, URL: "http://old/" + id}, at))
	}
	// Since the beats below came: w2 was drained, w3 started again with a
	// new token, and w4 deleted.
	assert.NilError(t, s.SetState(ctx, "w2", api.WorkerDraining, ""))
	assert.NilError(t, s.RecordRestart(ctx, "w3", "new-token", "test"))
	assert.NilError(t, s.DeleteWorker(ctx, "w4"))

	later := at.Add(time.Second)
	beat := func(id string) SteadyBeat {
		return SteadyBeat{ID: id, Token: "secret-" + id, State: api.WorkerReady,
			SlotsBusy: 1, Error: "slow", At: later}
	}
	withURL := beat("w1")
	withURL.URL = "http://new/w1"
	n, err := s.RecordHeartbeats(ctx, []SteadyBeat{withURL, beat("w2"), beat("w3"),
		beat("w4"), beat("missing")})
	assert.NilError(t, err)
	assert.Equal(t, n, 1)

	w1, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, w1.LastHeartbeat, later)
	assert.Equal(t, w1.URL, "http://new/w1")
	assert.Equal(t, w1.SlotsBusy, 1)
	assert.Equal(t, w1.Error, "slow")
	assert.Equal(t, w1.State, api.WorkerReady)

	w2, err := s.Worker(ctx, "w2")
	assert.NilError(t, err)
	assert.Equal(t, w2.State, api.WorkerDraining, "a late beat undid the drain")
	assert.Equal(t, w2.LastHeartbeat, at)

	w3, err := s.Worker(ctx, "w3")
	assert.NilError(t, err)
	assert.Equal(t, w3.URL, "", "a beat of the old process wrote after the restart")
	assert.Equal(t, w3.State, api.WorkerStarting)

	// An empty URL leaves the recorded one.
	b := beat("w1")
	b.At = later.Add(time.Second)
	n, err = s.RecordHeartbeats(ctx, []SteadyBeat{b})
	assert.NilError(t, err)
	assert.Equal(t, n, 1)
	w1, err = s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, w1.URL, "http://new/w1")

	n, err = s.RecordHeartbeats(ctx, nil)
	assert.NilError(t, err)
	assert.Equal(t, n, 0)
}
