package queen

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// probeSetup is a queen on a fake clock with one remote hive, gpu1, served
// by a real sshd that has no rbee-hive installed: reachable, and saying so.
type probeSetup struct {
	s     *Server
	clock *heartbeat.FakeClock
	sshd  *sshtest.Server

	mu    sync.Mutex
	calls []string // hive commands run, as "hive: args"
}

func newProbeSetup(t *testing.T) *probeSetup {
	t.Helper()
	sshd := sshtest.StartServer(t, "127.0.0.2")
	dir := t.TempDir()
	knownHosts := filepath.Join(dir, "known_hosts")
	assert.NilError(t, os.WriteFile(knownHosts, []byte(sshd.KnownHostsLine()+"\n"), 0o600))
	clock := heartbeat.NewFakeClock(restartStart)
	cfg := Config{Addr: "127.0.0.1:0", DBPath: filepath.Join(dir, "queen.db"), Clock: clock,
		KnownHostsPath: knownHosts, SSHConnectTimeout: 2 * time.Second}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	s.jitter = func() float64 { return 0 }

	p := &probeSetup{s: s, clock: clock, sshd: sshd}
	s.hives.observe = func(hive string, args []string, _ time.Duration) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.calls = append(p.calls, hive+": "+strings.Join(args, " "))
	}
	assert.NilError(t, s.store.CreateHive(context.Background(), registry.Hive{Name: "gpu1",
		Host: sshd.Addr, SSHPort: sshd.Port, SSHUser: sshd.User, KeyPath: sshd.ClientKeyPath,
		HiveBin: registry.DefaultHiveBin}))
	return p
}

// takeCalls returns the hive commands run since the last call.
func (p *probeSetup) takeCalls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	calls := p.calls
	p.calls = nil
	return calls
}

func (p *probeSetup) hive(t *testing.T) registry.Hive {
	t.Helper()
	h, err := p.s.store.Hive(context.Background(), "gpu1")
	assert.NilError(t, err)
	return h
}

// hiveEvents drains the hive events sub holds.
func hiveEvents(sub *subscriber) []api.Event {
	var out []api.Event
	for {
		select {
		case ev := <-sub.events:
			if ev.Type == api.EventHive {
				out = append(out, ev)
			}
		default:
			return out
		}
	}
}

func TestHiveProbeFollowsReachability(t *testing.T) {
	p := newProbeSetup(t)
	ctx := context.Background()
	sub := p.s.events.subscribe(64)

	p.s.probeHives(ctx)
	h := p.hive(t)
	assert.Check(t, h.Contact.Reachable, "sshd answers, though rbee-hive is missing")
	assert.Check(t, is.Contains(h.Contact.LastError, "rbee hive install gpu1"))
	assert.Equal(t, len(hiveEvents(sub)), 1, "the first contact is news")
	p.s.probeHives(ctx)
	assert.Equal(t, len(hiveEvents(sub)), 0, "nothing changed: no event")

	p.sshd.Stop()
	p.s.probeHives(ctx)
	h = p.hive(t)
	assert.Check(t, !h.Contact.Reachable)
	assert.Check(t, is.Contains(h.Contact.LastError, `hive "gpu1"`))
	evs := hiveEvents(sub)
	assert.Equal(t, len(evs), 1)
	assert.Check(t, !*evs[0].Reachable)
	assert.Equal(t, evs[0].Reason, h.Contact.LastError)
	p.s.probeHives(ctx)
	assert.Equal(t, len(hiveEvents(sub)), 0)

	p.sshd.Start()
	p.s.probeHives(ctx)
	assert.Check(t, p.hive(t).Contact.Reachable)
	evs = hiveEvents(sub)
	assert.Equal(t, len(evs), 1)
	assert.Check(t, *evs[0].Reachable)
}

func TestRestartWaitsForUnreachableHive(t *testing.T) {
	p := newProbeSetup(t)
	ctx := context.Background()
	wk := registry.Worker{
		Worker: api.Worker{ID: "w-1", Hive: "gpu1", Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, CreatedAt: restartStart, Restart: api.RestartAlways},
		Token: "old-token", ReadyAt: restartStart,
	}
	assert.NilError(t, p.s.store.CreateWorker(ctx, wk))
	assert.NilError(t, endings["lost"](ctx, p.s.store, "w-1"))
	p.sshd.Stop()
	p.s.probeHives(ctx)
	p.takeCalls()

	// The restart falls due, and waits: nothing is tried on the hive.
	p.s.reconcile(ctx)
	p.clock.Advance(backoffBase)
	p.s.reconcile(ctx)
	p.s.reconcile(ctx)
	assert.Equal(t, len(p.takeCalls()), 0)
	got, err := p.s.store.Worker(ctx, "w-1")
	assert.NilError(t, err)
	assert.Equal(t, got.State, api.WorkerLost)
	assert.Check(t, is.Contains(got.RestartReason, "waiting for hive gpu1: "), got.RestartReason)
	assert.Check(t, !got.NextRestart.After(p.clock.Now()), "still due")

	// Back: the next pass goes to the hive at once (here to find rbee-hive
	// missing, which the restart's backoff then handles).
	p.sshd.Start()
	p.s.probeHives(ctx)
	p.takeCalls()
	p.s.reconcile(ctx)
	assert.Assert(t, len(p.takeCalls()) > 0, "the restart did not resume")
}

func TestFailedRestartMarksHiveUnreachable(t *testing.T) {
	p := newProbeSetup(t)
	ctx := context.Background()
	wk := registry.Worker{
		Worker: api.Worker{ID: "w-1", Hive: "gpu1", Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, CreatedAt: restartStart, Restart: api.RestartAlways},
		Token: "old-token", ReadyAt: restartStart,
	}
	assert.NilError(t, p.s.store.CreateWorker(ctx, wk))
	assert.NilError(t, endings["lost"](ctx, p.s.store, "w-1"))
	p.sshd.Stop() // before any probe: the queen does not know yet

	p.s.reconcile(ctx)
	p.clock.Advance(backoffBase)
	p.s.reconcile(ctx) // tries, and learns the hive is down
	assert.Assert(t, len(p.takeCalls()) > 0)
	h := p.hive(t)
	assert.Check(t, !h.Contact.Reachable)
	assert.Check(t, is.Contains(h.Contact.LastError, `hive "gpu1"`))

	p.clock.Advance(time.Minute) // past any backoff
	p.s.reconcile(ctx)
	assert.Equal(t, len(p.takeCalls()), 0, "a known unreachable hive is not tried")
	got, err := p.s.store.Worker(ctx, "w-1")
	assert.NilError(t, err)
	assert.Check(t, is.Contains(got.RestartReason, "waiting for hive gpu1: "))
}
