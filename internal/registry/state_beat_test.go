package registry

import (
	"context"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestRecordStateBeat(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created), newWorker("w2", created))
	at := time.Date(2025, 4, 1, 12, 0, 0, 0, time.UTC)
	assert.NilError(t, s.RecordRestart(ctx, "w2", "new-token", "test")) // w2: new token
	beat := func(id string) SteadyBeat {
		return SteadyBeat{ID: id, Token: "secret-" + id, State: api.WorkerStarting,
			URL: "http://" + id, At: at}
	}

	ok, err := s.RecordStateBeat(ctx, beat("w1"), api.WorkerReady)
	assert.NilError(t, err)
	assert.Assert(t, ok)
	w, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, w.State, api.WorkerReady)
	assert.Equal(t, w.URL, "http://w1")
	assert.Assert(t, w.ReadyAt.Equal(at))

	// Checked against starting, but the worker is ready now: not written.
	ok, err = s.RecordStateBeat(ctx, beat("w1"), api.WorkerFailed)
	assert.NilError(t, err)
	assert.Assert(t, !ok)

	ok, err = s.RecordStateBeat(ctx, beat("w2"), api.WorkerReady) // old token
	assert.NilError(t, err)
	assert.Assert(t, !ok)
	w, err = s.Worker(ctx, "w2")
	assert.NilError(t, err)
	assert.Equal(t, w.State, api.WorkerStarting)

	_, err = s.RecordStateBeat(ctx, beat("w1"), "sleeping")
	assert.ErrorContains(t, err, "unknown state")
}
