package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/rbee-dev/rbee/internal/api"
)

// Desired states of a worker: what the queen wants, as opposed to
// api.WorkerState, what it last observed.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// Worker is what the queen knows of one worker.
type Worker struct {
	api.Worker
	// Token is the worker's secret. The queen presents it when it proxies a
	// request, so it is stored as is; the database file is readable only by
	// its owner.
	Token string
	// Desired is DesiredRunning or DesiredStopped.
	Desired string
	// CtxSize is the context size per slot the worker was spawned with.
	CtxSize int
	// GPULayers and Threads are the spawn's --gpu-layers (nil: all) and
	// --threads (0: the node's default), kept to start the worker again.
	GPULayers *int
	Threads   int
	// RestartStreak counts restarts since the worker last stayed healthy;
	// the backoff before the next restart grows with it.
	RestartStreak int
	// ReadyAt is when the current process turned ready; zero: it has not.
	ReadyAt time.Time
}

const workerColumns = `id, hive, model, model_path, device, slots, slots_busy, ctx_size,
	state, desired, pid, url, log_path, error, token, created_at, last_heartbeat,
	gpu_layers, threads, restart_policy, restarts, restart_streak, next_restart_at,
	restart_reason, ready_at`

// CreateWorker records a new worker in state starting. Desired defaults to
// DesiredRunning and CreatedAt to now. It fails with an error wrapping
// ErrExists when the id is taken, and ErrNotFound when the hive is unknown.
func (s *Store) CreateWorker(ctx context.Context, w Worker) error {
	if w.ID == "" {
		return errors.New("create worker: empty id")
	}
	if w.Desired == "" {
		w.Desired = DesiredRunning
	}
	if w.Desired != DesiredRunning && w.Desired != DesiredStopped {
		return fmt.Errorf("create worker %q: unknown desired state %q", w.ID, w.Desired)
	}
	if w.CreatedAt.IsZero() {
		w.CreatedAt = time.Now()
	}
	if w.Restart == "" {
		w.Restart = api.RestartOnFailure
	}
	if !KnownRestartPolicy(w.Restart) {
		return fmt.Errorf("create worker %q: unknown restart policy %q", w.ID, w.Restart)
	}
	var gpuLayers sql.NullInt64
	if w.GPULayers != nil {
		gpuLayers = sql.NullInt64{Int64: int64(*w.GPULayers), Valid: true}
	}

	_, err := s.db.ExecContext(ctx, `INSERT INTO workers (`+workerColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		w.ID, w.Hive, w.Model, w.ModelPath, w.Device, w.Slots, w.SlotsBusy, w.CtxSize,
		string(api.WorkerStarting), w.Desired, w.PID, w.URL, w.LogPath, w.Error, w.Token,
		toNanos(w.CreatedAt), nullTime(w.LastHeartbeat),
		gpuLayers, w.Threads, w.Restart, w.Restarts, w.RestartStreak,
		nullTime(w.NextRestart), w.RestartReason, nullTime(w.ReadyAt))
	switch sqliteCode(err) {
	case 0:
		return nil
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("create worker %q: %w", w.ID, ErrExists)
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("create worker %q: hive %q: %w", w.ID, w.Hive, ErrNotFound)
	}
	return fmt.Errorf("create worker %q: %w", w.ID, err)
}

// Worker returns the worker with the given id, or an error wrapping
// ErrNotFound.
func (s *Store) Worker(ctx context.Context, id string) (Worker, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+workerColumns+` FROM workers WHERE id = ?`, id)
	w, err := scanWorker(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Worker{}, fmt.Errorf("worker %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Worker{}, fmt.Errorf("get worker %q: %w", id, err)
	}
	return w, nil
}

// Workers returns the workers ordered by creation time, then id. Workers in
// state stopped are left out unless includeStopped is set.
func (s *Store) Workers(ctx context.Context, includeStopped bool) ([]Worker, error) {
	return queryAll(ctx, s, "list workers", scanWorker,
		`SELECT `+workerColumns+` FROM workers WHERE ? OR state != ? ORDER BY created_at, id`,
		includeStopped, string(api.WorkerStopped))
}

// SetSpawned records what the hive reported after starting the worker. It
// leaves the state alone: the worker's heartbeats own it from then on.
func (s *Store) SetSpawned(ctx context.Context, id string, pid int, url, logPath string) error {
	return s.update(ctx, "set spawned", id,
		`UPDATE workers SET pid = ?, url = ?, log_path = ? WHERE id = ?`,
		pid, url, logPath, id)
}

// SetState records an observed state and its error message (empty clears
// it). Stopping a worker also makes its desired state stopped, so it is not
// started again.
func (s *Store) SetState(
	ctx context.Context, id string, state api.WorkerState, errMsg string,
) error {
	if !knownState(state) {
		return fmt.Errorf("set state of worker %q: unknown state %q", id, state)
	}
	return s.update(ctx, "set state", id, `UPDATE workers SET state = ?, error = ?,
		desired = CASE WHEN ? THEN 'stopped' ELSE desired END WHERE id = ?`,
		string(state), errMsg, state == api.WorkerStopped, id)
}

// AdvanceState moves worker id from state from to state to, and reports
// whether it did: a worker no longer in from (a heartbeat got there first)
// is left as it is.
func (s *Store) AdvanceState(ctx context.Context, id string, from, to api.WorkerState) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE workers SET state = ? WHERE id = ? AND state = ?`,
		string(to), id, string(from))
	if err != nil {
		return false, fmt.Errorf("advance state of worker %q: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("advance state of worker %q: %w", id, err)
	}
	return n == 1, nil
}

// RecordHeartbeat records a heartbeat received at the given time: state,
// URL (when the heartbeat has one), busy slots, error, and the time itself,
// which is also the ready time of a worker that turns ready. A worker that
// says it stopped also gets desired state stopped, as with
// SetState: it was stopped on purpose and must not be started again,
// unless its restart policy is api.RestartAlways.
func (s *Store) RecordHeartbeat(
	ctx context.Context, id string, hb api.Heartbeat, at time.Time,
) error {
	if !knownState(hb.State) {
		return fmt.Errorf("record heartbeat of worker %q: unknown state %q", id, hb.State)
	}
	return s.update(ctx, "record heartbeat", id, beatSetSQL+` WHERE id = ?`,
		string(hb.State), hb.URL, hb.URL, hb.SlotsBusy, hb.Error, toNanos(at),
		string(hb.State), toNanos(at), hb.State == api.WorkerStopped, id)
}

// SetNextRestart records when the worker is to be started again and why;
// a zero at clears it.
func (s *Store) SetNextRestart(ctx context.Context, id string, at time.Time, reason string) error {
	return s.update(ctx, "set next restart", id, `UPDATE workers SET next_restart_at = ?,
		restart_reason = CASE WHEN ? = '' THEN restart_reason ELSE ? END WHERE id = ?`,
		nullTime(at), reason, reason, id)
}

// RecordRestart records that the worker is being started again with a new
// token: state starting, one more restart, and no restart pending. It
// touches only a worker whose desired state is still running, and fails
// with an error wrapping ErrNotFound otherwise.
func (s *Store) RecordRestart(ctx context.Context, id, token, reason string) error {
	return s.update(ctx, "record restart", id, `UPDATE workers SET state = ?, error = '',
		token = ?, pid = 0, url = '', slots_busy = 0, restarts = restarts + 1,
		restart_streak = restart_streak + 1, next_restart_at = NULL, restart_reason = ?,
		ready_at = NULL WHERE id = ? AND desired = 'running'`,
		string(api.WorkerStarting), token, reason, id)
}

// ResetRestartStreak forgets the restarts in a row of a worker that has
// stayed healthy, so the next restart waits the shortest backoff again.
func (s *Store) ResetRestartStreak(ctx context.Context, id string) error {
	return s.update(ctx, "reset restart streak", id,
		`UPDATE workers SET restart_streak = 0 WHERE id = ?`, id)
}

// KnownRestartPolicy reports whether p is one of the api.Restart* policies.
func KnownRestartPolicy(p string) bool {
	switch p {
	case api.RestartAlways, api.RestartOnFailure, api.RestartNever:
		return true
	}
	return false
}

// DeleteWorker forgets a worker. It fails with an error wrapping
// ErrNotFound when there is no such worker.
func (s *Store) DeleteWorker(ctx context.Context, id string) error {
	return s.update(ctx, "delete", id, `DELETE FROM workers WHERE id = ?`, id)
}

// update runs a statement that must touch exactly the worker id.
func (s *Store) update(ctx context.Context, what, id, query string, args ...any) error {
	res, err := s.db.ExecContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("%s worker %q: %w", what, id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s worker %q: %w", what, id, err)
	}
	if n == 0 {
		return fmt.Errorf("%s worker %q: %w", what, id, ErrNotFound)
	}
	return nil
}

// scanWorker reads one row selected with workerColumns.
func scanWorker(r scanner) (Worker, error) {
	var w Worker
	var state string
	var created int64
	var lastBeat, gpuLayers, nextRestart, readyAt sql.NullInt64
	err := r.Scan(&w.ID, &w.Hive, &w.Model, &w.ModelPath, &w.Device, &w.Slots, &w.SlotsBusy,
		&w.CtxSize, &state, &w.Desired, &w.PID, &w.URL, &w.LogPath, &w.Error, &w.Token,
		&created, &lastBeat, &gpuLayers, &w.Threads, &w.Restart, &w.Restarts,
		&w.RestartStreak, &nextRestart, &w.RestartReason, &readyAt)
	if err != nil {
		return Worker{}, err
	}
	if gpuLayers.Valid {
		n := int(gpuLayers.Int64)
		w.GPULayers = &n
	}
	if readyAt.Valid {
		w.ReadyAt = fromNanos(readyAt.Int64)
	}
	if nextRestart.Valid {
		w.NextRestart = fromNanos(nextRestart.Int64)
	}
	w.State = api.WorkerState(state)
	w.CreatedAt = fromNanos(created)
	if lastBeat.Valid {
		w.LastHeartbeat = fromNanos(lastBeat.Int64)
	}
	return w, nil
}

// nullTime stores the zero time as NULL.
func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: toNanos(t), Valid: true}
}

// knownState reports whether state is one of the api.WorkerState values.
func knownState(state api.WorkerState) bool {
	switch state {
	case api.WorkerStarting, api.WorkerLoading, api.WorkerReady, api.WorkerDraining,
		api.WorkerLost, api.WorkerFailed, api.WorkerStopped:
		return true
	}
	return false
}

// sqliteCode returns the extended SQLite result code of err, or 0 when err
// is nil or did not come from SQLite.
func sqliteCode(err error) int {
	if err == nil {
		return 0
	}
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return -1
}
