package keeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// requestTimeout bounds a plain question to the queen; healthTimeout one
// health check while polling.
const (
	requestTimeout = 30 * time.Second
	healthTimeout  = time.Second
)

func newQueenCmd(root *rootOptions) *cobra.Command {
	return groupCmd("queen", "Start, stop and inspect the queen",
		newQueenStartCmd(root),
		newQueenStatusCmd(root),
		newQueenStopCmd(root),
	)
}

type queenStartOptions struct {
	root *rootOptions

	Addr    string // host:port to listen on; default: from the queen URL
	DB      string
	Log     string
	Timeout time.Duration
}

func newQueenStartCmd(root *rootOptions) *cobra.Command {
	opts := &queenStartOptions{root: root}
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start the queen in the background, unless it already runs",
		Long: "Start queen-rbee (found next to rbee, else on $PATH) detached from this\n" +
			"terminal, and wait until it answers. Its output is appended to --log.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Timeout <= 0 {
				return usageErrorf("--timeout must be positive, not %s", opts.Timeout)
			}
			return runQueenStart(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Addr, "addr", "",
		"address to listen on, HOST:PORT (default: from the queen URL)")
	f.StringVar(&opts.DB, "db", "", "queen database file (default: the queen's own)")
	f.StringVar(&opts.Log, "log", "",
		"file the queen's output is appended to (default $XDG_STATE_HOME/rbee/queen.log)")
	f.DurationVar(&opts.Timeout, "timeout", 20*time.Second, "how long to wait until it answers")
	return cmd
}

func runQueenStart(ctx context.Context, opts *queenStartOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	configured := c.base
	addr, err := listenAddr(c.base, opts.Addr)
	if err != nil {
		return err
	}
	if opts.Addr != "" {
		c.base = "http://" + dialAddr(addr)
	}

	hctx, cancel := context.WithTimeout(ctx, healthTimeout)
	err = c.health(hctx)
	cancel()
	if err == nil {
		_, err = fmt.Fprintf(opts.root.Stdout, "queen already running at %s\n", c.base)
		return err
	}

	bin, err := findQueenBinary(os.Executable, lookPath)
	if err != nil {
		return err
	}
	logPath := opts.Log
	if logPath == "" {
		if logPath, err = defaultLogPath(opts.root.Getenv); err != nil {
			return err
		}
	}
	args := []string{"--addr", addr}
	if opts.DB != "" {
		args = append(args, "--db", opts.DB)
	}
	d, err := startDetached(bin, args, logPath)
	if err != nil {
		return err
	}
	opts.root.log.Debug("queen started", "pid", d.pid, "bin", bin, "log", logPath)

	if err := waitHealthy(ctx, c, d.pid, opts.Timeout); err != nil {
		return startFailure(ctx, err, d, c.base, opts.Timeout)
	}
	fmt.Fprintf(opts.root.Stdout, "queen running at %s (pid %d)\n", c.base, d.pid)
	if c.base != configured {
		fmt.Fprintf(opts.root.Stderr, "rbee: to reach it, set %s=%s\n", envQueenURL, c.base)
	}
	return nil
}

// listenAddr returns flagAddr when given (it must be HOST:PORT), else the
// host and port of the queen's base URL.
func listenAddr(base, flagAddr string) (string, error) {
	if flagAddr != "" {
		if _, _, err := net.SplitHostPort(flagAddr); err != nil {
			return "", usageErrorf("--addr must be HOST:PORT, not %q", flagAddr)
		}
		return flagAddr, nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parsing the queen URL: %w", err)
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// dialAddr turns a listen address into one to connect to: a wildcard host
// becomes loopback.
func dialAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// errQueenExited says the queen's process ended before it answered.
var errQueenExited = errors.New("queen-rbee exited")

// waitHealthy polls the queen's /health until it answers, its process
// pid ends, or timeout passes.
func waitHealthy(ctx context.Context, c *client, pid int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	for {
		hctx, hcancel := context.WithTimeout(ctx, healthTimeout)
		err := c.health(hctx)
		hcancel()
		if err == nil {
			return nil
		}
		if !processAlive(pid) {
			return errQueenExited
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// startFailure explains why a started queen did not come up, with what it
// wrote to its log.
func startFailure(ctx context.Context, err error, d *detached, base string,
	timeout time.Duration) error {
	if ctx.Err() != nil {
		return &interruptedError{msg: fmt.Sprintf(
			"queen-rbee (pid %d) keeps starting; its log is %s", d.pid, d.logPath)}
	}
	tail := logTail(d.logPath, d.logOffset, logTailLines)
	if errors.Is(err, errQueenExited) {
		return fmt.Errorf("queen-rbee exited before it answered at %s; %s", base, tail)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("queen-rbee (pid %d) did not answer at %s within %s; %s",
			d.pid, base, timeout, tail)
	}
	return fmt.Errorf("waiting for queen-rbee (pid %d): %w; %s", d.pid, err, tail)
}

type queenStatusOptions struct {
	root *rootOptions

	JSON bool
}

func newQueenStatusCmd(root *rootOptions) *cobra.Command {
	opts := &queenStatusOptions{root: root}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the queen runs, and how it is doing",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runQueenStatus(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

func runQueenStatus(ctx context.Context, opts *queenStatusOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var st api.QueenStatus
	if err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		return err
	}

	if opts.JSON {
		return writeJSON(opts.root.Stdout, st)
	}
	uptime := "-"
	if !st.StartedAt.IsZero() {
		uptime = max(opts.root.Now().Sub(st.StartedAt), 0).Round(time.Second).String()
	}
	tw := tabwriter.NewWriter(opts.root.Stdout, 0, 8, 1, ' ', 0)
	fmt.Fprintf(tw, "version:\t%s (protocol %d)\n", orDash(st.Version), st.ProtocolVersion)
	fmt.Fprintf(tw, "address:\t%s\n", orDash(st.Addr))
	fmt.Fprintf(tw, "pid:\t%d\n", st.PID)
	fmt.Fprintf(tw, "uptime:\t%s\n", uptime)
	fmt.Fprintf(tw, "workers:\t%d ready / %d total\n", st.ReadyWorkers, st.Workers)
	return tw.Flush()
}

type queenStopOptions struct {
	root *rootOptions

	Timeout time.Duration
	Cascade bool
	JSON    bool
}

func newQueenStopCmd(root *rootOptions) *cobra.Command {
	opts := &queenStopOptions{root: root}
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the queen; its workers keep running unless --cascade",
		Long: "Stop the queen. Workers keep running and heartbeat to the next queen. With\n" +
			"--cascade, every worker on every hive is drained first (in-flight requests\n" +
			"get up to --timeout), stopped, and recorded as stopped, so the next queen\n" +
			"starts none of them again; deployments are kept, and their replicas start\n" +
			"again with the next queen (`rbee deploy rm NAME` forgets one).",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Timeout <= 0 {
				return usageErrorf("--timeout must be positive, not %s", opts.Timeout)
			}
			return runQueenStop(cmd.Context(), opts)
		},
	}
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 10*time.Second,
		"how long to wait until it has stopped; with --cascade, also how long each worker "+
			"may drain")
	cmd.Flags().BoolVar(&opts.Cascade, "cascade", false,
		"drain and stop every worker on every hive first")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the stopped workers as JSON")
	return cmd
}

func runQueenStop(ctx context.Context, opts *queenStopOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	path, wait := "/v1/shutdown", requestTimeout
	if opts.Cascade {
		// Each worker drains up to Timeout, then its hive has stopTimeout.
		path += "?cascade=true&timeout=" + url.QueryEscape(opts.Timeout.String())
		wait += opts.Timeout
		fmt.Fprintf(opts.root.Stderr, "rbee: draining and stopping every worker (up to %s)...\n",
			opts.Timeout)
	}
	rctx, cancel := context.WithTimeout(ctx, wait)
	var res api.ShutdownResult
	err = c.do(rctx, http.MethodPost, path, nil, &res)
	cancel()
	var down *queenDownError
	if errors.As(err, &down) {
		_, err = fmt.Fprintf(opts.root.Stdout, "queen is not running at %s\n", c.base)
		return err
	}
	if err != nil {
		return err
	}
	if err := printCascade(opts, res); err != nil {
		return err
	}

	if err := waitGone(ctx, c, opts.Timeout); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("the queen at %s still answers after %s: it may be finishing "+
			"requests; run `rbee queen stop` again, or end its process", c.base, opts.Timeout)
	}
	if opts.JSON {
		return cascadeOutcome(res)
	}
	if _, err = fmt.Fprintln(opts.root.Stdout, "queen stopped"); err != nil {
		return err
	}
	return cascadeOutcome(res)
}

// printCascade writes what a cascading stop stopped: one line per worker,
// or the whole result as JSON; the workers it could not stop go to stderr.
func printCascade(opts *queenStopOptions, res api.ShutdownResult) error {
	if opts.JSON {
		if res.Workers == nil {
			res.Workers = []api.Worker{}
		}
		return writeJSON(opts.root.Stdout, res)
	}
	for _, w := range res.Workers {
		if _, err := fmt.Fprintf(opts.root.Stdout, "stopped worker %s (%s on %s)\n",
			w.ID, w.Model, w.Hive); err != nil {
			return err
		}
	}
	if len(res.KeptDeployments) > 0 {
		fmt.Fprintf(opts.root.Stderr, "rbee: deployments kept: %s; the queen starts their "+
			"replicas again when it starts (`rbee deploy rm NAME` forgets one)\n",
			strings.Join(res.KeptDeployments, ", "))
	}
	for _, e := range res.Errors {
		fmt.Fprintf(opts.root.Stderr, "rbee: %s\n", e)
	}
	return nil
}

// cascadeOutcome fails when a cascading stop left workers running.
func cascadeOutcome(res api.ShutdownResult) error {
	if len(res.Errors) == 0 {
		return nil
	}
	return fmt.Errorf("the queen stopped, but %d worker(s) could not be stopped (see above): "+
		"start the queen and run `rbee hive gc HIVE` on their hives", len(res.Errors))
}

// waitGone polls /health until nothing answers at the queen's address.
// Other failures (a dropped connection, a draining queen) keep it waiting.
func waitGone(ctx context.Context, c *client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	for {
		hctx, hcancel := context.WithTimeout(ctx, healthTimeout)
		err := c.health(hctx)
		hcancel()
		var down *queenDownError
		if errors.As(err, &down) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
