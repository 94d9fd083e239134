package registry

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// created is a fixed creation time with a non-UTC zone and nanoseconds, to
// check that times come back in UTC at full precision.
var created = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))

// newWorker returns a worker ready to pass to CreateWorker.
func newWorker(id string, createdAt time.Time) Worker {
	return Worker{
		Worker: api.Worker{
			ID:        id,
			Hive:      LocalHive,
			Model:     "tinyllama",
			ModelPath: "/models/tinyllama.gguf",
			Device:    "cpu",
			Slots:     2,
			CreatedAt: createdAt,
		},
		Token:   "secret-" + id,
		CtxSize: 4096,
	}
}

// mustCreate records workers or fails the test.
func mustCreate(t *testing.T, s *Store, ws ...Worker) {
	t.Helper()
	for _, w := range ws {
		assert.NilError(t, s.CreateWorker(context.Background(), w))
	}
}

func TestCreateAndGetWorker(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	in := newWorker("w1", created)
	in.State = api.WorkerReady // ignored: a new worker is starting

	assert.NilError(t, s.CreateWorker(ctx, in))

	got, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	want := in
	want.State = api.WorkerStarting
	want.Desired = DesiredRunning
	want.Restart = api.RestartOnFailure
	want.CreatedAt = created.UTC()
	assert.DeepEqual(t, got, want)
	assert.Equal(t, got.CreatedAt.Location(), time.UTC)
	assert.Check(t, got.LastHeartbeat.IsZero())
}

func TestCreateWorkerDefaultsCreatedAt(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	before := time.Now()

	mustCreate(t, s, newWorker("w1", time.Time{}))

	got, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, !got.CreatedAt.Before(before.Round(0)))
	assert.Equal(t, got.CreatedAt.Location(), time.UTC)
}

func TestCreateWorkerErrors(t *testing.T) {
	tests := []struct {
		name    string
		worker  func() Worker
		is      error
		wantErr string
	}{
		{
			name:    "duplicate id",
			worker:  func() Worker { return newWorker("taken", created) },
			is:      ErrExists,
			wantErr: `"taken"`,
		},
		{
			name: "unknown hive",
			worker: func() Worker {
				w := newWorker("w2", created)
				w.Hive = "nowhere"
				return w
			},
			is:      ErrNotFound,
			wantErr: `hive "nowhere"`,
		},
		{
			name:    "empty id",
			worker:  func() Worker { return newWorker("", created) },
			wantErr: "empty id",
		},
		{
			name: "bad desired state",
			worker: func() Worker {
				w := newWorker("w3", created)
				w.Desired = "paused"
				return w
			},
			wantErr: "unknown desired state",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTemp(t)
			mustCreate(t, s, newWorker("taken", created))

			err := s.CreateWorker(ctx, tc.worker())
			assert.ErrorContains(t, err, tc.wantErr)
			if tc.is != nil {
				assert.Check(t, errors.Is(err, tc.is), "got %v", err)
			}

			ws, err := s.Workers(ctx, true)
			assert.NilError(t, err)
			assert.Check(t, is.Len(ws, 1), "nothing new is recorded")
		})
	}
}

func TestWorkersOrderAndFilter(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	t0 := created
	mustCreate(t, s,
		newWorker("c", t0.Add(2*time.Second)),
		newWorker("b", t0),
		newWorker("a", t0), // same time as b: ordered by id
		newWorker("d", t0.Add(time.Second)),
	)
	assert.NilError(t, s.SetState(ctx, "d", api.WorkerStopped, ""))

	tests := []struct {
		name           string
		includeStopped bool
		want           []string
	}{
		{name: "running only", includeStopped: false, want: []string{"a", "b", "c"}},
		{name: "with stopped", includeStopped: true, want: []string{"a", "b", "d", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws, err := s.Workers(ctx, tc.includeStopped)
			assert.NilError(t, err)
			var ids []string
			for _, w := range ws {
				ids = append(ids, w.ID)
			}
			assert.DeepEqual(t, ids, tc.want)
		})
	}
}

func TestWorkersEmpty(t *testing.T) {
	s, _ := openTemp(t)

	ws, err := s.Workers(context.Background(), true)
	assert.NilError(t, err)
	assert.Check(t, is.Len(ws, 0))
}

func TestUpdates(t *testing.T) {
	beat := time.Date(2025, 3, 14, 16, 0, 0, 123456789, time.FixedZone("X", -7*3600))
	tests := []struct {
		name   string
		update func(ctx context.Context, s *Store) error
		want   func(w *Worker)
	}{
		{
			name: "spawned",
			update: func(ctx context.Context, s *Store) error {
				return s.SetSpawned(ctx, "w1", 4242, "http://127.0.0.1:9001", "/logs/w1.log")
			},
			want: func(w *Worker) {
				w.PID, w.URL, w.LogPath = 4242, "http://127.0.0.1:9001", "/logs/w1.log"
			},
		},
		{
			name: "failed with a reason",
			update: func(ctx context.Context, s *Store) error {
				return s.SetState(ctx, "w1", api.WorkerFailed, "out of memory")
			},
			want: func(w *Worker) { w.State, w.Error = api.WorkerFailed, "out of memory" },
		},
		{
			name: "stopped is also desired stopped",
			update: func(ctx context.Context, s *Store) error {
				return s.SetState(ctx, "w1", api.WorkerStopped, "")
			},
			want: func(w *Worker) { w.State, w.Desired = api.WorkerStopped, DesiredStopped },
		},
		{
			name: "lost keeps desired",
			update: func(ctx context.Context, s *Store) error {
				return s.SetState(ctx, "w1", api.WorkerLost, "")
			},
			want: func(w *Worker) { w.State = api.WorkerLost },
		},
		{
			name: "heartbeat",
			update: func(ctx context.Context, s *Store) error {
				return s.RecordHeartbeat(ctx, "w1", api.Heartbeat{
					WorkerID: "w1", State: api.WorkerReady, URL: "http://10.0.0.5:9001",
					SlotsTotal: 2, SlotsBusy: 1,
				}, beat)
			},
			want: func(w *Worker) {
				w.State, w.URL, w.SlotsBusy = api.WorkerReady, "http://10.0.0.5:9001", 1
				w.LastHeartbeat, w.ReadyAt = beat.UTC(), beat.UTC()
			},
		},
		{
			name: "heartbeat without url keeps it",
			update: func(ctx context.Context, s *Store) error {
				err := s.SetSpawned(ctx, "w1", 7, "http://127.0.0.1:9001", "/l")
				if err != nil {
					return err
				}
				return s.RecordHeartbeat(ctx, "w1", api.Heartbeat{
					State: api.WorkerLoading, Error: "still loading",
				}, beat)
			},
			want: func(w *Worker) {
				w.PID, w.URL, w.LogPath = 7, "http://127.0.0.1:9001", "/l"
				w.State, w.Error, w.LastHeartbeat = api.WorkerLoading, "still loading", beat.UTC()
			},
		},
		{
			name: "goodbye heartbeat",
			update: func(ctx context.Context, s *Store) error {
				return s.RecordHeartbeat(ctx, "w1", api.Heartbeat{State: api.WorkerStopped}, beat)
			},
			want: func(w *Worker) {
				w.State, w.Desired, w.LastHeartbeat = api.WorkerStopped, DesiredStopped, beat.UTC()
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTemp(t)
			mustCreate(t, s, newWorker("w1", created))
			want, err := s.Worker(ctx, "w1")
			assert.NilError(t, err)

			assert.NilError(t, tc.update(ctx, s))

			got, err := s.Worker(ctx, "w1")
			assert.NilError(t, err)
			tc.want(&want)
			assert.DeepEqual(t, got, want)
		})
	}
}

func TestUnknownStateRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created))

	err := s.SetState(ctx, "w1", "sleeping", "")
	assert.ErrorContains(t, err, "unknown state")
	err = s.RecordHeartbeat(ctx, "w1", api.Heartbeat{State: ""}, created)
	assert.ErrorContains(t, err, "unknown state")
}

func TestWorkerNotFound(t *testing.T) {
	hb := api.Heartbeat{State: api.WorkerReady}
	tests := []struct {
		name string
		op   func(ctx context.Context, s *Store) error
	}{
		{name: "get", op: func(ctx context.Context, s *Store) error {
			_, err := s.Worker(ctx, "ghost")
			return err
		}},
		{name: "set spawned", op: func(ctx context.Context, s *Store) error {
			return s.SetSpawned(ctx, "ghost", 1, "http://x", "/l")
		}},
		{name: "set state", op: func(ctx context.Context, s *Store) error {
			return s.SetState(ctx, "ghost", api.WorkerLost, "")
		}},
		{name: "heartbeat", op: func(ctx context.Context, s *Store) error {
			return s.RecordHeartbeat(ctx, "ghost", hb, time.Now())
		}},
		{name: "delete", op: func(ctx context.Context, s *Store) error {
			return s.DeleteWorker(ctx, "ghost")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			mustCreate(t, s, newWorker("w1", created))

			err := tc.op(context.Background(), s)
			assert.Check(t, errors.Is(err, ErrNotFound), "got %v", err)
			assert.ErrorContains(t, err, `"ghost"`)
		})
	}
}

func TestDeleteWorker(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", created), newWorker("w2", created))

	assert.NilError(t, s.DeleteWorker(ctx, "w1"))

	_, err := s.Worker(ctx, "w1")
	assert.Check(t, errors.Is(err, ErrNotFound))
	ws, err := s.Workers(ctx, true)
	assert.NilError(t, err)
	assert.Check(t, is.Len(ws, 1))
	assert.Equal(t, ws[0].ID, "w2")

	err = s.DeleteWorker(ctx, "w1")
	assert.Check(t, errors.Is(err, ErrNotFound), "a second delete finds nothing")
}

func TestDataSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queen.db")
	beat := created.Add(time.Minute)

	s, err := Open(path)
	assert.NilError(t, err)
	mustCreate(t, s, newWorker("w1", created))
	assert.NilError(t, s.SetSpawned(ctx, "w1", 99, "http://127.0.0.1:9001", "/l"))
	hb := api.Heartbeat{State: api.WorkerReady, SlotsBusy: 2}
	assert.NilError(t, s.RecordHeartbeat(ctx, "w1", hb, beat))
	before, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.NilError(t, s.Close())

	s, err = Open(path)
	assert.NilError(t, err)
	defer s.Close()
	after, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.DeepEqual(t, after, before)
	assert.Equal(t, after.LastHeartbeat, beat.UTC())
	assert.Equal(t, after.Token, "secret-w1")
}

func TestConcurrentStoresOnOneFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queen.db")
	a, err := Open(path)
	assert.NilError(t, err)
	defer a.Close()
	b, err := Open(path)
	assert.NilError(t, err)
	defer b.Close()
	mustCreate(t, a, newWorker("w1", created))

	done := make(chan error, 2)
	for _, s := range []*Store{a, b} {
		go func() {
			var err error
			for i := range 50 {
				hb := api.Heartbeat{State: api.WorkerReady, SlotsBusy: i}
				if err = s.RecordHeartbeat(ctx, "w1", hb, time.Now()); err != nil {
					break
				}
			}
			done <- err
		}()
	}
	assert.NilError(t, <-done)
	assert.NilError(t, <-done)
}

func TestAdvanceStateOnlyFromTheStateGiven(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	mustCreate(t, s, newWorker("w1", time.Now()))

	moved, err := s.AdvanceState(ctx, "w1", api.WorkerStarting, api.WorkerLoading)
	assert.NilError(t, err)
	assert.Check(t, moved)
	assert.NilError(t, s.SetState(ctx, "w1", api.WorkerReady, ""))
	moved, err = s.AdvanceState(ctx, "w1", api.WorkerStarting, api.WorkerLoading)
	assert.NilError(t, err)
	assert.Check(t, !moved, "a ready worker is not moved back to loading")
	w, err := s.Worker(ctx, "w1")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(w.State, api.WorkerReady))
}
