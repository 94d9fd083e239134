package queen

import (
	"context"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestRouterAddKeepsANewerState(t *testing.T) {
	tests := []struct {
		name      string
		heartbeat bool // the worker beat "ready" before its spawn returned
		wantState api.WorkerState
	}{
		{name: "spawn returns first", wantState: api.WorkerLoading},
		{name: "ready heartbeat came first", heartbeat: true, wantState: api.WorkerReady},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter()
			if tc.heartbeat {
				r.update("w-1", testModel, "http://w-1", "token-w-1", api.WorkerReady, 2)
			}

			r.add("w-1", testModel, "http://w-1", "token-w-1", 2)

			assert.Equal(t, r.routes["w-1"].state, tc.wantState)
			assert.Equal(t, r.routes["w-1"].url, "http://w-1")
			assert.Equal(t, r.routes["w-1"].slotsTotal, 2)
		})
	}
}

func TestAcquireSkipsFullWorkers(t *testing.T) {
	r := newTestRouter(t,
		testWorker{id: "w-a", state: api.WorkerReady, slots: 1, busy: 1},
		testWorker{id: "w-b", state: api.WorkerReady, slots: 4, busy: 2},
	)

	l := mustAcquire(t, r)
	defer l.release()

	assert.Equal(t, l.workerID, "w-b", "the least busy worker is full; another has room")
}

func TestAcquireExcept(t *testing.T) {
	tests := []struct {
		name       string
		workers    []testWorker
		want       string // the lease's worker; "" means an error at once
		wantStatus int
	}{
		{
			name: "another ready worker",
			workers: []testWorker{
				{id: "w-a", state: api.WorkerReady, slots: 2},
				{id: "w-b", state: api.WorkerReady, slots: 2, busy: 1},
			},
			want: "w-b",
		},
		{
			name:       "the failed worker was the only one",
			workers:    []testWorker{{id: "w-a", state: api.WorkerReady, slots: 2}},
			wantStatus: 404,
		},
		{
			name: "the others are not ready",
			workers: []testWorker{
				{id: "w-a", state: api.WorkerReady, slots: 2},
				{id: "w-b", state: api.WorkerLoading, slots: 2},
			},
			wantStatus: 503,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, tc.workers...)

			l, err := r.acquireExcept(context.Background(), testModel, "w-a")

			if tc.want != "" {
				assert.NilError(t, err)
				assert.Equal(t, l.workerID, tc.want)
				l.release()
				return
			}
			assert.Assert(t, l == nil)
			assert.Equal(t, apiError(t, err).Status, tc.wantStatus)
			assert.Equal(t, waiting(r, testModel), 0)
			assert.Equal(t, r.busy("w-a"), 0)
		})
	}
}
