package hive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// Outcomes of `worker stop`, as api.StopResult names them.
const (
	outcomeExited     = "exited"
	outcomeKilled     = "killed"
	outcomeNotRunning = "not_running"
)

// killWait bounds how long stop waits for a process to vanish after SIGKILL.
const killWait = 5 * time.Second

func newWorkerCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Spawn, list and stop workers",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(newSpawnCmd(a), newListCmd(a), newStopCmd(a), newLogsCmd(a))
	return cmd
}

type listOptions struct {
	app *app
}

func newListCmd(a *app) *cobra.Command {
	opts := &listOptions{app: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List the workers this hive started, and whether they still run",
		Args:  cobra.NoArgs,
		RunE: runE(func(ctx context.Context, _ []string) error {
			return runList(ctx, opts)
		}),
	}
}

func runList(_ context.Context, opts *listOptions) error {
	st, err := openStore(false)
	if err != nil {
		return err
	}
	workers, warnings, err := st.list()
	if err != nil {
		return err
	}
	for _, w := range warnings {
		opts.app.log.Warn("skipping unreadable worker record", "error", w)
	}

	out := api.HiveWorkerList{Workers: []api.HiveWorker{}}
	for _, w := range workers {
		w.Alive = alive(w.PID, w.ID)
		w.Orphan, w.OrphanReason = false, ""
		if st, ok := st.readStatus(w.ID); ok && w.Alive {
			w.Orphan = true
			w.OrphanReason = fmt.Sprintf("the queen at %s has not known this worker since %s "+
				"(its heartbeats get %s)", st.QueenURL, st.UnknownSince.UTC().Format(time.RFC3339),
				st.LastReply)
		}
		out.Workers = append(out.Workers, w)
	}
	return opts.app.printResult(out)
}

type stopOptions struct {
	app     *app
	id      string
	timeout time.Duration
}

func newStopCmd(a *app) *cobra.Command {
	opts := &stopOptions{app: a}
	cmd := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a worker: SIGTERM, then SIGKILL after --timeout",
		Args:  exactArgs(1),
		RunE: runE(func(ctx context.Context, args []string) error {
			opts.id = args[0]
			return runStop(ctx, opts)
		}),
	}
	cmd.Flags().DurationVar(&opts.timeout, "timeout", 10*time.Second,
		"how long to wait after SIGTERM before SIGKILL")
	return cmd
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

func runStop(ctx context.Context, opts *stopOptions) error {
	if err := checkID(opts.id); err != nil {
		return err
	}
	if opts.timeout < 0 {
		return usageErrorf("--timeout must not be negative")
	}
	st, err := openStore(false)
	if err != nil {
		return err
	}
	w, err := st.read(opts.id)
	if errors.Is(err, errNoRecord) {
		return notFoundErrorf("no worker %q on this hive", opts.id)
	}
	if err != nil {
		return err
	}

	log := opts.app.log.With("worker_id", w.ID, "pid", w.PID)
	outcome, err := stopProcess(ctx, w, opts.timeout, log)
	if err != nil {
		return err
	}
	if err := st.remove(w.ID); err != nil {
		return err
	}
	log.Info("worker stopped", "outcome", outcome)
	return opts.app.printResult(api.StopResult{ID: w.ID, Outcome: outcome})
}

// stopProcess ends the worker of record w and says how it ended.
func stopProcess(ctx context.Context, w api.HiveWorker, timeout time.Duration,
	log *slog.Logger) (string, error) {
	if !alive(w.PID, w.ID) {
		return outcomeNotRunning, nil
	}

	log.Info("stopping worker", "timeout", timeout)
	if err := syscall.Kill(w.PID, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return outcomeNotRunning, nil
		}
		return "", failedErrorf("signal worker %q: %w", w.ID, err)
	}
	err := waitGone(ctx, w.PID, w.ID, timeout)
	if err == nil {
		return outcomeExited, nil
	}
	if !errors.Is(err, errStillRunning) {
		return "", failedErrorf("wait for worker %q: %w", w.ID, err)
	}

	log.Info("worker ignored SIGTERM, killing it")
	if err := killGroup(w.PID); err != nil {
		return "", failedErrorf("kill worker %q: %w", w.ID, err)
	}
	if err := waitGone(ctx, w.PID, w.ID, killWait); err != nil {
		return "", failedErrorf("worker %q (pid %d) survived SIGKILL: %w", w.ID, w.PID, err)
	}
	return outcomeKilled, nil
}
