// Package sshexec runs rbee-hive commands for the queen: on its own machine
// with a plain exec (Local), and on other machines over SSH (Pool), behind
// one interface. Quote is the only way an argv becomes a shell string.
package sshexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"al.essio.dev/pkg/shellescape"
)

// ErrNUL is returned by Quote for an argument holding a NUL byte, which no
// shell string (and no argv) can carry.
var ErrNUL = errors.New("argument contains a NUL byte")

// ErrEmptyArgv is returned for an argv without a program.
var ErrEmptyArgv = errors.New("empty argv")

// Runner runs one hive command and returns what it printed.
type Runner interface {
	// Run runs argv, feeding it stdin (which may be nil). A command that
	// exits non-zero is not an error: its code is in Result.ExitCode.
	// Errors are for a command that could not start, or a cancelled ctx.
	Run(ctx context.Context, argv []string, stdin io.Reader) (Result, error)
}

// Result is what a finished command printed, and its exit code.
type Result struct {
	Stdout []byte
	Stderr []byte
	// ExitCode is the command's exit status, or -1 when a signal ended it.
	ExitCode int
}

// Local runs commands on this machine with os/exec, never through a shell.
type Local struct {
	// Env holds extra KEY=VALUE pairs added to this process's environment.
	Env []string
}

var _ Runner = Local{}

// waitDelay bounds how long Run waits for output after the command exits
// or ctx is cancelled, in case a child it left behind holds its stdout.
const waitDelay = 5 * time.Second

// Run implements Runner.
func (l Local) Run(ctx context.Context, argv []string, stdin io.Reader) (Result, error) {
	if len(argv) == 0 {
		return Result{}, ErrEmptyArgv
	}

	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = waitDelay
	if len(l.Env) > 0 {
		cmd.Env = append(os.Environ(), l.Env...)
	}

	err := cmd.Run()
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: -1}
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err == nil {
		return res, nil
	}

	if ctxErr := ctx.Err(); ctxErr != nil {
		return res, fmt.Errorf("run %s: %w", argv[0], ctxErr)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return res, nil
	}
	return res, fmt.Errorf("run %s: %w", argv[0], err)
}

// Quote turns argv into one POSIX shell command line that runs exactly that
// argv: every element is quoted by shellescape, and the program name is
// always quoted so that the shell never reads it as a variable assignment
// (A=B) or a reserved word (if, while). It fails for an empty argv and for
// an element holding a NUL byte.
func Quote(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", ErrEmptyArgv
	}

	words := make([]string, len(argv))
	for i, arg := range argv {
		if strings.IndexByte(arg, 0) >= 0 {
			return "", fmt.Errorf("quote argument %d: %w", i, ErrNUL)
		}
		words[i] = shellescape.Quote(arg)
	}

	// shellescape leaves only [A-Za-z0-9_@%+=:,./-] unquoted, and none of
	// those needs escaping inside single quotes.
	if !strings.HasPrefix(words[0], "'") {
		words[0] = "'" + words[0] + "'"
	}
	return strings.Join(words, " "), nil
}
