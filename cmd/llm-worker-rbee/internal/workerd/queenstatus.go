package workerd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
)

// queenStatusFile keeps the worker's --status-file: present (an
// api.WorkerQueenStatus) while the queen answers heartbeats 404, because
// it no longer knows this worker; absent once it accepts one again. The
// hive reads it in `rbee-hive worker list` to report the worker as an
// orphan. The worker itself keeps serving: a queen whose database was
// reset must not take the fleet down.
//
// It is used from the heartbeat goroutine only.
type queenStatusFile struct {
	path     string // empty: the file is not kept
	queenURL string
	log      *slog.Logger

	// unknown is the time of the first 404 in a row; zero when the last
	// beat was accepted.
	unknown time.Time
	// stale is set while the file may exist on disk: at start (a file left
	// by an earlier process under this id) and after a write.
	stale bool
}

func newQueenStatusFile(path, queenURL string, log *slog.Logger) *queenStatusFile {
	return &queenStatusFile{path: path, queenURL: queenURL, log: log, stale: path != ""}
}

// observe takes the outcome of one heartbeat, sent at now. Other failures
// (the queen unreachable, 5xx, 401) leave the file as it is: they say
// nothing about whether the queen knows this worker.
func (s *queenStatusFile) observe(err error, now time.Time) {
	if s.path == "" {
		return
	}
	var status *heartbeat.StatusError
	switch {
	case err == nil:
		s.unknown = time.Time{}
		if s.stale {
			if rmErr := clearQueenStatus(s.path); rmErr != nil {
				s.log.Warn("remove status file", "path", s.path, "error", rmErr)
				return
			}
			s.stale = false
		}
	case errors.As(err, &status) && status.StatusCode == http.StatusNotFound:
		if !s.unknown.IsZero() {
			return // already written
		}
		s.unknown = now.UTC()
		reply := fmt.Sprintf("%d %s", status.StatusCode, status.Code)
		if status.Code == "" {
			reply = fmt.Sprintf("%d %s", status.StatusCode, status.Message)
		}
		st := api.WorkerQueenStatus{QueenURL: s.queenURL, UnknownSince: s.unknown,
			LastReply: reply}
		s.stale = true
		if wErr := writeQueenStatus(s.path, st); wErr != nil {
			s.log.Warn("write status file", "path", s.path, "error", wErr)
			s.unknown = time.Time{} // try again at the next 404
			return
		}
		s.log.Warn("the queen does not know this worker; serving on, marked as an orphan",
			"queen_url", s.queenURL, "status_file", s.path)
	}
}

// writeQueenStatus writes st to path atomically: a reader sees the old
// file, or none, or the new one, never a part.
func writeQueenStatus(path string, st api.WorkerQueenStatus) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(path, append(data, '\n'), 0o600,
		renameio.WithTempDir(filepath.Dir(path)))
}

// clearQueenStatus removes the file at path; a missing one is fine.
func clearQueenStatus(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
