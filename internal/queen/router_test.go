package queen

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

const testModel = "tiny"

// testWorker is one worker registered with a router under test.
type testWorker struct {
	id    string
	model string // testModel when empty
	state api.WorkerState
	slots int
	busy  int // slots already claimed before the test acquires
}

// newTestRouter returns a router holding workers. Every slot claimed
// through the router must be released by the end of the test.
func newTestRouter(t *testing.T, workers ...testWorker) *router {
	t.Helper()
	r := newRouter()
	for _, w := range workers {
		model := w.model
		if model == "" {
			model = testModel
		}
		r.update(w.id, model, "http://"+w.id, "token-"+w.id, w.state, w.slots)
		r.routes[w.id].busy = w.busy
	}
	return r
}

// apiError asserts that err is an *httpapi.Error and returns it.
func apiError(t *testing.T, err error) *httpapi.Error {
	t.Helper()
	var apiErr *httpapi.Error
	assert.Assert(t, errors.As(err, &apiErr), "got %T: %v", err, err)
	return apiErr
}

// mustAcquire claims a slot that must be free right now.
func mustAcquire(t *testing.T, r *router) *lease {
	t.Helper()
	l, err := r.acquire(context.Background(), testModel)
	assert.NilError(t, err)
	return l
}

// waiting is how many requests for model sit in the router's queue.
func waiting(r *router, model string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiting[model]
}

// waitQueued waits until n requests for testModel are queued. A queued
// request has already taken the router's current change channel, so
// anything that broadcasts after this returns is sure to wake it.
func waitQueued(t *testing.T, r *router, n int) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if got := waiting(r, testModel); got != n {
			return poll.Continue("%d requests queued, want %d", got, n)
		}
		return poll.Success()
	}, poll.WithDelay(time.Millisecond), poll.WithTimeout(10*time.Second))
}

type acquireResult struct {
	lease *lease
	err   error
}

// acquireAsync starts an acquire whose result arrives on the returned
// channel; the test waits for it, so the goroutine never outlives it.
func acquireAsync(ctx context.Context, r *router) <-chan acquireResult {
	done := make(chan acquireResult, 1)
	go func() {
		l, err := r.acquire(ctx, testModel)
		done <- acquireResult{lease: l, err: err}
	}()
	return done
}

// receive returns the result of an acquire that must end soon.
func receive(t *testing.T, done <-chan acquireResult) acquireResult {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("acquire did not return")
		return acquireResult{}
	}
}

// assertPending asserts that a queued acquire has not returned. It is
// exact, not a guess: a queued acquire only returns once something
// broadcasts, its context ends, or its queue wait passes.
func assertPending(t *testing.T, done <-chan acquireResult) {
	t.Helper()
	select {
	case res := <-done:
		t.Fatalf("acquire returned early: lease %v, error %v", res.lease, res.err)
	default:
	}
}

func TestAcquireNoReadyWorker(t *testing.T) {
	tests := []struct {
		name         string
		workers      []testWorker
		wantStatus   int
		wantCode     string
		wantContains []string
	}{
		{
			name:         "no workers at all",
			wantStatus:   http.StatusNotFound,
			wantCode:     "model_not_found",
			wantContains: []string{`"tiny"`, "rbee worker spawn -m tiny"},
		},
		{
			name:       "only workers of another model",
			workers:    []testWorker{{id: "w-1", model: "big", state: api.WorkerReady, slots: 4}},
			wantStatus: http.StatusNotFound,
			wantCode:   "model_not_found",
		},
		{
			name:         "worker lost",
			workers:      []testWorker{{id: "w-1", state: api.WorkerLost, slots: 4}},
			wantStatus:   http.StatusServiceUnavailable,
			wantCode:     "unavailable",
			wantContains: []string{"w-1 is lost"},
		},
		{
			name:         "worker still loading",
			workers:      []testWorker{{id: "w-1", state: api.WorkerLoading, slots: 4}},
			wantStatus:   http.StatusServiceUnavailable,
			wantCode:     "unavailable",
			wantContains: []string{"w-1 is loading"},
		},
		{
			name: "every state is named",
			workers: []testWorker{
				{id: "w-2", state: api.WorkerDraining, slots: 4},
				{id: "w-1", state: api.WorkerFailed, slots: 4},
				{id: "w-3", state: api.WorkerStopped, slots: 4},
				{id: "w-4", model: "big", state: api.WorkerReady, slots: 4},
			},
			wantStatus:   http.StatusServiceUnavailable,
			wantCode:     "unavailable",
			wantContains: []string{"[w-1 is failed w-2 is draining w-3 is stopped]"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, tc.workers...)

			l, err := r.acquire(context.Background(), testModel)

			assert.Assert(t, l == nil)
			apiErr := apiError(t, err)
			assert.Equal(t, apiErr.Status, tc.wantStatus)
			assert.Equal(t, apiErr.Code, tc.wantCode)
			if tc.wantStatus == http.StatusServiceUnavailable {
				assert.Assert(t, apiErr.RetryAfter > 0)
			}
			for _, s := range tc.wantContains {
				assert.Assert(t, is.Contains(apiErr.Message, s))
			}
			assert.Equal(t, waiting(r, testModel), 0)
		})
	}
}

func TestAcquirePicksLeastBusy(t *testing.T) {
	tests := []struct {
		name    string
		workers []testWorker
		want    string
	}{
		{
			name:    "only worker",
			workers: []testWorker{{id: "w-1", state: api.WorkerReady, slots: 1}},
			want:    "w-1",
		},
		{
			name: "ties break by id",
			workers: []testWorker{
				{id: "w-b", state: api.WorkerReady, slots: 4},
				{id: "w-c", state: api.WorkerReady, slots: 4},
				{id: "w-a", state: api.WorkerReady, slots: 4},
			},
			want: "w-a",
		},
		{
			name: "least busy wins over id",
			workers: []testWorker{
				{id: "w-a", state: api.WorkerReady, slots: 4, busy: 2},
				{id: "w-b", state: api.WorkerReady, slots: 4, busy: 1},
				{id: "w-c", state: api.WorkerReady, slots: 4, busy: 3},
			},
			want: "w-b",
		},
		{
			name: "busy ties break by id",
			workers: []testWorker{
				{id: "w-c", state: api.WorkerReady, slots: 4, busy: 1},
				{id: "w-b", state: api.WorkerReady, slots: 4, busy: 1},
				{id: "w-a", state: api.WorkerReady, slots: 4, busy: 2},
			},
			want: "w-b",
		},
		{
			name: "a full worker is passed over for one with a free slot",
			workers: []testWorker{
				{id: "w-a", state: api.WorkerReady, slots: 1, busy: 1},
				{id: "w-b", state: api.WorkerReady, slots: 4, busy: 2},
			},
			want: "w-b",
		},
		{
			name: "workers that are not ready are skipped",
			workers: []testWorker{
				{id: "w-a", state: api.WorkerLost, slots: 4},
				{id: "w-b", state: api.WorkerDraining, slots: 4},
				{id: "w-c", state: api.WorkerReady, slots: 4, busy: 3},
			},
			want: "w-c",
		},
		{
			name: "workers of other models are skipped",
			workers: []testWorker{
				{id: "w-a", model: "big", state: api.WorkerReady, slots: 4},
				{id: "w-b", state: api.WorkerReady, slots: 4, busy: 2},
			},
			want: "w-b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, tc.workers...)
			before := r.busy(tc.want)

			l := mustAcquire(t, r)

			assert.Equal(t, l.workerID, tc.want)
			assert.Equal(t, l.url, "http://"+tc.want)
			assert.Equal(t, l.token, "token-"+tc.want)
			assert.Equal(t, r.busy(tc.want), before+1)

			l.release()
			assert.Equal(t, r.busy(tc.want), before)
		})
	}
}

func TestAcquireSpreadsLoad(t *testing.T) {
	r := newTestRouter(t,
		testWorker{id: "w-1", state: api.WorkerReady, slots: 2},
		testWorker{id: "w-2", state: api.WorkerReady, slots: 2},
	)

	var got []string
	for range 4 {
		l := mustAcquire(t, r)
		t.Cleanup(l.release)
		got = append(got, l.workerID)
	}

	assert.DeepEqual(t, got, []string{"w-1", "w-2", "w-1", "w-2"})
}

func TestAcquireNeverOverclaims(t *testing.T) {
	const requests = 64
	workers := []testWorker{
		{id: "w-1", state: api.WorkerReady, slots: 3},
		{id: "w-2", state: api.WorkerReady, slots: 3},
	}
	totalSlots := 0
	slots := map[string]int32{}
	holding := map[string]*atomic.Int32{}
	for _, w := range workers {
		totalSlots += w.slots
		slots[w.id] = int32(w.slots)
		holding[w.id] = &atomic.Int32{}
	}
	r := newTestRouter(t, workers...)
	r.queueLimit = requests

	var inFlight, maxInFlight atomic.Int32
	var overWorker atomic.Bool
	errs := make(chan error, requests)
	var wg sync.WaitGroup
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := r.acquire(context.Background(), testModel)
			if err != nil {
				errs <- err
				return
			}
			n := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			if holding[l.workerID].Add(1) > slots[l.workerID] {
				overWorker.Store(true)
			}

			runtime.Gosched() // hold the slot a moment so requests overlap
			holding[l.workerID].Add(-1)
			inFlight.Add(-1)
			l.release()
		}()
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		assert.NilError(t, err)
	}
	t.Logf("at most %d of %d slots held at once", maxInFlight.Load(), totalSlots)
	assert.Assert(t, maxInFlight.Load() >= 1)
	assert.Assert(t, int(maxInFlight.Load()) <= totalSlots,
		"%d leases held at once, only %d slots", maxInFlight.Load(), totalSlots)
	assert.Assert(t, !overWorker.Load(), "a worker held more leases than it has slots")
	for _, w := range workers {
		assert.Equal(t, r.busy(w.id), 0)
	}
	assert.Equal(t, waiting(r, testModel), 0)
}

func TestAcquireWaitsForRelease(t *testing.T) {
	r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
	held := mustAcquire(t, r)

	done := acquireAsync(context.Background(), r)
	waitQueued(t, r, 1)
	assertPending(t, done)

	held.release()

	res := receive(t, done)
	assert.NilError(t, res.err)
	assert.Equal(t, res.lease.workerID, "w-1")
	assert.Equal(t, r.busy("w-1"), 1)
	assert.Equal(t, waiting(r, testModel), 0)
	res.lease.release()
	assert.Equal(t, r.busy("w-1"), 0)
}

func TestAcquireQueueFull(t *testing.T) {
	r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
	r.queueLimit = 1
	held := mustAcquire(t, r)
	defer held.release()
	ctx, cancel := context.WithCancel(context.Background())
	queued := acquireAsync(ctx, r)
	waitQueued(t, r, 1)

	l, err := r.acquire(context.Background(), testModel)

	assert.Assert(t, l == nil)
	apiErr := apiError(t, err)
	assert.Equal(t, apiErr.Status, http.StatusTooManyRequests)
	assert.Equal(t, apiErr.Code, "queue_full")
	assert.Assert(t, apiErr.RetryAfter > 0)
	assert.Equal(t, waiting(r, testModel), 1)

	cancel()
	assert.ErrorIs(t, receive(t, queued).err, context.Canceled)
	assert.Equal(t, waiting(r, testModel), 0)
}

func TestAcquireQueueIsPerModel(t *testing.T) {
	r := newTestRouter(t,
		testWorker{id: "w-1", state: api.WorkerReady, slots: 1},
		testWorker{id: "w-2", model: "big", state: api.WorkerReady, slots: 1},
	)
	r.queueLimit = 1
	held := mustAcquire(t, r)
	defer held.release()
	ctx, cancel := context.WithCancel(context.Background())
	queued := acquireAsync(ctx, r)
	waitQueued(t, r, 1)

	l, err := r.acquire(context.Background(), "big")

	assert.NilError(t, err)
	assert.Equal(t, l.workerID, "w-2")
	l.release()
	cancel()
	assert.ErrorIs(t, receive(t, queued).err, context.Canceled)
}

func TestAcquireQueueTimeout(t *testing.T) {
	r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
	r.queueWait = 50 * time.Millisecond
	held := mustAcquire(t, r)
	defer held.release()

	start := time.Now()
	l, err := r.acquire(context.Background(), testModel)

	assert.Assert(t, l == nil)
	assert.Assert(t, time.Since(start) >= r.queueWait)
	apiErr := apiError(t, err)
	assert.Equal(t, apiErr.Status, http.StatusGatewayTimeout)
	assert.Equal(t, apiErr.Code, "queue_timeout")
	assert.Assert(t, apiErr.RetryAfter > 0)
	assert.Equal(t, waiting(r, testModel), 0)
	assert.Equal(t, r.busy("w-1"), 1)
}

func TestAcquireContextEnds(t *testing.T) {
	tests := []struct {
		name string
		// ctx returns the request's context and, when the test should
		// end it, a func that does so once the request is queued.
		ctx     func(t *testing.T) (ctx context.Context, end func())
		wantErr error
	}{
		{
			name: "cancelled while waiting",
			ctx: func(t *testing.T) (context.Context, func()) {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				return ctx, cancel
			},
			wantErr: context.Canceled,
		},
		{
			name: "deadline passes while waiting",
			ctx: func(t *testing.T) (context.Context, func()) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				t.Cleanup(cancel)
				return ctx, nil
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
			held := mustAcquire(t, r)
			defer held.release()
			ctx, end := tc.ctx(t)

			done := acquireAsync(ctx, r)
			if end != nil {
				waitQueued(t, r, 1)
				end()
			}

			res := receive(t, done)
			assert.Assert(t, res.lease == nil)
			assert.ErrorIs(t, res.err, tc.wantErr)
			assert.Equal(t, res.err, ctx.Err())
			assert.Equal(t, waiting(r, testModel), 0)
			assert.Equal(t, r.busy("w-1"), 1)
		})
	}
}

func TestAcquireCancelledBeforeCall(t *testing.T) {
	r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
	held := mustAcquire(t, r)
	defer held.release()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	l, err := r.acquire(ctx, testModel)

	assert.Assert(t, l == nil)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, waiting(r, testModel), 0)
}

func TestAcquireWakesOnWorkerChange(t *testing.T) {
	tests := []struct {
		name       string
		change     func(r *router)
		wantWorker string // the lease the waiter gets; "" means an error
		wantStatus int
		wantInMsg  string
	}{
		{
			name:       "worker turns lost",
			change:     func(r *router) { r.setState("w-1", api.WorkerLost) },
			wantStatus: http.StatusServiceUnavailable,
			wantInMsg:  "w-1 is lost",
		},
		{
			name: "worker reports stopped",
			change: func(r *router) {
				r.update("w-1", testModel, "", "token-w-1", api.WorkerStopped, 1)
			},
			wantStatus: http.StatusServiceUnavailable,
			wantInMsg:  "w-1 is stopped",
		},
		{
			name:       "worker removed",
			change:     func(r *router) { r.remove("w-1") },
			wantStatus: http.StatusNotFound,
			wantInMsg:  "no worker serves model",
		},
		{
			name: "another worker turns ready",
			change: func(r *router) {
				r.update("w-2", testModel, "http://w-2", "token-w-2", api.WorkerReady, 1)
			},
			wantWorker: "w-2",
		},
		{
			name: "worker gains a slot",
			change: func(r *router) {
				r.update("w-1", testModel, "", "token-w-1", api.WorkerReady, 2)
			},
			wantWorker: "w-1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 1})
			held := mustAcquire(t, r)
			defer held.release()
			done := acquireAsync(context.Background(), r)
			waitQueued(t, r, 1)
			assertPending(t, done)

			tc.change(r)

			res := receive(t, done)
			assert.Equal(t, waiting(r, testModel), 0)
			if tc.wantWorker != "" {
				assert.NilError(t, res.err)
				assert.Equal(t, res.lease.workerID, tc.wantWorker)
				res.lease.release()
				return
			}
			assert.Assert(t, res.lease == nil)
			apiErr := apiError(t, res.err)
			assert.Equal(t, apiErr.Status, tc.wantStatus)
			assert.Assert(t, is.Contains(apiErr.Message, tc.wantInMsg))
			if tc.wantStatus == http.StatusServiceUnavailable {
				assert.Assert(t, apiErr.RetryAfter > 0)
			}
		})
	}
}

func TestLeaseReleaseIsIdempotent(t *testing.T) {
	r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 2})
	first := mustAcquire(t, r)
	second := mustAcquire(t, r)
	assert.Equal(t, r.busy("w-1"), 2)

	first.release()
	first.release()
	assert.Equal(t, r.busy("w-1"), 1)

	second.release()
	assert.Equal(t, r.busy("w-1"), 0)
}

func TestUpdateKeepsClaims(t *testing.T) {
	tests := []struct {
		name    string
		url     string
		wantURL string
	}{
		{name: "empty url keeps the known one", url: "", wantURL: "http://w-1"},
		{name: "new url replaces the old one", url: "http://w-1:9000", wantURL: "http://w-1:9000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, testWorker{id: "w-1", state: api.WorkerReady, slots: 2})
			l := mustAcquire(t, r)
			defer l.release()

			r.update("w-1", testModel, tc.url, "token-new", api.WorkerReady, 2)

			assert.Equal(t, r.busy("w-1"), 1)
			next := mustAcquire(t, r)
			defer next.release()
			assert.Equal(t, next.url, tc.wantURL)
			assert.Equal(t, next.token, "token-new")
			assert.Equal(t, r.busy("w-1"), 2)
		})
	}
}

func TestSetStateOfUnknownWorker(t *testing.T) {
	r := newTestRouter(t)

	r.setState("w-1", api.WorkerReady)

	assert.Equal(t, len(r.routes), 0)
}

func TestRemove(t *testing.T) {
	r := newTestRouter(t,
		testWorker{id: "w-1", state: api.WorkerReady, slots: 1},
		testWorker{id: "w-2", state: api.WorkerReady, slots: 1, busy: 1},
	)
	held := mustAcquire(t, r)
	assert.Equal(t, held.workerID, "w-1")

	r.remove("w-1")

	assert.Equal(t, r.busy("w-1"), 0)
	_, ok := r.routes["w-1"]
	assert.Assert(t, !ok)
	// A lease on a removed worker can still be given back harmlessly.
	held.release()
	assert.Equal(t, r.busy("w-1"), 0)
	assert.Equal(t, r.busy("w-2"), 1)

	r.remove("w-2")
	_, err := r.acquire(context.Background(), testModel)
	apiErr := apiError(t, err)
	assert.Equal(t, apiErr.Status, http.StatusNotFound)
	assert.Equal(t, apiErr.Code, "model_not_found")

	r.remove("w-unknown")
	assert.Equal(t, len(r.routes), 0)
}

func TestSuspectWorkerIsTriedLast(t *testing.T) {
	r := newTestRouter(t,
		testWorker{id: "w-a", state: api.WorkerReady, slots: 2},
		testWorker{id: "w-b", state: api.WorkerReady, slots: 2, busy: 1})
	r.suspect("w-a")

	l := mustAcquire(t, r)
	assert.Check(t, is.Equal(l.workerID, "w-b"), "the reachable worker, though busier")
	l2 := mustAcquire(t, r)
	assert.Check(t, is.Equal(l2.workerID, "w-a"), "no one else has a free slot")
	l.release()
	l2.release()

	r.update("w-a", testModel, "", "token-w-a", api.WorkerReady, 2) // it beat again
	l = mustAcquire(t, r)
	assert.Check(t, is.Equal(l.workerID, "w-a"), "a heartbeat clears the suspicion")
	l.release()
}
