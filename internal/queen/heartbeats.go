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
)

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) error {
	var hb api.Heartbeat
	if err := httpapi.DecodeJSON(r, &hb); err != nil {
		return err
	}
	if hb.WorkerID == "" {
		return httpapi.BadRequest("worker_id", "worker_id is required")
	}
	ctx := r.Context()
	wk, err := s.worker(ctx, hb.WorkerID)
	if err != nil {
		return err
	}
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(token), []byte(wk.Token)) != 1 {
		return httpapi.Unauthorized("wrong token for worker %q", hb.WorkerID)
	}
	if hb.ProtocolVersion != api.ProtocolVersion {
		return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
			Code: "protocol_mismatch", Message: fmt.Sprintf("worker speaks protocol %d, the "+
				"queen %d: reinstall the hive's binaries with the queen's version",
				hb.ProtocolVersion, api.ProtocolVersion)}
	}
	if wk.State == api.WorkerStopped {
		return &httpapi.Error{Status: http.StatusGone, Type: "invalid_request_error",
			Code: "worker_stopped", Message: "worker " + wk.ID + " was stopped; it should exit"}
	}

	if wk.State == api.WorkerDraining && hb.State == api.WorkerReady {
		// The queen is draining it: it stays unroutable though it is well.
		hb.State = api.WorkerDraining
	}
	if err := s.store.RecordHeartbeat(ctx, wk.ID, hb, s.clock.Now().UTC()); err != nil {
		return err
	}
	s.live.record(hb)
	if wk.State != hb.State {
		s.log.Info("worker state changed", "worker_id", wk.ID, "from", wk.State, "to", hb.State,
			"error", hb.Error)
		s.workerEvent(wk.ID, wk.Hive, wk.Model, hb.State, heartbeatReason(wk.State, hb))
	} else {
		s.log.Debug("heartbeat", "worker_id", wk.ID, "state", hb.State)
	}
	switch hb.State {
	case api.WorkerStopped, api.WorkerFailed:
		s.forget(wk.ID)
		httpapi.WriteJSON(w, http.StatusOK, api.HeartbeatReply{})
		return nil
	}
	s.router.update(wk.ID, wk.Model, hb.URL, wk.Token, hb.State, wk.Slots)
	next := s.tracker.Beat(wk.ID)
	httpapi.WriteJSON(w, http.StatusOK, api.HeartbeatReply{NextIntervalMS: next.Milliseconds()})
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
	if err := s.store.SetState(ctx, id, api.WorkerLost, "no heartbeat before the deadline"); err != nil {
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
