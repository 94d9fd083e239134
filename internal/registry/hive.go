package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// LocalHive is the name of the hive on the queen's own machine. The first
// migration creates it.
const LocalHive = "localhost"

// Hive is a machine that runs rbee-hive. The queen reaches a Local hive by
// running the hive binary directly, and every other hive over SSH.
type Hive struct {
	Name    string
	Host    string // address or name to connect to
	SSHUser string // empty: the SSH default for Host
	SSHPort int
	KeyPath string // empty: the SSH agent and default keys
	Local   bool
	// CreatedAt is when the hive was recorded, in UTC.
	CreatedAt time.Time
}

const hiveColumns = `name, host, ssh_user, ssh_port, key_path, local, created_at`

// Hives returns every hive, ordered by name.
func (s *Store) Hives(ctx context.Context) ([]Hive, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+hiveColumns+` FROM hives ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list hives: %w", err)
	}
	defer rows.Close()

	var hives []Hive
	for rows.Next() {
		h, err := scanHive(rows)
		if err != nil {
			return nil, fmt.Errorf("list hives: %w", err)
		}
		hives = append(hives, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list hives: %w", err)
	}
	return hives, nil
}

// Hive returns the hive called name, or an error wrapping ErrNotFound.
func (s *Store) Hive(ctx context.Context, name string) (Hive, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+hiveColumns+` FROM hives WHERE name = ?`, name)
	h, err := scanHive(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Hive{}, fmt.Errorf("hive %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Hive{}, fmt.Errorf("get hive %q: %w", name, err)
	}
	return h, nil
}

// scanHive reads one row selected with hiveColumns.
func scanHive(r scanner) (Hive, error) {
	var h Hive
	var created int64
	err := r.Scan(&h.Name, &h.Host, &h.SSHUser, &h.SSHPort, &h.KeyPath, &h.Local, &created)
	if err != nil {
		return Hive{}, err
	}
	h.CreatedAt = fromNanos(created)
	return h, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}
