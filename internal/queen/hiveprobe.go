package queen

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// The hive probe: every remote hive is asked for its version now and then,
// so that `rbee hive list` shows a hive that went away (sshd stopped, host
// down, network cut) without anyone running a command on it, and so that
// restarts wait for a hive that cannot take them. Workers on such a hive
// keep serving: they do not depend on SSH.
const (
	// defaultHiveProbeInterval is how often each remote hive is probed.
	defaultHiveProbeInterval = 10 * time.Second
	// hiveProbeTimeout bounds one probe, connecting included: a hung host
	// counts as unreachable after it.
	hiveProbeTimeout = 5 * time.Second
)

// hiveProbeInterval is how often remote hives are probed.
func (s *Server) hiveProbeInterval() time.Duration {
	if s.cfg.HiveProbeInterval > 0 {
		return s.cfg.HiveProbeInterval
	}
	return defaultHiveProbeInterval
}

// runHiveProbe probes every remote hive each interval of the server's
// clock until ctx ends.
func (s *Server) runHiveProbe(ctx context.Context, interval time.Duration) {
	s.every(ctx, interval, s.probeHives)
}

// probeHives probes every remote hive at once and waits for all of them,
// so that one hung host delays the others by no more than hiveProbeTimeout.
func (s *Server) probeHives(ctx context.Context) {
	hives, err := s.store.Hives(ctx)
	if err != nil {
		s.log.Error("hive probe: list hives", "error", err)
		return
	}
	var wg sync.WaitGroup
	for _, h := range hives {
		if h.Local {
			continue
		}
		wg.Go(func() { s.probeHive(ctx, h) })
	}
	wg.Wait()
}

// probeHive runs `rbee-hive version` on h and records what it found.
func (s *Server) probeHive(ctx context.Context, h registry.Hive) {
	probeCtx, cancel := context.WithTimeout(ctx, hiveProbeTimeout)
	defer cancel()
	ct, _, _ := s.reach(probeCtx, s.hives, h)
	if ctx.Err() != nil {
		return // shutting down: what the probe found says nothing of the hive
	}
	if probeCtx.Err() != nil && ct.LastError != "" {
		ct.LastError = fmt.Sprintf("hive %q did not answer within %s: %s", h.Name,
			hiveProbeTimeout, ct.LastError)
	}
	s.recordContact(ctx, h, ct)
}

// recordContact stores what a contact with h found, and tells event
// subscribers when its reachability or its error changed since the last
// contact recorded.
func (s *Server) recordContact(ctx context.Context, h registry.Hive, ct registry.Contact) {
	if err := s.store.SetHiveContact(ctx, h.Name, ct); err != nil {
		s.log.Error("record hive contact", "hive", h.Name, "error", err)
		return
	}
	before := h.Contact
	if before.Reachable == ct.Reachable && before.LastError == ct.LastError &&
		!before.CheckedAt.IsZero() {
		return
	}
	if ct.Reachable {
		s.log.Info("hive reachable", "hive", h.Name, "error", ct.LastError)
	} else {
		s.log.Warn("hive unreachable", "hive", h.Name, "error", ct.LastError)
	}
	s.hiveEvent(h.Name, ct.Reachable, ct.LastError)
}

// markUnreachable records that a command on h could not reach it, when
// err says so, so that restarts wait for the probe to find it back.
func (s *Server) markUnreachable(ctx context.Context, h registry.Hive, err error) {
	if h.Local {
		return
	}
	switch httpapi.AsError(err).Code {
	case "hive_unreachable", "hive_timeout":
	default:
		return
	}
	s.hives.setVerified(h.Name, false)
	ct := h.Contact
	ct.Reachable, ct.LastError, ct.CheckedAt = false, httpapi.AsError(err).Message, time.Now()
	s.recordContact(ctx, h, ct)
}

// hiveWait says why a restart on h must wait, or "" when it need not: the
// last contact with the remote hive failed to reach it.
func hiveWait(h registry.Hive) string {
	if h.Local || h.Contact.CheckedAt.IsZero() || h.Contact.Reachable {
		return ""
	}
	return fmt.Sprintf("waiting for hive %s: %s", h.Name,
		orText(h.Contact.LastError, "unreachable"))
}
