package queen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// Restarts: how often the queen compares what the user wants with what
// runs, and how long it waits between restarts of one worker.
const (
	reconcileInterval = time.Second
	backoffBase       = time.Second
	backoffCap        = 60 * time.Second
	// backoffJitter is the largest share of a backoff taken off at random,
	// so workers that died together do not all come back at once.
	backoffJitter = 0.2
	// healthyPeriod is how long a restarted worker stays ready before its
	// next restart waits the shortest backoff again.
	healthyPeriod = 60 * time.Second
	// restartStopTimeout bounds stopping what is left of the old process.
	restartStopTimeout = 5 * time.Second
)

// backoff is the wait before the next restart of a worker restarted streak
// times in a row: backoffBase doubled per restart, capped at backoffCap,
// less up to backoffJitter of it; r is a random number in [0, 1).
func backoff(streak int, r float64) time.Duration {
	d := backoffCap
	if streak < 16 {
		if b := backoffBase << streak; b < backoffCap {
			d = b
		}
	}
	return d - time.Duration(float64(d)*backoffJitter*r)
}

// restartReason says why wk is to be started again, or "" when it is not:
// the user wants it running, its policy allows it, and its process ended.
// A worker that never got ready on its first start is left alone: the
// spawn already told the user why, and starting it again would only fail
// the same way.
func restartReason(wk registry.Worker) string {
	if wk.Desired != registry.DesiredRunning || wk.Restart == api.RestartNever {
		return ""
	}
	if wk.Restarts == 0 && wk.ReadyAt.IsZero() {
		return ""
	}
	switch wk.State {
	case api.WorkerLost:
		return "lost: " + orText(wk.Error, "no heartbeat before the deadline")
	case api.WorkerFailed:
		return "failed: " + orText(wk.Error, "no reason given")
	case api.WorkerStopped:
		if wk.Restart == api.RestartAlways {
			return "exited"
		}
	}
	return ""
}

func orText(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// runReconcile runs a reconcile pass every interval of the server's clock
// until ctx ends, then waits for the restarts still running: they end
// early, as ctx is theirs too.
func (s *Server) runReconcile(ctx context.Context, interval time.Duration) {
	newRestarter(s).run(ctx, interval)
}

// every waits interval on the server's clock (tests drive it with a fake
// clock), then calls fn, again and again until ctx ends. A pass that runs
// long delays the next one rather than overlapping it.
func (s *Server) every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	tick := make(chan struct{}, 1)
	for {
		t := s.clock.AfterFunc(interval, func() {
			select {
			case tick <- struct{}{}:
			default:
			}
		})
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-tick:
		}
		fn(ctx)
	}
}

// reconcile runs one pass and waits for the restarts it started, so that
// what it did can be read back as soon as it returns.
func (s *Server) reconcile(ctx context.Context) {
	r := newRestarter(s)
	r.pass(ctx)
	r.wait()
}

// restartHives is the most hives that restart workers at once.
const restartHives = 8

// restarter runs reconcile passes and the restarts they find due. The
// restarts on one hive run one after another, so that its node never loads
// several models at once; up to restartHives hives restart at a time. A
// pass does not wait for them: while a hive's restarts run (a spawn over
// SSH can take the hive's whole start timeout), the hive is busy, and the
// next passes leave its due restarts for later instead of waiting.
//
// Shortcomings: each pass reads every worker ever recorded, stopped ones
// included; and a deployment's spawns (reconcileDeployments) can run on a
// hive while the restarter restarts workers there.
type restarter struct {
	s *Server
	// restart restarts a worker whose restart a pass found due:
	// s.restartIfDue, or a fake in tests.
	restart func(ctx context.Context, id string) error
	slots   chan struct{} // one per hive restarting; restartHives in all
	wg      sync.WaitGroup

	mu      sync.Mutex
	hives   map[string]bool // busy: restarts run or wait for a slot
	workers map[string]bool // the workers those restarts are for
}

func newRestarter(s *Server) *restarter {
	return &restarter{s: s, restart: s.restartIfDue, slots: make(chan struct{}, restartHives),
		hives: make(map[string]bool), workers: make(map[string]bool)}
}

// run runs a pass every interval until ctx ends, then waits for the
// restarts still running.
func (r *restarter) run(ctx context.Context, interval time.Duration) {
	defer r.wait()
	r.s.every(ctx, interval, r.pass)
}

// pass brings every worker the user wants running towards running: it
// forgets the restart streak of a worker that stayed healthy, schedules a
// restart, with backoff, for one whose process ended, and starts, per
// hive, the restarts that are due. Then it reconciles deployments.
func (r *restarter) pass(ctx context.Context) {
	workers, err := r.s.store.Workers(ctx, true)
	if err != nil {
		r.s.log.Error("reconcile: list workers", "error", err)
		return
	}

	due := make(map[string][]string) // hive: ids of workers to restart
	var hives []string
	for _, wk := range workers {
		if ctx.Err() != nil {
			return
		}
		if r.inFlight(wk.ID) {
			continue // its restart is the running one's to do
		}
		restart, err := r.s.reconcileWorker(ctx, wk)
		if err != nil {
			r.s.log.Error("reconcile worker", "worker_id", wk.ID, "error", err)
		}
		if !restart || r.busy(wk.Hive) {
			continue
		}
		if due[wk.Hive] == nil {
			hives = append(hives, wk.Hive)
		}
		due[wk.Hive] = append(due[wk.Hive], wk.ID)
	}
	for _, hive := range hives {
		r.start(ctx, hive, due[hive])
	}

	r.s.reconcileDeployments(ctx) // deploy.go
}

func (r *restarter) inFlight(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers[id]
}

func (r *restarter) busy(hive string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hives[hive]
}

// start restarts the workers ids on hive, one after another, in a
// goroutine that holds hive busy until it is done.
func (r *restarter) start(ctx context.Context, hive string, ids []string) {
	r.mu.Lock()
	r.hives[hive] = true
	for _, id := range ids {
		r.workers[id] = true
	}
	r.mu.Unlock()

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.release(hive, ids)
		select {
		case r.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-r.slots }()
		for _, id := range ids {
			if ctx.Err() != nil {
				return
			}
			if err := r.restart(ctx, id); err != nil {
				r.s.log.Error("reconcile worker", "worker_id", id, "hive", hive, "error", err)
			}
		}
	}()
}

// release marks hive, and the workers ids it restarted, no longer busy.
func (r *restarter) release(hive string, ids []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.hives, hive)
	for _, id := range ids {
		delete(r.workers, id)
	}
}

// wait waits for every restart started to end.
func (r *restarter) wait() { r.wg.Wait() }

// reconcileWorker does a pass's work for one worker, and reports whether
// its restart is due.
func (s *Server) reconcileWorker(ctx context.Context, wk registry.Worker) (bool, error) {
	now := s.clock.Now()
	if wk.State == api.WorkerReady && wk.RestartStreak > 0 && !wk.ReadyAt.IsZero() &&
		now.Sub(wk.ReadyAt) >= healthyPeriod {
		s.log.Info("worker healthy again", "worker_id", wk.ID, "restarts", wk.Restarts)
		return false, s.store.ResetRestartStreak(ctx, wk.ID)
	}

	reason := restartReason(wk)
	if reason == "" || !wk.NextRestart.IsZero() {
		return restartDue(wk, now) != "", nil
	}
	wait := backoff(wk.RestartStreak, s.jitter())
	if err := s.store.SetNextRestart(ctx, wk.ID, now.Add(wait), reason); err != nil {
		return false, err
	}
	s.log.Warn("worker to be restarted", "worker_id", wk.ID, "reason", reason,
		"in", wait, "policy", wk.Restart)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, wk.State,
		fmt.Sprintf("%s; restarting in %s (restart %s)", reason,
			wait.Round(time.Millisecond), wk.Restart))
	return false, nil
}

// restartDue says why wk is to be started again now, or "" when it is not
// (yet): its restart was scheduled, and the time has come.
func restartDue(wk registry.Worker, now time.Time) string {
	if wk.NextRestart.IsZero() || now.Before(wk.NextRestart) {
		return ""
	}
	return restartReason(wk)
}

// restartIfDue restarts worker id if its restart is still due. It reads the
// worker again: the pass that found it due may be a while ago, when the
// restarts before it on the same hive were slow.
func (s *Server) restartIfDue(ctx context.Context, id string) error {
	wk, err := s.store.Worker(ctx, id)
	if errors.Is(err, registry.ErrNotFound) {
		return nil // forgotten meanwhile
	}
	if err != nil {
		return err
	}
	reason := restartDue(wk, s.clock.Now())
	if reason == "" {
		return nil
	}
	return s.restart(ctx, wk, reason)
}

// restart stops what is left of wk's process and starts it again under the
// same id with a new token. When the old process cannot be stopped, the
// next try waits one more backoff step.
func (s *Server) restart(ctx context.Context, wk registry.Worker, reason string) error {
	hive, err := s.store.Hive(ctx, wk.Hive)
	if err != nil {
		return err
	}
	if wait := hiveWait(hive); wait != "" {
		return s.waitForHive(ctx, wk, wait)
	}
	s.forget(wk.ID)

	var res api.StopResult
	err = s.hives.run(ctx, hive, []string{"worker", "stop", wk.ID,
		"--timeout", restartStopTimeout.String()}, "", &res)
	if err != nil && httpapi.AsError(err).Status != http.StatusNotFound {
		next := s.clock.Now().Add(backoff(wk.RestartStreak+1, s.jitter()))
		s.log.Warn("restart: stop old process", "worker_id", wk.ID, "error", err)
		s.markUnreachable(ctx, hive, err)
		return errors.Join(err, s.store.SetNextRestart(ctx, wk.ID, next, ""))
	}

	wk.Token = newToken()
	err = s.store.RecordRestart(ctx, wk.ID, wk.Token, reason)
	// Forget again: a beat of the old process while the hive stopped it put
	// back its route (old URL and token) and deadline, which the new one
	// would inherit; and the old token no longer holds.
	s.forget(wk.ID)
	if errors.Is(err, registry.ErrNotFound) {
		return nil // stopped by the user meanwhile
	}
	if err != nil {
		return err
	}
	n := wk.Restarts + 1
	s.log.Info("restarting worker", "worker_id", wk.ID, "hive", wk.Hive, "restarts", n,
		"reason", reason)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, api.WorkerStarting,
		fmt.Sprintf("restart %d: %s", n, reason))
	// A `rbee worker stop` that lands while the hive starts the process
	// leaves it running until its first heartbeat: the queen answers 410,
	// and the worker shuts itself down.
	_, err = s.startOnHive(ctx, hive, wk)
	return err
}

// waitForHive leaves wk's restart due, to run at the first reconcile pass
// after the hive probe finds its hive back, and says why it waits, once.
func (s *Server) waitForHive(ctx context.Context, wk registry.Worker, why string) error {
	if wk.RestartReason == why {
		return nil
	}
	if err := s.store.SetNextRestart(ctx, wk.ID, wk.NextRestart, why); err != nil {
		return err
	}
	s.log.Warn("restart waits for hive", "worker_id", wk.ID, "hive", wk.Hive, "reason", why)
	s.workerEvent(wk.ID, wk.Hive, wk.Model, wk.State, why)
	return nil
}
