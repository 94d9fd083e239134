package queen

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// Routing limits. A request that finds every slot of its model busy waits
// in a bounded queue for a bounded time; it never hangs.
const (
	defaultQueueLimit = 64
	defaultQueueWait  = 30 * time.Second
)

// route is what the router knows of one worker.
type route struct {
	id         string
	model      string
	url        string
	token      string
	state      api.WorkerState
	slotsTotal int
	busy       int // slots claimed by requests in flight through this queen
	// suspect is set when the queen could not connect to the worker, and
	// cleared by its next heartbeat: until then it gets requests only when
	// no other worker of its model can take them. A dead worker is lost
	// only at its heartbeat deadline, seconds later; without this every
	// request until then would try it first (and a dead host costs a
	// whole connect timeout).
	suspect bool
}

// router picks a worker with a free slot for each request, and keeps
// track of claimed slots so that two requests never race for the same one.
type router struct {
	mu      sync.Mutex
	routes  map[string]*route
	waiting map[string]int // per model, requests in the queue
	changed chan struct{}  // closed and replaced whenever a slot frees or a worker turns ready

	queueLimit int
	queueWait  time.Duration
}

func newRouter() *router {
	return &router{routes: map[string]*route{}, waiting: map[string]int{},
		changed: make(chan struct{}), queueLimit: defaultQueueLimit, queueWait: defaultQueueWait}
}

// update records a worker's latest state.
func (r *router) update(id, model, url, token string, state api.WorkerState, slots int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.routes[id]
	if !ok {
		rt = &route{id: id}
		r.routes[id] = rt
	}
	rt.model, rt.token, rt.state, rt.slotsTotal = model, token, state, slots
	rt.suspect = false // it just beat: it is alive
	if url != "" {
		rt.url = url
	}
	r.broadcast()
}

// add records a worker the queen has just started, as loading. A worker
// can beat before its spawn returns; then the router already knows it, and
// its state (ready, say) is newer than "loading" and is kept.
func (r *router) add(id, model, url, token string, slots int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.routes[id]; ok {
		if rt.url == "" {
			rt.url = url
		}
		return
	}
	r.routes[id] = &route{id: id, model: model, url: url, token: token,
		state: api.WorkerLoading, slotsTotal: slots}
}

// setState changes only a known worker's state.
func (r *router) setState(id string, state api.WorkerState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.routes[id]; ok {
		rt.state = state
		r.broadcast()
	}
}

// suspect marks worker id as one the queen could not reach; see
// route.suspect.
func (r *router) suspect(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.routes[id]; ok {
		rt.suspect = true
	}
}

func (r *router) remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.routes, id)
	r.broadcast()
}

// busy is how many slots of worker id are claimed.
func (r *router) busy(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.routes[id]; ok {
		return rt.busy
	}
	return 0
}

// routeView is a copy of one route, for readers outside the router.
type routeView struct {
	id, model  string
	state      api.WorkerState
	busy       int
	slotsTotal int
}

// snapshot copies every route, sorted by id, and the queue depth of each
// model.
func (r *router) snapshot() ([]routeView, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	routes := make([]routeView, 0, len(r.routes))
	for _, rt := range r.routes {
		routes = append(routes, routeView{id: rt.id, model: rt.model, state: rt.state,
			busy: rt.busy, slotsTotal: rt.slotsTotal})
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].id < routes[j].id })
	waiting := make(map[string]int, len(r.waiting))
	for model, n := range r.waiting {
		waiting[model] = n
	}
	return routes, waiting
}

// broadcast wakes every waiter to look again (a slot freed, a worker
// changed state); callers hold mu.
func (r *router) broadcast() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// lease is a claimed slot on one worker; release gives it back.
type lease struct {
	workerID string
	url      string
	token    string
	release  func()
	once     sync.Once
}

// acquire claims a slot of a ready worker serving model, waiting in the
// model's queue when all are busy.
func (r *router) acquire(ctx context.Context, model string) (*lease, error) {
	return r.acquireExcept(ctx, model, "")
}

// acquireExcept is acquire that never picks worker exclude (one that just
// failed): with no other ready worker of the model, it says so at once.
func (r *router) acquireExcept(ctx context.Context, model, exclude string) (*lease, error) {
	r.mu.Lock()
	l, err := r.tryClaim(model, exclude)
	if l != nil || err != nil {
		r.mu.Unlock()
		return l, err
	}
	r.mu.Unlock()
	return r.wait(ctx, model, exclude)
}

// wait queues a request until a slot of model frees up, bounded in count
// and time.
func (r *router) wait(ctx context.Context, model, exclude string) (*lease, error) {
	deadline := time.NewTimer(r.queueWait)
	defer deadline.Stop()
	queued := false
	defer func() {
		if queued {
			r.mu.Lock()
			r.waiting[model]--
			r.mu.Unlock()
		}
	}()
	for {
		r.mu.Lock()
		l, err := r.tryClaim(model, exclude)
		if l != nil || err != nil {
			r.mu.Unlock()
			return l, err
		}
		if !queued {
			if r.waiting[model] >= r.queueLimit {
				r.mu.Unlock()
				return nil, &httpapi.Error{Status: http.StatusTooManyRequests,
					Type: "rate_limit_error", Code: "queue_full", RetryAfter: time.Second,
					Message: fmt.Sprintf("every slot of model %q is busy and %d requests "+
						"already wait; retry later", model, r.queueLimit)}
			}
			r.waiting[model]++
			queued = true
		}
		changed := r.changed
		r.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, &httpapi.Error{Status: http.StatusGatewayTimeout, Type: "server_error",
				Code: "queue_timeout", RetryAfter: time.Second, Message: fmt.Sprintf(
					"no slot of model %q freed up within %s", model, r.queueWait)}
		}
	}
}

// tryClaim claims a slot on the ready worker of model with a free slot and
// the fewest busy ones (ties go to the lowest id; a suspect worker only
// when no other has a free slot), or says why none can ever serve it. (nil, nil) means: all busy, wait. It runs on every
// request, so it allocates nothing until it has found a worker. Callers
// hold mu.
func (r *router) tryClaim(model, exclude string) (*lease, error) {
	var best *route
	known, ready := false, false
	for _, rt := range r.routes {
		if rt.model != model || rt.id == exclude {
			continue
		}
		known = true
		if rt.state != api.WorkerReady {
			continue
		}
		ready = true
		if rt.busy >= rt.slotsTotal {
			continue
		}
		if best == nil || better(rt, best) {
			best = rt
		}
	}
	switch {
	case !known:
		return nil, noWorkerError(model, nil)
	case !ready:
		return nil, noWorkerError(model, r.statesOf(model, exclude))
	case best == nil:
		return nil, nil
	}
	best.busy++
	l := &lease{workerID: best.id, url: best.url, token: best.token}
	l.release = func() {
		l.once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			best.busy--
			r.broadcast()
		})
	}
	return l, nil
}

// better reports whether route a should take a request before route b:
// not suspect first, then the fewest busy slots, then the lowest id.
func better(a, b *route) bool {
	if a.suspect != b.suspect {
		return !a.suspect
	}
	if a.busy != b.busy {
		return a.busy < b.busy
	}
	return a.id < b.id
}

// statesOf names the state of every worker of model, for an error that
// says why none is ready. Callers hold mu.
func (r *router) statesOf(model, exclude string) []string {
	var states []string
	for _, rt := range r.routes {
		if rt.model == model && rt.id != exclude {
			states = append(states, fmt.Sprintf("%s is %s", rt.id, rt.state))
		}
	}
	return states
}

func noWorkerError(model string, states []string) error {
	if len(states) == 0 {
		return httpapi.NotFound("model_not_found",
			"no worker serves model %q: start one with `rbee worker spawn -m %s`", model, model)
	}
	sort.Strings(states)
	return httpapi.Unavailable(2*time.Second, "no ready worker for model %q (%v)", model, states)
}
