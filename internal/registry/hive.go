package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/rbee-dev/rbee/internal/api"
)

// LocalHive is the name of the hive on the queen's own machine. The first
// migration creates it.
const LocalHive = "localhost"

// DefaultHiveBin is where `rbee hive install` puts rbee-hive on a hive; ~/
// is the remote user's home.
const DefaultHiveBin = "~/.local/bin/rbee-hive"

// ErrInUse is wrapped by DeleteHive when workers that are not stopped run
// on the hive, and by DeleteHive for the local hive.
var ErrInUse = errors.New("in use")

// Hive is a machine that runs rbee-hive. The queen reaches a Local hive by
// running the hive binary directly, and every other hive over SSH.
type Hive struct {
	Name    string
	Host    string // address or name to connect to
	SSHUser string // empty: the SSH default for Host
	SSHPort int
	KeyPath string // empty: the SSH agent and default keys
	Alias   string // the ~/.ssh/config alias it came from, if any
	Local   bool
	// HiveBin is the rbee-hive program on the hive; for a remote hive
	// DefaultHiveBin unless recorded otherwise.
	HiveBin string
	// Contact is what the last contact with the hive found.
	Contact Contact
	// CreatedAt is when the hive was recorded, in UTC.
	CreatedAt time.Time
}

// Contact is what the queen learnt the last time it reached (or failed to
// reach) a hive.
type Contact struct {
	Reachable       bool
	Version         string
	ProtocolVersion int
	OS              string
	Arch            string
	LastError       string
	CheckedAt       time.Time // zero: never checked
}

// Public is the hive as the API shows it.
func (h Hive) Public() api.Hive {
	out := api.Hive{
		Name: h.Name, Host: h.Host, User: h.SSHUser, Port: h.SSHPort, KeyPath: h.KeyPath,
		Alias: h.Alias, Local: h.Local, HiveBin: h.HiveBin,
		Reachable: h.Contact.Reachable, Version: h.Contact.Version,
		ProtocolVersion: h.Contact.ProtocolVersion, OS: h.Contact.OS, Arch: h.Contact.Arch,
		LastError: h.Contact.LastError, CreatedAt: h.CreatedAt,
	}
	if !h.Contact.CheckedAt.IsZero() {
		at := h.Contact.CheckedAt
		out.CheckedAt = &at
	}
	return out
}

const hiveColumns = `name, host, ssh_user, ssh_port, key_path, local, created_at, alias, hive_bin,
	reachable, version, protocol_version, os, arch, last_error, checked_at`

// Hives returns every hive, ordered by name.
func (s *Store) Hives(ctx context.Context) ([]Hive, error) {
	return queryAll(ctx, s, "list hives", scanHive,
		`SELECT `+hiveColumns+` FROM hives ORDER BY name`)
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

// CreateHive records a remote hive. HiveBin defaults to DefaultHiveBin,
// SSHPort to 22 and CreatedAt to now. A taken name is ErrExists.
func (s *Store) CreateHive(ctx context.Context, h Hive) error {
	if h.Name == "" || h.Host == "" {
		return errors.New("create hive: empty name or host")
	}
	if h.HiveBin == "" {
		h.HiveBin = DefaultHiveBin
	}
	if h.SSHPort == 0 {
		h.SSHPort = 22
	}
	if h.CreatedAt.IsZero() {
		h.CreatedAt = time.Now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO hives
		(name, host, ssh_user, ssh_port, key_path, local, created_at, alias, hive_bin)
		VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)`,
		h.Name, h.Host, h.SSHUser, h.SSHPort, h.KeyPath, toNanos(h.CreatedAt), h.Alias, h.HiveBin)
	if sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return fmt.Errorf("create hive %q: %w", h.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create hive %q: %w", h.Name, err)
	}
	return nil
}

// ActiveWorkersOn returns the ids of the hive's workers that are not
// stopped (nor failed), oldest first.
func (s *Store) ActiveWorkersOn(ctx context.Context, hive string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM workers
		WHERE hive = ? AND state NOT IN (?, ?) ORDER BY created_at, id`,
		hive, string(api.WorkerStopped), string(api.WorkerFailed))
	if err != nil {
		return nil, fmt.Errorf("list workers of hive %q: %w", hive, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list workers of hive %q: %w", hive, err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// DeleteHive forgets a remote hive and the records of its workers. While
// workers that are not stopped run there it fails with ErrInUse, unless
// force. The local hive is never deleted (ErrInUse).
func (s *Store) DeleteHive(ctx context.Context, name string, force bool) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete hive %q: %w", name, err)
	}
	defer tx.Rollback()

	var local bool
	err = tx.QueryRowContext(ctx, `SELECT local FROM hives WHERE name = ?`, name).Scan(&local)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("delete hive %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete hive %q: %w", name, err)
	}
	if local {
		return fmt.Errorf("delete hive %q: %w: it is the queen's own machine", name, ErrInUse)
	}
	if !force {
		var n int
		err := tx.QueryRowContext(ctx, `SELECT count(*) FROM workers
			WHERE hive = ? AND state NOT IN (?, ?)`,
			name, string(api.WorkerStopped), string(api.WorkerFailed)).Scan(&n)
		if err != nil {
			return fmt.Errorf("delete hive %q: %w", name, err)
		}
		if n > 0 {
			return fmt.Errorf("delete hive %q: %w: %d workers are not stopped", name, ErrInUse, n)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM workers WHERE hive = ?`, name); err != nil {
		return fmt.Errorf("delete hive %q: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM hives WHERE name = ?`, name); err != nil {
		return fmt.Errorf("delete hive %q: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete hive %q: %w", name, err)
	}
	return nil
}

// SetHiveContact records what the last contact with the hive found.
func (s *Store) SetHiveContact(ctx context.Context, name string, c Contact) error {
	if c.CheckedAt.IsZero() {
		c.CheckedAt = time.Now()
	}
	res, err := s.db.ExecContext(ctx, `UPDATE hives SET reachable = ?, version = ?,
		protocol_version = ?, os = ?, arch = ?, last_error = ?, checked_at = ? WHERE name = ?`,
		c.Reachable, c.Version, c.ProtocolVersion, c.OS, c.Arch, c.LastError,
		toNanos(c.CheckedAt), name)
	if err != nil {
		return fmt.Errorf("record contact with hive %q: %w", name, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("record contact with hive %q: %w", name, ErrNotFound)
	}
	return nil
}

// scanHive reads one row selected with hiveColumns.
func scanHive(r scanner) (Hive, error) {
	var h Hive
	var created int64
	var checked sql.NullInt64
	c := &h.Contact
	err := r.Scan(&h.Name, &h.Host, &h.SSHUser, &h.SSHPort, &h.KeyPath, &h.Local, &created,
		&h.Alias, &h.HiveBin, &c.Reachable, &c.Version, &c.ProtocolVersion, &c.OS, &c.Arch,
		&c.LastError, &checked)
	if err != nil {
		return Hive{}, err
	}
	h.CreatedAt = fromNanos(created)
	if checked.Valid {
		c.CheckedAt = fromNanos(checked.Int64)
	}
	return h, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// queryAll runs a query and scans every row with scan; what names the
// listing in errors ("list hives").
func queryAll[T any](ctx context.Context, s *Store, what string, scan func(scanner) (T, error),
	query string, args ...any) ([]T, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()

	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}
