// Package queen is the queen-rbee daemon: the single source of truth for
// hives and workers (a SQLite registry), the receiver of worker heartbeats,
// and the router that sends each inference request to a ready worker with a
// free slot and streams the answer back.
package queen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
	"github.com/rbee-dev/rbee/internal/version"
)

// Config is how the queen is started.
type Config struct {
	Addr              string // listen address, host:port
	DBPath            string
	HiveBin           string // rbee-hive on the local hive
	HeartbeatInterval time.Duration
	QueueLimit        int
	QueueWait         time.Duration
	Clock             heartbeat.Clock // nil: the real clock

	// HeartbeatMaxRate is the most heartbeats per second the whole fleet
	// is asked to send; the interval grows with the fleet to keep under
	// it. 0: heartbeat.DefaultMaxBeatsPerSecond.
	HeartbeatMaxRate float64

	// AdvertiseURL is where workers on remote hives reach this queen
	// (--advertise-url); empty: the listening address, when it is usable.
	AdvertiseURL string
	// InstallBinDir holds the rbee-hive and llm-worker-rbee that
	// `rbee hive install` copies (default: beside queen-rbee).
	InstallBinDir string
	// SSHConnectTimeout bounds connecting to a hive; 0: sshexec's default.
	SSHConnectTimeout time.Duration
	// SSHConfigPath is the ssh_config that aliases are read from; empty:
	// ~/.ssh/config.
	SSHConfigPath string
	// KnownHostsPath is rbee's known_hosts file; empty: sshexec's default.
	KnownHostsPath string
	// EventBuffer is how many events a subscriber may fall behind before
	// it is dropped; 0: 256. SummaryInterval is how often the summary
	// event goes out; 0: 2s. Tests set both small (hidden flags).
	EventBuffer     int
	SummaryInterval time.Duration
	// HiveProbeInterval is how often each remote hive is probed for
	// reachability; 0: 10s. Tests set it small (hidden flag).
	HiveProbeInterval time.Duration
}

// Server is a running queen.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   *registry.Store
	tracker *heartbeat.Tracker
	router  *router
	live    *liveStats
	hives   *hiveClient
	keys    *keyring
	metrics *metrics
	events  *eventHub
	// deploys is the in-memory side of deployments (deploy.go).
	deploys deployState

	// hbIndex and hbWriter keep heartbeats off SQLite (see heartbeats.go).
	hbIndex  *hbIndex
	hbWriter *hbWriter

	// clock drives heartbeat deadlines and restarts; jitter returns a
	// number in [0, 1) that spreads restart backoffs.
	clock  heartbeat.Clock
	jitter func() float64
	// pingInterval is how often event subscribers are pinged; 0: the default.
	pingInterval time.Duration
	startedAt    time.Time
	queenURL     string // how workers on the local hive reach this queen

	// shutdown is called by POST /v1/shutdown.
	shutdown context.CancelFunc
	client   *http.Client
}

// newServer opens the registry and restores what the queen knew before.
func newServer(cfg Config, log *slog.Logger, queenURL string) (*Server, error) {
	store, err := registry.Open(cfg.DBPath)
	if err != nil {
		return nil, err
	}
	clock := cfg.Clock
	if clock == nil {
		clock = heartbeat.RealClock()
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		store:     store,
		router:    newRouter(),
		hbIndex:   newHBIndex(),
		live:      newLiveStats(),
		events:    newEventHub(log),
		clock:     clock,
		jitter:    rand.Float64,
		hives:     &hiveClient{bin: cfg.HiveBin, local: sshexec.Local{}},
		startedAt: time.Now(),
		queenURL:  queenURL,
		// No overall timeout: completions stream for as long as they run;
		// each request is bounded by its own context instead.
		client: &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		}},
	}
	s.hives.pool = sshexec.NewPool(s.sshConfig(false))
	s.metrics = newMetrics(s)
	s.hives.observe = s.metrics.hiveCall
	if cfg.QueueLimit > 0 {
		s.router.queueLimit = cfg.QueueLimit
	}
	if cfg.QueueWait > 0 {
		s.router.queueWait = cfg.QueueWait
	}
	s.tracker = heartbeat.NewTracker(heartbeat.TrackerConfig{Interval: cfg.HeartbeatInterval,
		MaxBeatsPerSecond: cfg.HeartbeatMaxRate, Jitter: heartbeat.DefaultJitter},
		clock, s.workerLost)
	if err := s.restore(context.Background()); err != nil {
		s.hives.pool.Close()
		store.Close()
		return nil, err
	}
	loopback, _ := isLoopback(cfg.Addr) // a bad address: closed, and refused by run
	if s.keys, err = loadKeyring(context.Background(), store, log, loopback); err != nil {
		s.hives.pool.Close()
		store.Close()
		return nil, err
	}
	s.hbWriter = startHBWriter(store, log, hbFlushInterval)
	return s, nil
}

// restore reloads the workers that were alive when the queen last ran.
// Each gets a long first deadline, so a queen restart never marks a
// healthy fleet lost: workers keep heartbeating and are routable again at
// their next beat.
func (s *Server) restore(ctx context.Context) error {
	workers, err := s.store.Workers(ctx, false)
	if err != nil {
		return fmt.Errorf("load workers: %w", err)
	}
	s.hbIndex.load(workers)
	for _, w := range workers {
		if w.State == api.WorkerFailed {
			continue
		}
		s.router.update(w.ID, w.Model, w.URL, w.Token, w.State, w.Slots)
		s.tracker.Arm(w.ID)
	}
	if len(workers) > 0 {
		s.log.Info("restored workers", "count", len(workers))
	}
	return nil
}

// Close releases the registry and stops the deadline timers.
func (s *Server) Close() error {
	s.tracker.Stop()
	s.hbWriter.close() // the heartbeats not written yet
	s.keys.close()
	if err := s.hives.pool.Close(); err != nil {
		s.log.Warn("closing ssh connections", "error", err)
	}
	return s.store.Close()
}

// sshConfig is how the queen connects to hives; acceptNew records the key
// of a host seen for the first time (`rbee hive add --accept-new-host-key`).
func (s *Server) sshConfig(acceptNew bool) sshexec.Config {
	return sshexec.Config{KnownHostsPath: s.cfg.KnownHostsPath, AcceptNewHostKey: acceptNew,
		ConnectTimeout: s.cfg.SSHConnectTimeout,
		Logger:         s.log.With("component", "ssh")}
}

// Serve listens on ln until ctx ends or /v1/shutdown is called, then
// drains open requests for a bounded time.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.shutdown = cancel
	s.deploys.lifetime = ctx
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	summaries := make(chan struct{})
	go func() { defer close(summaries); s.runSummaries(ctx, s.summaryInterval()) }()
	defer func() { <-summaries }()
	// Scale-down drains end after the reconcile loop, cut short by ctx.
	defer s.deploys.drains.Wait()
	reconciled := make(chan struct{})
	go func() { defer close(reconciled); s.runReconcile(ctx, reconcileInterval) }()
	defer func() { cancel(); <-reconciled }()
	probed := make(chan struct{})
	go func() { defer close(probed); s.runHiveProbe(ctx, s.hiveProbeInterval()) }()
	defer func() { cancel(); <-probed }()
	// Event streams are hijacked connections that Shutdown does not wait
	// for: let go of them first, with a close reason.
	srv.RegisterOnShutdown(s.events.close)
	s.log.Info("queen listening", "addr", ln.Addr().String(), "version", version.Version,
		"pid", os.Getpid())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("queen stopping")
	// No heartbeat reaches a queen that drains: stop the deadlines first,
	// or it would mark every worker lost, and the next queen would start
	// with none routable.
	s.tracker.Stop()
	drainCtx, drainCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer drainCancel()
	err := srv.Shutdown(drainCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("drain timed out, closing open streams")
		return srv.Close()
	}
	return err
}
