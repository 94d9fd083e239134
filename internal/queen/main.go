package queen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/registry"
)

// DefaultAddr is where the queen listens unless told otherwise.
const DefaultAddr = "127.0.0.1:7833"

// Main runs queen-rbee until SIGTERM, SIGINT or POST /v1/shutdown and
// returns its exit code.
func Main(args []string, stderr io.Writer) int {
	cfg, verbose, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "queen-rbee: %v\n", err)
		return 2
	}
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "queen-rbee: %v\n", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := checkListenAddr(ctx, cfg.Addr, cfg.DBPath); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another queen running? `rbee queen status`)", cfg.Addr, err)
	}
	srv, err := newServer(cfg, log, "http://"+ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	defer srv.Close()
	return srv.Serve(ctx, ln)
}

func parseFlags(args []string, stderr io.Writer) (Config, bool, error) {
	cfg := Config{}
	var verbose bool
	fs := flag.NewFlagSet("queen-rbee", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Addr, "addr", defaultAddr(), "address to listen on (default from RBEE_QUEEN_URL)")
	fs.StringVar(&cfg.DBPath, "db", defaultDBPath(), "SQLite file holding the queen's state")
	fs.StringVar(&cfg.HiveBin, "hive-bin", "", "rbee-hive program for the local hive (default: beside queen-rbee, else PATH)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 2*time.Second, "how often workers beat, in a small fleet")
	fs.Float64Var(&cfg.HeartbeatMaxRate, "heartbeat-max-rate", heartbeat.DefaultMaxBeatsPerSecond,
		"most heartbeats per second from the whole fleet: a large fleet is asked to beat less often")
	fs.IntVar(&cfg.QueueLimit, "queue-limit", defaultQueueLimit, "requests that may wait per model when all slots are busy")
	fs.DurationVar(&cfg.QueueWait, "queue-wait", defaultQueueWait, "how long a request may wait for a slot")
	fs.StringVar(&cfg.AdvertiseURL, "advertise-url", os.Getenv("RBEE_QUEEN_ADVERTISE_URL"),
		"URL workers on remote hives reach this queen at (default $RBEE_QUEEN_ADVERTISE_URL)")
	fs.StringVar(&cfg.InstallBinDir, "install-bin-dir", "",
		"where `rbee hive install` takes rbee-hive and llm-worker-rbee from (default: beside queen-rbee)")
	fs.DurationVar(&cfg.SSHConnectTimeout, "ssh-connect-timeout", 5*time.Second,
		"how long connecting to a hive over SSH may take")
	fs.BoolVar(&verbose, "verbose", false, "debug logs (every request and heartbeat)")
	// Hidden: for tests of slow event consumers.
	fs.IntVar(&cfg.EventBuffer, "event-buffer", defaultEventBuffer,
		"events a subscriber may fall behind before it is dropped")
	fs.DurationVar(&cfg.SummaryInterval, "summary-interval", defaultSummaryInterval,
		"how often the summary event goes out")
	// Hidden: for tests of hives that go away.
	fs.DurationVar(&cfg.HiveProbeInterval, "hive-probe-interval", defaultHiveProbeInterval,
		"how often each remote hive is probed for reachability")
	fs.Usage = func() { usage(fs, stderr, "event-buffer", "summary-interval", "hive-probe-interval") }
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	}
	if fs.NArg() > 0 {
		return cfg, false, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.HeartbeatInterval < 100*time.Millisecond {
		return cfg, false, fmt.Errorf("--heartbeat-interval must be at least 100ms, got %s", cfg.HeartbeatInterval)
	}
	if cfg.HiveProbeInterval <= 0 {
		return cfg, false, fmt.Errorf("--hive-probe-interval must be positive, got %s", cfg.HiveProbeInterval)
	}
	if cfg.EventBuffer < 1 || cfg.SummaryInterval <= 0 {
		return cfg, false, fmt.Errorf("--event-buffer and --summary-interval must be positive")
	}
	if cfg.HiveBin == "" {
		cfg.HiveBin = siblingOrPath("rbee-hive")
	}
	if err := checkAdvertiseURL(cfg.AdvertiseURL); err != nil {
		return cfg, false, err
	}
	cfg.AdvertiseURL = strings.TrimRight(cfg.AdvertiseURL, "/")
	if cfg.InstallBinDir == "" {
		if exe, err := os.Executable(); err == nil {
			cfg.InstallBinDir = filepath.Dir(exe)
		}
	}
	return cfg, verbose, nil
}

// usage prints fs's flags except the hidden ones.
func usage(fs *flag.FlagSet, w io.Writer, hidden ...string) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(w)
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(hidden, f.Name) {
			shown.Var(f.Value, f.Name, f.Usage)
		}
	})
	fmt.Fprintf(w, "Usage of %s:\n", fs.Name())
	shown.PrintDefaults()
}

// checkListenAddr refuses an address beyond loopback unless the registry at
// dbPath holds an admin key: without one, nobody could use or manage a
// queen that other machines reach, and a queen without keys is open.
func checkListenAddr(ctx context.Context, addr, dbPath string) error {
	loopback, err := isLoopback(addr)
	if err != nil || loopback {
		return err
	}
	store, err := registry.Open(dbPath)
	if err != nil {
		return err
	}
	defer store.Close()
	ok, err := store.HasAdminKey(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("refusing to listen on %s: it reaches beyond this machine, and "+
			"the queen has no admin API key yet. Start it on 127.0.0.1, run "+
			"`rbee key create --name admin --scope admin`, then restart it with --addr %s",
			addr, addr)
	}
	return nil
}

// isLoopback reports whether addr (host:port) listens on loopback only.
func isLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("--addr %q: want host:port: %w", addr, err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// defaultAddr takes host:port from RBEE_QUEEN_URL, else DefaultAddr.
func defaultAddr() string {
	if raw := os.Getenv("RBEE_QUEEN_URL"); raw != "" {
		if u, err := url.Parse(raw); err == nil && u.Host != "" {
			return u.Host
		}
	}
	return DefaultAddr
}

// defaultDBPath is $XDG_DATA_HOME/rbee/queen.db.
func defaultDBPath() string {
	dir := os.Getenv("XDG_DATA_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(dir, "rbee", "queen.db")
}

// siblingOrPath finds a program next to this executable, else on PATH,
// else returns the bare name (the error then names it when used).
func siblingOrPath(name string) string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

// checkAdvertiseURL accepts an empty URL or an http(s) URL with a host.
func checkAdvertiseURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") {
		return fmt.Errorf("--advertise-url %q: want http://HOST:PORT", raw)
	}
	return nil
}
