package queen

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// handleHeartbeat records a worker's heartbeat and answers when to beat
// next. A beat in the same state as before touches neither SQLite nor
// anything slower than a map: the worker comes from s.hbIndex and the
// beat joins the next batch of s.hbWriter. A beat that changes the
// worker's state is written at once.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) error {
	var hb api.Heartbeat
	if err := httpapi.DecodeJSON(r, &hb); err != nil {
		return err
	}
	if hb.WorkerID == "" {
		return httpapi.BadRequest("worker_id", "worker_id is required")
	}
	if !reportableState(hb.State) {
		return httpapi.BadRequest("state", "state must be one of starting, loading, ready, "+
			"draining, failed or stopped, got %q", hb.State)
	}
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	reply, err := s.heartbeat(r.Context(), hb, token)
	if errors.Is(err, errBeatRaced) {
		// Restarted, drained or stopped between the check and the write:
		// check the beat again against what the worker is now.
		reply, err = s.heartbeat(r.Context(), hb, token)
	}
	if errors.Is(err, errBeatRaced) {
		err = httpapi.Unavailable(time.Second, "worker %q kept changing while its heartbeat "+
			"was recorded; it beats again by itself", hb.WorkerID)
	}
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, reply)
	return nil
}

// errBeatRaced says that a heartbeat's worker changed in the registry
// after the beat was checked, so the beat was not written.
var errBeatRaced = errors.New("worker changed while its heartbeat was recorded")

// heartbeat checks and records one heartbeat sent with token, and returns
// the reply: when to beat next, or nothing to a worker that ended.
func (s *Server) heartbeat(ctx context.Context, hb api.Heartbeat,
	token string) (api.HeartbeatReply, error) {
	wk, err := s.heartbeatAuth(ctx, hb.WorkerID, token)
	if err != nil {
		return api.HeartbeatReply{}, err
	}
	if err := checkBeatProtocol(hb, wk.hive); err != nil {
		return api.HeartbeatReply{}, err
	}
	if wk.state == api.WorkerStopped || wk.givenUp {
		return api.HeartbeatReply{}, errWorkerStopped(wk.id)
	}

	next, wk, err := s.trackBeat(ctx, wk, hb, token)
	if err != nil {
		return api.HeartbeatReply{}, err
	}
	if wk.state == api.WorkerDraining && hb.State == api.WorkerReady {
		// The queen is draining it: it stays unroutable though it is well.
		hb.State = api.WorkerDraining
	}
	if wk, err = s.recordBeat(ctx, wk, hb); err != nil {
		return api.HeartbeatReply{}, err
	}
	s.live.record(hb)
	switch hb.State {
	case api.WorkerStopped, api.WorkerFailed:
		s.forget(wk.id)
		return api.HeartbeatReply{}, nil
	}
	routed := s.hbIndex.commit(wk, func() {
		s.router.update(wk.id, wk.model, hb.URL, wk.token, hb.State, wk.slots)
	})
	if !routed {
		return api.HeartbeatReply{}, errBeatRaced
	}
	return api.HeartbeatReply{NextIntervalMS: next.Milliseconds()}, nil
}

// trackBeat moves the deadline of wk, a worker that beats on, and returns
// the interval to hand it and wk looked up again.
func (s *Server) trackBeat(ctx context.Context, wk hbWorker, hb api.Heartbeat,
	token string) (time.Duration, hbWorker, error) {
	if hb.State == api.WorkerStopped || hb.State == api.WorkerFailed {
		return 0, wk, nil // it beats no more
	}
	next := s.tracker.Beat(wk.id)
	// Beat waited for an expiry on its way, which recorded the worker
	// lost: look again, so that this beat brings it back.
	wk, err := s.heartbeatAuth(ctx, hb.WorkerID, token)
	if err == nil && wk.state == api.WorkerStopped {
		err = errWorkerStopped(wk.id)
	}
	return next, wk, err
}

// heartbeatAuth returns the worker that sends a heartbeat, after checking
// its token. A token that does not match the index is checked once more
// against the registry, in case the index missed a restart.
func (s *Server) heartbeatAuth(ctx context.Context, id, token string) (hbWorker, error) {
	wk, cached, err := s.hbWorker(ctx, id)
	if err != nil {
		return wk, err
	}
	if cached && !sameToken(token, wk.token) {
		// No drop: a wrong token must not refuse the commits of right ones.
		if wk, err = s.hbRead(ctx, id, wk.gen); err != nil {
			return wk, err
		}
	}
	if !sameToken(token, wk.token) {
		return wk, httpapi.Unauthorized("wrong token for worker %q", id)
	}
	return wk, nil
}

// checkBeatProtocol refuses a heartbeat in another protocol version, from
// a worker of hive.
func checkBeatProtocol(hb api.Heartbeat, hive string) error {
	if hb.ProtocolVersion == api.ProtocolVersion {
		return nil
	}
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: "protocol_mismatch", Message: fmt.Sprintf("worker speaks protocol %d, the "+
			"queen %d: run `rbee hive install %s` to give the hive the queen's version",
			hb.ProtocolVersion, api.ProtocolVersion, hive)}
}

func sameToken(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func errWorkerStopped(id string) error {
	return &httpapi.Error{Status: http.StatusGone, Type: "invalid_request_error",
		Code: "worker_stopped", Message: "worker " + id + " was stopped; it should exit"}
}

// reportableState reports whether a worker may say it is in state: any
// but lost, which only the queen decides.
func reportableState(state api.WorkerState) bool {
	switch state {
	case api.WorkerStarting, api.WorkerLoading, api.WorkerReady, api.WorkerDraining,
		api.WorkerFailed, api.WorkerStopped:
		return true
	}
	return false
}

// recordBeat writes a heartbeat to the registry: in the next batch when
// the worker stays in its state, at once (and announced) when it changes,
// or errBeatRaced when the worker is no longer what wk says. It returns
// wk as the heartbeat leaves it.
func (s *Server) recordBeat(ctx context.Context, wk hbWorker, hb api.Heartbeat) (hbWorker, error) {
	beat := registry.SteadyBeat{ID: wk.id, Token: wk.token, State: wk.state, URL: hb.URL,
		SlotsBusy: hb.SlotsBusy, Error: hb.Error, At: s.clock.Now().UTC()}
	if wk.state == hb.State {
		s.hbWriter.add(beat)
		s.log.Debug("heartbeat", "worker_id", wk.id, "state", hb.State)
		return wk, nil
	}
	var wrote bool
	err := s.hbWriter.writeNow(wk.id, func() (err error) {
		wrote, err = s.store.RecordStateBeat(ctx, beat, hb.State)
		return err
	})
	from := wk.state
	wk.state, wk.gen = hb.State, s.hbIndex.dropSince(wk.id, wk.gen)
	if err != nil {
		return wk, err
	}
	if !wrote {
		return wk, errBeatRaced
	}
	s.log.Info("worker state changed", "worker_id", wk.id, "from", from, "to", hb.State,
		"error", hb.Error)
	s.workerEvent(wk.id, wk.hive, wk.model, hb.State, heartbeatReason(from, hb))
	return wk, nil
}

// workerLost is called when a worker's heartbeat deadline passes: it gets
// no more requests until it beats again.
func (s *Server) workerLost(id string) {
	s.router.setState(id, api.WorkerLost)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wk, err := s.store.Worker(ctx, id)
	if err != nil || wk.State == api.WorkerStopped || wk.State == api.WorkerFailed {
		return
	}
	if wk.State == api.WorkerDraining {
		// Lost would forget the drain, and the next beat would make the
		// worker routable again; the router already has it unroutable.
		s.log.Warn("draining worker missed its heartbeat deadline", "worker_id", id)
		return
	}
	if err := s.setWorkerState(ctx, id, api.WorkerLost, "no heartbeat before the deadline"); err != nil {
		s.log.Error("mark worker lost", "worker_id", id, "error", err)
		return
	}
	s.log.Warn("worker lost", "worker_id", id, "last_state", wk.State)
	s.workerEvent(id, wk.Hive, wk.Model, api.WorkerLost, "no heartbeat before the deadline")
}

// heartbeatReason says why a heartbeat changed a worker's state.
func heartbeatReason(from api.WorkerState, hb api.Heartbeat) string {
	if hb.Error != "" {
		return hb.Error
	}
	if from == api.WorkerLost {
		return "heartbeats resumed"
	}
	return "reported by the worker"
}
