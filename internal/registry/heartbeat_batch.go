package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// SteadyBeat is the part of a heartbeat that changes while a worker stays
// in one state, as the queen batches it: what RecordHeartbeats writes.
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
	stmt, err := tx.PrepareContext(ctx, `UPDATE workers SET
		url = CASE WHEN ? = '' THEN url ELSE ? END, slots_busy = ?, error = ?,
		last_heartbeat = ? WHERE id = ? AND token = ? AND state = ?`)
	if err != nil {
		return 0, fmt.Errorf("record %d heartbeats: %w", len(beats), err)
	}
	defer stmt.Close()

	written := 0
	for _, b := range beats {
		res, err := stmt.ExecContext(ctx, b.URL, b.URL, b.SlotsBusy, b.Error, toNanos(b.At),
			b.ID, b.Token, string(b.State))
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
