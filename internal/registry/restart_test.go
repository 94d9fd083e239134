package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestWorkerKeepsWhatRestartingNeeds(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	layers := 12
	in := newWorker("w1", created)
	in.Restart, in.GPULayers, in.Threads = api.RestartAlways, &layers, 3
	mustCreate(t, s, in)

	got, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, got.Restart, api.RestartAlways)
	assert.Assert(t, got.GPULayers != nil)
	assert.Equal(t, *got.GPULayers, 12)
	assert.Equal(t, got.Threads, 3)

	in = newWorker("w2", created)
	in.Restart = "sometimes"
	assert.ErrorContains(t, s.CreateWorker(ctx, in), "unknown restart policy")
}

func TestGoodbyeKeepsDesiredOnlyUnderAlways(t *testing.T) {
	tests := []struct {
		name, policy, want string
	}{
		{name: "always", policy: api.RestartAlways, want: DesiredRunning},
		{name: "on-failure", policy: api.RestartOnFailure, want: DesiredStopped},
		{name: "never", policy: api.RestartNever, want: DesiredStopped},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTemp(t)
			w := newWorker("w1", created)
			w.Restart = tc.policy
			mustCreate(t, s, w)

			hb := api.Heartbeat{WorkerID: "w1", State: api.WorkerStopped}
			assert.NilError(t, s.RecordHeartbeat(ctx, "w1", hb, created))
			got, err := s.Worker(ctx, "w1")
			assert.NilError(t, err)
			assert.Equal(t, got.Desired, tc.want)
		})
	}
}

func TestRecordRestart(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created))
	next := created.Add(time.Minute)
	assert.NilError(t, s.SetNextRestart(ctx, "w1", next, "worker lost"))

	got, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, got.NextRestart.Equal(next))
	assert.Equal(t, got.RestartReason, "worker lost")

	ready := api.Heartbeat{WorkerID: "w1", State: api.WorkerReady}
	assert.NilError(t, s.RecordHeartbeat(ctx, "w1", ready, created))
	assert.NilError(t, s.RecordHeartbeat(ctx, "w1", ready, next))
	got, err = s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, got.ReadyAt.Equal(created), "ready since the first ready beat")

	assert.NilError(t, s.SetState(ctx, "w1", api.WorkerLost, "no heartbeat"))
	assert.NilError(t, s.RecordRestart(ctx, "w1", "new-token", "worker lost"))
	got, err = s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, got.State, api.WorkerStarting)
	assert.Equal(t, got.Token, "new-token")
	assert.Equal(t, got.Error, "")
	assert.Equal(t, got.Restarts, 1)
	assert.Equal(t, got.RestartStreak, 1)
	assert.Check(t, got.NextRestart.IsZero())
	assert.Check(t, got.ReadyAt.IsZero())

	assert.NilError(t, s.ResetRestartStreak(ctx, "w1"))
	got, err = s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Equal(t, got.Restarts, 1)
	assert.Equal(t, got.RestartStreak, 0)

	// A worker the user stopped is never restarted behind their back.
	assert.NilError(t, s.SetState(ctx, "w1", api.WorkerStopped, ""))
	err = s.RecordRestart(ctx, "w1", "other", "worker lost")
	assert.Check(t, errors.Is(err, ErrNotFound))
	got, err = s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(got.Token, "new-token"))
}
