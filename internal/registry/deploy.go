package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// Deployments live in their own table, and each worker names its
// deployment in workers.deployment. Both are needed: the table keeps what
// the user wants (the replica count and how to start each worker) even
// while no worker runs, and the column ties a worker to the deployment
// that started it, so that a worker of the same model spawned by hand is
// never counted as, or scaled down as, one of the deployment's. The
// column carries no foreign key: a removed deployment's stopped workers
// stay in the history with the column cleared.

// Deployment is what the queen keeps of one deployment: how many workers
// of a model to keep running, and how to start each one.
type Deployment struct {
	Name      string // the workers' routing name; identifies the deployment
	Model     string // catalog name or path, as the user gave it
	Hive      string // empty: each worker is placed by the queen
	Device    string
	Slots     int
	CtxSize   int
	GPULayers *int
	Threads   int
	Restart   string
	Replicas  int
	CreatedAt time.Time
	UpdatedAt time.Time
}

const deploymentColumns = `name, model, hive, device, slots, ctx_size, gpu_layers, threads,
	restart_policy, replicas, created_at, updated_at`

// PutDeployment records deployment d, or updates the one of the same name
// (its spawn settings and replica count; workers already running keep
// their own settings). It reports whether d is new.
func (s *Store) PutDeployment(ctx context.Context, d Deployment) (created bool, err error) {
	if d.Name == "" || d.Model == "" {
		return false, errors.New("put deployment: empty name or model")
	}
	if d.Restart == "" {
		d.Restart = api.RestartOnFailure
	}
	now := time.Now()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("put deployment %q: %w", d.Name, err)
	}
	defer tx.Rollback()

	var n int
	err = tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM deployments WHERE name = ?`,
		d.Name).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("put deployment %q: %w", d.Name, err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO deployments (`+deploymentColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET model = excluded.model, hive = excluded.hive,
			device = excluded.device, slots = excluded.slots, ctx_size = excluded.ctx_size,
			gpu_layers = excluded.gpu_layers, threads = excluded.threads,
			restart_policy = excluded.restart_policy, replicas = excluded.replicas,
			updated_at = excluded.updated_at`,
		d.Name, d.Model, d.Hive, d.Device, d.Slots, d.CtxSize, nullInt(d.GPULayers), d.Threads,
		d.Restart, d.Replicas, toNanos(now), toNanos(now))
	if err != nil {
		return false, fmt.Errorf("put deployment %q: %w", d.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("put deployment %q: %w", d.Name, err)
	}
	return n == 0, nil
}

// Deployment returns the deployment called name, or an error wrapping
// ErrNotFound.
func (s *Store) Deployment(ctx context.Context, name string) (Deployment, error) {
	row := s.db.QueryRowContext(ctx,
		`SELECT `+deploymentColumns+` FROM deployments WHERE name = ?`, name)
	d, err := scanDeployment(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Deployment{}, fmt.Errorf("deployment %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Deployment{}, fmt.Errorf("get deployment %q: %w", name, err)
	}
	return d, nil
}

// Deployments returns every deployment, ordered by name.
func (s *Store) Deployments(ctx context.Context) ([]Deployment, error) {
	return queryAll(ctx, s, "list deployments", scanDeployment,
		`SELECT `+deploymentColumns+` FROM deployments ORDER BY name`)
}

// DeleteDeployment forgets a deployment and unties its workers from it,
// or fails with an error wrapping ErrNotFound.
func (s *Store) DeleteDeployment(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete deployment %q: %w", name, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM deployments WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("delete deployment %q: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(fmt.Errorf("delete deployment %q: %w", name, ErrNotFound), err)
	}
	_, err = tx.ExecContext(ctx, `UPDATE workers SET deployment = '' WHERE deployment = ?`, name)
	if err != nil {
		return fmt.Errorf("delete deployment %q: untie workers: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete deployment %q: %w", name, err)
	}
	return nil
}

// SetWorkerDeployment ties worker id to deployment name.
func (s *Store) SetWorkerDeployment(ctx context.Context, id, name string) error {
	return s.update(ctx, "set deployment of", id,
		`UPDATE workers SET deployment = ? WHERE id = ?`, name, id)
}

// DeploymentWorkers returns the workers of deployment name that the queen
// still wants running, oldest first.
func (s *Store) DeploymentWorkers(ctx context.Context, name string) ([]Worker, error) {
	return queryAll(ctx, s, "list deployment workers", scanWorker,
		`SELECT `+workerColumns+` FROM workers WHERE deployment = ? AND desired = 'running'
		ORDER BY created_at, id`, name)
}

// RetireWorker makes the desired state of worker id stopped and leaves its
// observed state and error as they are, so a worker given up on still
// shows how it ended.
func (s *Store) RetireWorker(ctx context.Context, id string) error {
	return s.update(ctx, "retire", id, `UPDATE workers SET desired = 'stopped',
		next_restart_at = NULL WHERE id = ?`, id)
}

// RetireDownWorker gives up on worker id, whose process ended or was lost,
// so that another worker replaces it: its desired state turns stopped, no
// restart stays pending, and a lost one is recorded stopped with errMsg,
// so that a late heartbeat tells it to exit (a failed or exited one keeps
// how it ended). Only a worker still wanted running and still down (lost,
// failed or stopped) is touched; it reports whether it was, so that a
// heartbeat or a restart that got there first wins.
func (s *Store) RetireDownWorker(ctx context.Context, id, errMsg string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE workers SET desired = 'stopped',
		next_restart_at = NULL,
		error = CASE WHEN state = 'lost' THEN ? ELSE error END,
		state = CASE WHEN state = 'lost' THEN 'stopped' ELSE state END
		WHERE id = ? AND desired = 'running' AND state IN ('lost', 'failed', 'stopped')`,
		errMsg, id)
	if err != nil {
		return false, fmt.Errorf("retire down worker %q: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("retire down worker %q: %w", id, err)
	}
	return n == 1, nil
}

// StopAllWorkers makes the desired state of every worker stopped, so that
// nothing starts them again, and returns how many it changed.
func (s *Store) StopAllWorkers(ctx context.Context) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE workers SET desired = 'stopped',
		next_restart_at = NULL WHERE desired = 'running'`)
	if err != nil {
		return 0, fmt.Errorf("stop all workers: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("stop all workers: %w", err)
	}
	return int(n), nil
}

func scanDeployment(r scanner) (Deployment, error) {
	var d Deployment
	var gpuLayers sql.NullInt64
	var created, updated int64
	err := r.Scan(&d.Name, &d.Model, &d.Hive, &d.Device, &d.Slots, &d.CtxSize, &gpuLayers,
		&d.Threads, &d.Restart, &d.Replicas, &created, &updated)
	if err != nil {
		return Deployment{}, err
	}
	if gpuLayers.Valid {
		n := int(gpuLayers.Int64)
		d.GPULayers = &n
	}
	d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
	return d, nil
}

// nullInt stores a nil *int as NULL.
func nullInt(p *int) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(*p), Valid: true}
}
