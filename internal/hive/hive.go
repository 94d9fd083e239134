// Package hive implements rbee-hive, the short-lived command that the queen
// runs on each GPU node to start, list and stop workers. Every command
// prints exactly one JSON document on stdout (its result, or an
// api.HiveError), logs for people on stderr, and exits with one of the
// api.HiveExit* codes. It keeps no state beyond files in its state dir.
//
// The exit codes, by cause:
//
//	0 HiveExitOK        the command did what it was asked
//	1 HiveExitFailed    the worker did not get ready (it exited, closed its
//	                    ready pipe, wrote a bad ready line, or timed out), the
//	                    worker binary is missing, or state files failed
//	2 HiveExitUsage     bad flags or arguments, no or a bad token on stdin, a
//	                    model that is not a regular GGUF file, a worker id that
//	                    is already running
//	3 HiveExitNotFound  the model file, or the worker id to stop, does not exist
//	4 HiveExitNoFit     the model needs more memory than the device has free, or
//	                    the GPU asked for is absent (worker spawn)
//
// --help prints to stderr and leaves stdout empty.
package hive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// Main runs rbee-hive with args (without the program name) on the given
// streams and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// SIGHUP arrives when the SSH session of the caller goes away: a spawn
	// in progress then kills the worker it was starting.
	ctx, stop := signal.NotifyContext(context.Background(),
		os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	a := &app{
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		log:    slog.New(slog.NewTextHandler(stderr, nil)),
	}
	root := newRootCmd(a)
	if args == nil {
		args = []string{} // cobra reads os.Args for a nil slice
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stderr) // help and usage are for people
	root.SetErr(stderr)

	return a.exit(root.ExecuteContext(ctx))
}

// app holds what every command shares: the injected streams and the logger.
type app struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "rbee-hive",
		Short:         "Manage the rbee workers of this node",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRunE,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newVersionCmd(a), newWorkerCmd(a), newModelCmd(a), newDevicesCmd(a))
	return root
}

// groupRunE runs for a command group given no known subcommand.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return usageErrorf("missing command; see %s --help", cmd.CommandPath())
}

// runE adapts a command's run function for cobra. An error that carries no
// exit code is a failure of the command itself (HiveExitFailed); every
// error that does not pass through here comes from cobra's parsing of
// flags and arguments, which exit reads as a usage error.
func runE(run func(ctx context.Context, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := run(cmd.Context(), args)
		if err == nil {
			return nil
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		return &exitError{code: api.HiveExitFailed, err: err}
	}
}

// printResult writes v as the one JSON document on stdout.
func (a *app) printResult(v any) error {
	if err := json.NewEncoder(a.stdout).Encode(v); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// exitError is an error with the exit code it ends the hive with.
type exitError struct {
	code int
	err  error
	// logTail holds the last lines a worker wrote, for a failed spawn.
	logTail []string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: api.HiveExitUsage, err: fmt.Errorf(format, args...)}
}

func notFoundErrorf(format string, args ...any) error {
	return &exitError{code: api.HiveExitNotFound, err: fmt.Errorf(format, args...)}
}

func failedErrorf(format string, args ...any) error {
	return &exitError{code: api.HiveExitFailed, err: fmt.Errorf(format, args...)}
}

// exit is the one place that turns an error into an exit code: it prints
// the api.HiveError on stdout and a line for people on stderr.
func (a *app) exit(err error) int {
	if err == nil {
		return api.HiveExitOK
	}

	var ee *exitError
	if !errors.As(err, &ee) {
		ee = &exitError{code: api.HiveExitUsage, err: err}
	}

	out := api.HiveError{Error: err.Error(), LogTail: ee.logTail}
	if encErr := json.NewEncoder(a.stdout).Encode(out); encErr != nil {
		a.log.Error("cannot write error result", "error", encErr)
	}
	fmt.Fprintf(a.stderr, "rbee-hive: %v\n", err)
	for _, line := range ee.logTail {
		fmt.Fprintf(a.stderr, "  | %s\n", line)
	}
	return ee.code
}
