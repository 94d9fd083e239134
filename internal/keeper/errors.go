package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// Exit codes of rbee. They are decided here and nowhere else.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2   // bad flags, arguments or values
	exitInterrupted = 130 // SIGINT or SIGTERM, as a shell reports it
)

// usageError is a mistake in how rbee was called: bad flags, arguments or
// values. It exits 2 and points at the command's help.
type usageError struct {
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// queenDownError says that nothing answers at the queen's URL.
type queenDownError struct {
	url string
	err error // the dial error, shown with --debug
}

func (e *queenDownError) Error() string {
	return fmt.Sprintf("queen is not running at %s: start it with `rbee queen start`", e.url)
}

func (e *queenDownError) Unwrap() error { return e.err }

// apiError is an error the queen answered with, in api.ErrorBody's shape.
type apiError struct {
	status int
	detail api.ErrorDetail
}

func (e *apiError) Error() string {
	if e.detail.Message != "" {
		return e.detail.Message
	}
	return fmt.Sprintf("the queen answered %d %s", e.status, http.StatusText(e.status))
}

// interruptedError carries what to tell the person when a command was
// interrupted half-way, for example that a worker keeps loading.
type interruptedError struct {
	msg string
}

func (e *interruptedError) Error() string { return e.msg }

// report prints err for a person on stderr and returns the exit code for
// it. cmd is the command that ran, when cobra got that far.
func report(ctx context.Context, stderr io.Writer, cmd *cobra.Command, err error) int {
	if ctx.Err() != nil {
		var ie *interruptedError
		if errors.As(err, &ie) {
			fmt.Fprintf(stderr, "rbee: %s\n", ie.msg)
		}
		return exitInterrupted
	}
	if err == nil {
		return exitOK
	}

	var ue *usageError
	if errors.As(err, &ue) {
		path := "rbee"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "rbee: %s (see `%s --help`)\n", ue.msg, path)
		return exitUsage
	}

	fmt.Fprintf(stderr, "rbee: %s\n", err)
	return exitError
}
