package queen

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// handleWorkerLogs streams a worker's log from its hive as chunked plain
// text, one flush per line: `rbee-hive worker logs`, run locally or over
// SSH. With follow=true it runs until the client leaves, which cancels the
// request's context and so stops the command on the hive.
//
// Shortcoming: each follower of a remote hive's log holds one of the
// pool's SSH sessions to that hive (sshexec.DefaultMaxSessions) while it
// follows; past that, hive commands wait for a follower to leave.
func (s *Server) handleWorkerLogs(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	wk, err := s.worker(ctx, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	h, err := s.store.Hive(ctx, wk.Hive)
	if err != nil {
		return err
	}
	args := []string{"worker", "logs", wk.ID}
	q := r.URL.Query()
	if raw := q.Get("tail"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 {
			return httpapi.BadRequest("tail", "tail must be a number of lines, 0 or more, not %q", raw)
		}
		args = append(args, "--tail", strconv.Itoa(n))
	}
	if follow, _ := strconv.ParseBool(q.Get("follow")); follow {
		args = append(args, "--follow")
	}
	if err := s.hives.verify(ctx, h); err != nil {
		return err
	}

	// The hive's first line says whether the log follows (api.HiveLogHeader)
	// or why not (api.HiveError); nothing is sent before it is read.
	var first []byte
	started := false
	flusher, _ := w.(http.Flusher)
	res, err := s.hives.stream(ctx, h, args, func(line []byte) {
		if first == nil {
			first = append([]byte{}, line...)
			var hdr api.HiveLogHeader
			if json.Unmarshal(line, &hdr) != nil || hdr.WorkerID != wk.ID {
				return
			}
			started = true
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
		} else if started {
			_, _ = w.Write(append(line, '\n'))
		}
		if flusher != nil && started {
			flusher.Flush()
		}
	})
	switch {
	case started:
		if err != nil && ctx.Err() == nil {
			s.log.Warn("worker log stream broke", "worker_id", wk.ID, "hive", h.Name, "error", err)
		}
		return nil // the answer has begun; the client sees the stream end
	case err != nil:
		return sshError(h.Name, err)
	case res.ExitCode == exitNotFound && !h.Local:
		return notInstalled(h)
	}
	res.Stdout = bytes.TrimSpace(first)
	if res.ExitCode == api.HiveExitOK {
		return httpapi.Upstream(nil, "hive %q printed no log header (is its rbee-hive the "+
			"same version as the queen? `rbee hive install %s`)", h.Name, h.Name)
	}
	return hiveFailure(h.Name, args, res)
}
