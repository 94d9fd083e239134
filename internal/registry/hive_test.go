package registry

import (
	"context"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestCreateHive(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	assert.NilError(t, s.CreateHive(ctx, Hive{Name: "gpu1", Host: "10.0.0.5", SSHUser: "ann",
		KeyPath: "/k", Alias: "gpu1", CreatedAt: created}))

	h, err := s.Hive(ctx, "gpu1")
	assert.NilError(t, err)
	assert.DeepEqual(t, h, Hive{Name: "gpu1", Host: "10.0.0.5", SSHUser: "ann", SSHPort: 22,
		KeyPath: "/k", Alias: "gpu1", HiveBin: DefaultHiveBin, CreatedAt: created.UTC()})
	assert.Assert(t, h.Public().CheckedAt == nil)

	err = s.CreateHive(ctx, Hive{Name: "gpu1", Host: "elsewhere"})
	assert.Assert(t, is.ErrorIs(err, ErrExists))

	hives, err := s.Hives(ctx)
	assert.NilError(t, err)
	assert.Equal(t, len(hives), 2) // gpu1 and localhost
}

func TestSetHiveContact(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	assert.NilError(t, s.CreateHive(ctx, Hive{Name: "gpu1", Host: "h"}))
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	c := Contact{Reachable: true, Version: "v1", ProtocolVersion: 1, OS: "linux",
		Arch: "amd64", CheckedAt: at}
	assert.NilError(t, s.SetHiveContact(ctx, "gpu1", c))

	h, err := s.Hive(ctx, "gpu1")
	assert.NilError(t, err)
	assert.DeepEqual(t, h.Contact, c)
	assert.DeepEqual(t, *h.Public().CheckedAt, at)

	err = s.SetHiveContact(ctx, "nope", c)
	assert.Assert(t, is.ErrorIs(err, ErrNotFound))
}

func TestDeleteHive(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		hive    string
		state   api.WorkerState // of one worker on the hive; "" for none
		force   bool
		wantErr error
	}{
		{name: "no workers", hive: "gpu1"},
		{name: "stopped worker", hive: "gpu1", state: api.WorkerStopped},
		{name: "running worker", hive: "gpu1", state: api.WorkerReady, wantErr: ErrInUse},
		{name: "running worker, forced", hive: "gpu1", state: api.WorkerReady, force: true},
		{name: "unknown hive", hive: "nope", wantErr: ErrNotFound},
		{name: "local hive", hive: LocalHive, force: true, wantErr: ErrInUse},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			assert.NilError(t, s.CreateHive(ctx, Hive{Name: "gpu1", Host: "h"}))
			if tc.state != "" {
				w := newWorker("w1", created)
				w.Hive = "gpu1"
				mustCreate(t, s, w)
				assert.NilError(t, s.SetState(ctx, "w1", tc.state, ""))
				ids, err := s.ActiveWorkersOn(ctx, "gpu1")
				assert.NilError(t, err)
				assert.Equal(t, len(ids), map[bool]int{true: 0, false: 1}[tc.state == api.WorkerStopped])
			}

			err := s.DeleteHive(ctx, tc.hive, tc.force)
			if tc.wantErr != nil {
				assert.Assert(t, is.ErrorIs(err, tc.wantErr))
				return
			}
			assert.NilError(t, err)
			_, err = s.Hive(ctx, tc.hive)
			assert.Assert(t, is.ErrorIs(err, ErrNotFound))
			_, err = s.Worker(ctx, "w1")
			assert.Assert(t, is.ErrorIs(err, ErrNotFound))
		})
	}
}
