package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// SteadyBeat is the part of a heartbeat that changes while a worker stays
// in one state, as the queen batches it: what RecordHeartbeats writes, and
// what RecordStateBeat writes with a new state.
type SteadyBeat struct {
	ID string
	// Token and State are what the queen knew of the worker when the beat
	// came. The row is written only while both still hold, so a beat
	// written late never undoes a restart (new token) or a state recorded
	// since (drain, stop, lost).
	Token string
	State api.WorkerState
	// URL replaces the worker's URL unless empty.
	URL       string
	SlotsBusy int
	Error     string
	At        time.Time
}

// beatSQL writes a heartbeat that takes a worker to a state (maybe the
// one it is in), as RecordHeartbeat does, but only while the worker still
// holds the token and the state the queen checked the beat against.
const beatSQL = beatSetSQL + ` WHERE id = ? AND token = ? AND state = ?`

// beatSetSQL is the part of a heartbeat write that sets the columns: the
// state, the URL (when the beat has one), busy slots, error, the time,
// which is also the ready time of a worker that turns ready, and desired
// stopped for a worker that says it stopped (unless restart always).
const beatSetSQL = `UPDATE workers SET state = ?,
	url = CASE WHEN ? = '' THEN url ELSE ? END, slots_busy = ?, error = ?, last_heartbeat = ?,
	ready_at = CASE WHEN ? = 'ready' AND (state != 'ready' OR ready_at IS NULL)
		THEN ? ELSE ready_at END,
	desired = CASE WHEN ? AND restart_policy != 'always' THEN 'stopped' ELSE desired END`

// beatArgs are beatSQL's arguments for beat b taking its worker to state to.
func beatArgs(b SteadyBeat, to api.WorkerState) []any {
	at := toNanos(b.At)
	return []any{string(to), b.URL, b.URL, b.SlotsBusy, b.Error, at, string(to), at,
		to == api.WorkerStopped, b.ID, b.Token, string(b.State)}
}

// RecordStateBeat records a heartbeat that takes worker b.ID from b.State
// to state to, as RecordHeartbeat does, unless the worker has since been
// started again (new token), moved to another state (drained, stopped,
// lost) or deleted: then it writes nothing and reports false, and the
// heartbeat must be checked again against what the worker is now.
func (s *Store) RecordStateBeat(ctx context.Context, b SteadyBeat, to api.WorkerState) (bool, error) {
	if !knownState(to) {
		return false, fmt.Errorf("record heartbeat of worker %q: unknown state %q", b.ID, to)
	}
	res, err := s.db.ExecContext(ctx, beatSQL, beatArgs(b, to)...)
	if err != nil {
		return false, fmt.Errorf("record heartbeat of worker %q: %w", b.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("record heartbeat of worker %q: %w", b.ID, err)
	}
	return n > 0, nil
}

// RecordHeartbeats writes many steady heartbeats in one transaction:
// last_heartbeat, slots_busy, error, and url when the beat has one. It
// returns how many rows it wrote; beats whose worker has since been
// deleted, started again with a new token, or moved to another state are
// skipped, which is not an error.
func (s *Store) RecordHeartbeats(ctx context.Context, beats []SteadyBeat) (int, error) {
	if len(beats) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("record %d heartbeats: %w", len(beats), err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, beatSQL)
	if err != nil {
		return 0, fmt.Errorf("record %d heartbeats: %w", len(beats), err)
	}
	defer stmt.Close()

	written := 0
	for _, b := range beats {
		res, err := stmt.ExecContext(ctx, beatArgs(b, b.State)...)
		if err != nil {
			return 0, fmt.Errorf("record heartbeat of worker %q: %w", b.ID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("record heartbeat of worker %q: %w", b.ID, err)
		}
		written += int(n)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("record %d heartbeats: %w", len(beats), err)
	}
	return written, nil
}
