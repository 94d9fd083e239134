package queen

import (
	"context"
	"crypto/subtle"
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
	ctx := r.Context()
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	wk, err := s.heartbeatAuth(ctx, hb.WorkerID, token)
	if err != nil {
		return err
	}
	if hb.ProtocolVersion != api.ProtocolVersion {
		return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
			Code: "protocol_mismatch", Message: fmt.Sprintf("worker speaks protocol %d, the "+
				"queen %d: reinstall the hive's binaries with the queen's version",
				hb.ProtocolVersion, api.ProtocolVersion)}
	}
	if wk.state == api.WorkerStopped {
		return errWorkerStopped(wk.id)
	}

	var next time.Duration
	if hb.State != api.WorkerStopped && hb.State != api.WorkerFailed {
		next = s.tracker.Beat(wk.id)
		// Beat waited for an expiry on its way, which recorded the worker
		// lost: look again, so that this beat brings it back.
		if wk, err = s.heartbeatAuth(ctx, hb.WorkerID, token); err != nil {
			return err
		}
		if wk.state == api.WorkerStopped {
			return errWorkerStopped(wk.id)
		}
	}
	if wk.state == api.WorkerDraining && hb.State == api.WorkerReady {
		// The queen is draining it: it stays unroutable though it is well.
		hb.State = api.WorkerDraining
	}
	if err := s.recordBeat(ctx, wk, hb); err != nil {
		return err
	}
	s.live.record(hb)
	switch hb.State {
	case api.WorkerStopped, api.WorkerFailed:
		s.forget(wk.id)
		httpapi.WriteJSON(w, http.StatusOK, api.HeartbeatReply{})
		return nil
	}
	s.router.update(wk.id, wk.model, hb.URL, wk.token, hb.State, wk.slots)
	httpapi.WriteJSON(w, http.StatusOK, api.HeartbeatReply{NextIntervalMS: next.Milliseconds()})
	return nil
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
		s.hbIndex.drop(id)
		if wk, _, err = s.hbWorker(ctx, id); err != nil {
			return wk, err
		}
	}
	if !sameToken(token, wk.token) {
		return wk, httpapi.Unauthorized("wrong token for worker %q", id)
	}
	return wk, nil
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
// the worker stays in its state, at once (and announced) when it changes.
func (s *Server) recordBeat(ctx context.Context, wk hbWorker, hb api.Heartbeat) error {
	now := s.clock.Now().UTC()
	if wk.state == hb.State {
		s.hbWriter.add(registry.SteadyBeat{ID: wk.id, Token: wk.token, State: wk.state,
			URL: hb.URL, SlotsBusy: hb.SlotsBusy, Error: hb.Error, At: now})
		s.log.Debug("heartbeat", "worker_id", wk.id, "state", hb.State)
		return nil
	}
	err := s.hbWriter.writeNow(wk.id, func() error {
		return s.store.RecordHeartbeat(ctx, wk.id, hb, now)
	})
	s.hbIndex.drop(wk.id)
	if err != nil {
		return err
	}
	s.log.Info("worker state changed", "worker_id", wk.id, "from", wk.state, "to", hb.State,
		"error", hb.Error)
	s.workerEvent(wk.id, wk.hive, wk.model, hb.State, heartbeatReason(wk.state, hb))
	return nil
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
