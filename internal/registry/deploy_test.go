package registry

import (
	"context"
	"errors"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestPutDeployment(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	layers := 12
	d := Deployment{Name: "stories", Model: "stories", Device: "cpu", Slots: 2,
		GPULayers: &layers, Replicas: 2}

	created, err := s.PutDeployment(ctx, d)
	assert.NilError(t, err)
	assert.Check(t, created)
	got, err := s.Deployment(ctx, "stories")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(got.Replicas, 2))
	assert.Check(t, is.Equal(got.Restart, api.RestartOnFailure))
	assert.Check(t, is.DeepEqual(got.GPULayers, &layers))
	assert.Check(t, !got.CreatedAt.IsZero())

	d.Replicas, d.GPULayers, d.Hive = 5, nil, "gpu1"
	created, err = s.PutDeployment(ctx, d)
	assert.NilError(t, err)
	assert.Check(t, !created)
	all, err := s.Deployments(ctx)
	assert.NilError(t, err)
	assert.Assert(t, is.Len(all, 1))
	assert.Check(t, is.Equal(all[0].Replicas, 5))
	assert.Check(t, is.Equal(all[0].Hive, "gpu1"))
	assert.Check(t, all[0].GPULayers == nil)
	assert.Check(t, all[0].CreatedAt.Equal(got.CreatedAt))

	d.Replicas = -1
	_, err = s.PutDeployment(ctx, d)
	assert.Check(t, err != nil, "negative replicas accepted")
}

func TestDeploymentWorkers(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	_, err := s.PutDeployment(ctx, Deployment{Name: "tinyllama", Model: "tinyllama", Replicas: 2})
	assert.NilError(t, err)
	mustCreate(t, s, newWorker("w1", created), newWorker("w2", created.Add(1)),
		newWorker("hand", created.Add(2)))
	assert.NilError(t, s.SetWorkerDeployment(ctx, "w1", "tinyllama"))
	assert.NilError(t, s.SetWorkerDeployment(ctx, "w2", "tinyllama"))
	assert.Check(t, errors.Is(s.SetWorkerDeployment(ctx, "absent", "tinyllama"), ErrNotFound))

	ids := func() []string {
		ws, err := s.DeploymentWorkers(ctx, "tinyllama")
		assert.NilError(t, err)
		var out []string
		for _, w := range ws {
			out = append(out, w.ID)
		}
		return out
	}
	assert.Check(t, is.DeepEqual(ids(), []string{"w1", "w2"}), "a hand-spawned worker is not counted")

	// Retired: no longer wanted, but its state and error stay.
	assert.NilError(t, s.SetState(ctx, "w2", api.WorkerFailed, "out of memory"))
	assert.NilError(t, s.RetireWorker(ctx, "w2"))
	assert.Check(t, is.DeepEqual(ids(), []string{"w1"}))
	w2, err := s.Worker(ctx, "w2")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(w2.State, api.WorkerFailed))
	assert.Check(t, is.Equal(w2.Error, "out of memory"))
	assert.Check(t, is.Equal(w2.Desired, DesiredStopped))

	// Removed: the deployment is gone and its workers untied.
	assert.NilError(t, s.DeleteDeployment(ctx, "tinyllama"))
	assert.Check(t, is.Len(ids(), 0))
	_, err = s.Deployment(ctx, "tinyllama")
	assert.Check(t, errors.Is(err, ErrNotFound))
	assert.Check(t, errors.Is(s.DeleteDeployment(ctx, "tinyllama"), ErrNotFound))
}

func TestStopAllWorkers(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created), newWorker("w2", created.Add(1)))
	assert.NilError(t, s.RetireWorker(ctx, "w2"))

	n, err := s.StopAllWorkers(ctx)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(n, 1))
	w1, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(w1.Desired, DesiredStopped))
	assert.Check(t, is.Equal(w1.State, api.WorkerStarting), "the observed state is left alone")
}

func TestRetireDownWorker(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("lost", created), newWorker("failed", created.Add(1)),
		newWorker("ready", created.Add(2)))
	assert.NilError(t, s.SetState(ctx, "lost", api.WorkerLost, "no heartbeat"))
	assert.NilError(t, s.SetState(ctx, "failed", api.WorkerFailed, "out of memory"))
	assert.NilError(t, s.SetState(ctx, "ready", api.WorkerReady, ""))

	for _, id := range []string{"lost", "failed"} {
		ok, err := s.RetireDownWorker(ctx, id, "replaced")
		assert.NilError(t, err)
		assert.Check(t, ok, id)
		ok, err = s.RetireDownWorker(ctx, id, "replaced")
		assert.NilError(t, err)
		assert.Check(t, !ok, "%s: retired once only", id)
	}
	lost, err := s.Worker(ctx, "lost")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(lost.State, api.WorkerStopped), "a late heartbeat is told to exit")
	assert.Check(t, is.Equal(lost.Error, "replaced"))
	assert.Check(t, is.Equal(lost.Desired, DesiredStopped))
	failed, err := s.Worker(ctx, "failed")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(failed.State, api.WorkerFailed), "keeps how it ended")
	assert.Check(t, is.Equal(failed.Error, "out of memory"))
	assert.Check(t, is.Equal(failed.Desired, DesiredStopped))

	// A worker that beats again is not down: left alone.
	ok, err := s.RetireDownWorker(ctx, "ready", "replaced")
	assert.NilError(t, err)
	assert.Check(t, !ok)
	ready, err := s.Worker(ctx, "ready")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(ready.Desired, DesiredRunning))
}
