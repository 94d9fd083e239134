package hive

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/rbee-dev/rbee/internal/api"
)

// Environment variables that choose the state dir.
const (
	envStateDir     = "RBEE_HIVE_STATE_DIR"
	envXDGStateHome = "XDG_STATE_HOME"
)

// safeID is what a worker id may look like: it names files in the state dir.
var safeID = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// maxIDLen bounds a worker id (checked apart from safeID, see hostSyntax).
const maxIDLen = 64

// isSafeID reports whether id may name a worker's files.
func isSafeID(id string) bool {
	return len(id) <= maxIDLen && safeID.MatchString(id)
}

func checkID(id string) error {
	if id == "" {
		return usageErrorf("missing worker id")
	}
	if !isSafeID(id) {
		return usageErrorf("invalid worker id %q: use 1 to 64 of A-Z a-z 0-9 _ -", id)
	}
	return nil
}

// stateDir returns the hive's state dir: $RBEE_HIVE_STATE_DIR, else
// $XDG_STATE_HOME/rbee, else ~/.local/state/rbee.
func stateDir() (string, error) {
	return rbeeDir(envStateDir, envXDGStateHome, filepath.Join(".local", "state"))
}

// rbeeDir finds one of the hive's directories: $overrideEnv (made
// absolute), else $xdgEnv/rbee/sub..., else ~/homeBase/rbee/sub.... The
// XDG spec says to ignore a relative XDG path.
func rbeeDir(overrideEnv, xdgEnv, homeBase string, sub ...string) (string, error) {
	if dir := os.Getenv(overrideEnv); dir != "" {
		return filepath.Abs(dir)
	}
	rest := append([]string{"rbee"}, sub...)
	if dir := os.Getenv(xdgEnv); filepath.IsAbs(dir) {
		return filepath.Join(append([]string{dir}, rest...)...), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the rbee directory: set %s: %w", overrideEnv, err)
	}
	return filepath.Join(append([]string{home, homeBase}, rest...)...), nil
}

// store is the directory holding one record and one log per worker.
type store struct {
	dir string
}

// openStore returns the workers dir of the state dir, creating it (mode
// 0700) when create is set.
func openStore(create bool) (store, error) {
	root, err := stateDir()
	if err != nil {
		return store{}, err
	}
	dir := filepath.Join(root, "workers")
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return store{}, fmt.Errorf("create state dir: %w", err)
		}
	}
	return store{dir: dir}, nil
}

func (s store) recordPath(id string) string { return filepath.Join(s.dir, id+".json") }

func (s store) logPath(id string) string { return filepath.Join(s.dir, id+".log") }

// statusPath is the worker's --status-file: there while the queen answers
// its heartbeats 404 (an api.WorkerQueenStatus). "ID.status" fails
// safeID, so list never takes it for a record.
func (s store) statusPath(id string) string { return filepath.Join(s.dir, id+".status.json") }

// readStatus returns what worker id last wrote to its status file, and
// false when there is none (or it cannot be read: it is only a hint).
func (s store) readStatus(id string) (api.WorkerQueenStatus, bool) {
	data, err := os.ReadFile(s.statusPath(id))
	if err != nil {
		return api.WorkerQueenStatus{}, false
	}
	var st api.WorkerQueenStatus
	if json.Unmarshal(data, &st) != nil {
		return api.WorkerQueenStatus{}, false
	}
	return st, true
}

// removeStatus deletes the status file of worker id, if any.
func (s store) removeStatus(id string) error {
	err := os.Remove(s.statusPath(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove worker status file: %w", err)
	}
	return nil
}

// errNoRecord reports that the hive has no record of a worker id.
var errNoRecord = errors.New("no such worker")

// read returns the record of worker id, or an error wrapping errNoRecord.
func (s store) read(id string) (api.HiveWorker, error) {
	data, err := os.ReadFile(s.recordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return api.HiveWorker{}, fmt.Errorf("worker %q: %w", id, errNoRecord)
	}
	if err != nil {
		return api.HiveWorker{}, fmt.Errorf("read worker record: %w", err)
	}

	var w api.HiveWorker
	if err := json.Unmarshal(data, &w); err != nil {
		return api.HiveWorker{}, fmt.Errorf("read worker record %s: %w", s.recordPath(id), err)
	}
	if w.ID != id {
		return api.HiveWorker{}, fmt.Errorf("read worker record %s: it names worker %q",
			s.recordPath(id), w.ID)
	}
	return w, nil
}

// write stores the record of w atomically: a reader sees the old record or
// the new one, never a part.
func (s store) write(w api.HiveWorker) error {
	data, err := json.MarshalIndent(w, "", "  ")
	if err != nil {
		return fmt.Errorf("encode worker record: %w", err)
	}

	if err := writeFileAtomic(s.recordPath(w.ID), data); err != nil {
		return fmt.Errorf("write worker record: %w", err)
	}
	return nil
}

// remove deletes the record of worker id and its status file; its log
// stays.
func (s store) remove(id string) error {
	err := os.Remove(s.recordPath(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove worker record: %w", err)
	}
	return s.removeStatus(id)
}

// list returns every record, sorted by id. Records that cannot be read are
// skipped and returned as warnings, so one bad file does not hide the rest.
func (s store) list() ([]api.HiveWorker, []error, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list workers: %w", err)
	}

	var workers []api.HiveWorker
	var warnings []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || !isSafeID(id) {
			continue // temp files start with a dot and fail safeID
		}
		w, err := s.read(id)
		if err != nil {
			warnings = append(warnings, err)
			continue
		}
		workers = append(workers, w)
	}
	sort.Slice(workers, func(i, j int) bool { return workers[i].ID < workers[j].ID })
	return workers, warnings, nil
}

// writeFileAtomic writes data (and a final newline) to path, readable by
// the owner only, through a synced temporary file in the same directory
// and a rename: a reader sees the old file, or none, or the new one, never
// a part.
func writeFileAtomic(path string, data []byte) error {
	return renameio.WriteFile(path, append(data, '\n'), 0o600,
		renameio.WithTempDir(filepath.Dir(path)))
}
