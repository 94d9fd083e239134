package registry

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations holds the schema, one step per entry. Entry i moves the
// database from version i to version i+1; the version lives in
// PRAGMA user_version. Entries are only ever appended, never edited.
var migrations = []string{
	// 1: hives, with the queen's own machine, and workers.
	`
CREATE TABLE hives (
	name       TEXT PRIMARY KEY,
	host       TEXT NOT NULL,
	ssh_user   TEXT NOT NULL DEFAULT '',
	ssh_port   INTEGER NOT NULL DEFAULT 22,
	key_path   TEXT NOT NULL DEFAULT '',
	local      INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL
) STRICT;

INSERT INTO hives (name, host, local, created_at)
VALUES ('localhost', '127.0.0.1', 1, CAST(strftime('%s', 'now') AS INTEGER) * 1000000000);

CREATE TABLE workers (
	id             TEXT PRIMARY KEY,
	hive           TEXT NOT NULL REFERENCES hives (name),
	model          TEXT NOT NULL,
	model_path     TEXT NOT NULL,
	device         TEXT NOT NULL,
	slots          INTEGER NOT NULL,
	slots_busy     INTEGER NOT NULL DEFAULT 0,
	ctx_size       INTEGER NOT NULL DEFAULT 0,
	state          TEXT NOT NULL,
	desired        TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
	pid            INTEGER NOT NULL DEFAULT 0,
	url            TEXT NOT NULL DEFAULT '',
	log_path       TEXT NOT NULL DEFAULT '',
	error          TEXT NOT NULL DEFAULT '',
	token          TEXT NOT NULL,
	created_at     INTEGER NOT NULL,
	last_heartbeat INTEGER
) STRICT;

CREATE INDEX workers_by_created ON workers (created_at, id);
CREATE INDEX workers_by_hive ON workers (hive);
`,
	// 2: API keys, stored as the SHA-256 of the key.
	`
CREATE TABLE api_keys (
	name         TEXT PRIMARY KEY,
	scope        TEXT NOT NULL CHECK (scope IN ('inference', 'admin')),
	prefix       TEXT NOT NULL,
	hash         BLOB NOT NULL UNIQUE,
	created_at   INTEGER NOT NULL,
	last_used_at INTEGER
) STRICT;
`,
	// 3: SSH hives: the alias a hive came from, its rbee-hive program, and
	// what the last contact found.
	`
ALTER TABLE hives ADD COLUMN alias TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN hive_bin TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN reachable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hives ADD COLUMN version TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN protocol_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hives ADD COLUMN os TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN arch TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE hives ADD COLUMN checked_at INTEGER;
`,
	// 4: what it takes to start a worker again, and its restart history:
	// the policy, the restarts so far (in all, and in a row without a
	// healthy period between), when the next may happen, why the last one
	// did, and since when the current process has been ready.
	`
ALTER TABLE workers ADD COLUMN gpu_layers INTEGER;
ALTER TABLE workers ADD COLUMN threads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN restart_policy TEXT NOT NULL DEFAULT 'on-failure'
	CHECK (restart_policy IN ('always', 'on-failure', 'never'));
ALTER TABLE workers ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN restart_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN next_restart_at INTEGER;
ALTER TABLE workers ADD COLUMN restart_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN ready_at INTEGER;
`,
	// 5: deployments (N workers of one model kept running), and which
	// deployment each worker belongs to (see deploy.go for why both).
	`
CREATE TABLE deployments (
	name           TEXT PRIMARY KEY,
	model          TEXT NOT NULL,
	hive           TEXT NOT NULL DEFAULT '',
	device         TEXT NOT NULL DEFAULT 'cpu',
	slots          INTEGER NOT NULL DEFAULT 1,
	ctx_size       INTEGER NOT NULL DEFAULT 0,
	gpu_layers     INTEGER,
	threads        INTEGER NOT NULL DEFAULT 0,
	restart_policy TEXT NOT NULL DEFAULT 'on-failure'
		CHECK (restart_policy IN ('always', 'on-failure', 'never')),
	replicas       INTEGER NOT NULL CHECK (replicas >= 0),
	created_at     INTEGER NOT NULL,
	updated_at     INTEGER NOT NULL
) STRICT;

ALTER TABLE workers ADD COLUMN deployment TEXT NOT NULL DEFAULT '';
CREATE INDEX workers_by_deployment ON workers (deployment) WHERE deployment != '';
`,
}

// migrate applies the migrations db has not seen yet, each in its own
// transaction together with the version bump, so a crash leaves the file at
// a known version. It refuses a database newer than migs.
func migrate(ctx context.Context, db *sql.DB, migs []string) error {
	for {
		done, err := migrateStep(ctx, db, migs)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// migrateStep applies the next pending migration and reports whether the
// schema is now current. The version is read inside the (immediate)
// transaction, so two processes opening the file at once do not apply the
// same step twice.
func migrateStep(ctx context.Context, db *sql.DB, migs []string) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()

	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case version > len(migs):
		return false, fmt.Errorf("%w: file has version %d, this rbee knows up to %d; "+
			"upgrade rbee to open it", ErrSchemaTooNew, version, len(migs))
	case version == len(migs):
		return true, nil
	}

	if _, err := tx.ExecContext(ctx, migs[version]); err != nil {
		return false, fmt.Errorf("apply migration %d: %w", version+1, err)
	}
	// PRAGMA takes no bound parameters; version is an int we computed.
	setVersion := fmt.Sprintf("PRAGMA user_version = %d", version+1)
	if _, err := tx.ExecContext(ctx, setVersion); err != nil {
		return false, fmt.Errorf("record schema version %d: %w", version+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit migration %d: %w", version+1, err)
	}
	return version+1 == len(migs), nil
}

// SchemaVersion reports the schema version of the open database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
