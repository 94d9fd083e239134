// Package keeper is the rbee command line (the binary `rbee`): a thin client
// of the queen's HTTP API that prints results on stdout and everything meant
// for a person on stderr. It never talks to hives or workers directly.
package keeper

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/version"
)

// Where the keeper finds the queen and how it authenticates.
const (
	envQueenURL     = "RBEE_QUEEN_URL"
	envAPIKey       = "RBEE_API_KEY"
	defaultQueenURL = "http://127.0.0.1:7833"
)

// Main runs the rbee command line with args (without the program name) and
// returns the process exit code. SIGINT and SIGTERM cancel the command.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// After the first signal, restore the default behaviour so that a second
	// Ctrl-C ends a command that does not stop on its own.
	go func() {
		<-ctx.Done()
		stop()
	}()

	return run(ctx, args, stdin, stdout, stderr)
}

// run is Main without the signal handling: cancelling ctx is an interrupt.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := &rootOptions{
		Stdin:     stdin,
		Stdout:    stdout,
		Stderr:    stderr,
		StdoutTTY: isTerminal(stdout),
		StdinTTY:  isTerminal(stdin),
		Getenv:    os.Getenv,
		Now:       time.Now,
		log:       slog.New(slog.DiscardHandler),
	}
	cmd := newRootCmd(root)
	cmd.SetArgs(args)
	cmd.SetIn(stdin)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)

	ran, err := cmd.ExecuteContextC(ctx)
	return report(ctx, stderr, ran, err)
}

// rootOptions holds what every command shares: the streams, the global
// flags and the environment, so that tests can run commands in-process.
type rootOptions struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	StdoutTTY      bool // stdout is a terminal: pad tables, show headers
	StdinTTY       bool

	QueenURL string // --queen-url; empty: $RBEE_QUEEN_URL or the default
	Debug    bool

	Getenv func(string) string
	Now    func() time.Time

	log *slog.Logger
}

// queenURL reports the queen's base URL, without a trailing slash.
func (o *rootOptions) queenURL() (string, error) {
	raw := o.QueenURL
	if raw == "" {
		raw = o.Getenv(envQueenURL)
	}
	if raw == "" {
		raw = defaultQueenURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usageErrorf("queen URL %q is not valid: use http://HOST:PORT", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

// client returns an HTTP client of the queen.
func (o *rootOptions) client() (*client, error) {
	base, err := o.queenURL()
	if err != nil {
		return nil, err
	}
	return &client{
		base:   base,
		apiKey: o.Getenv(envAPIKey),
		http:   &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		log:    o.log,
	}, nil
}

func newRootCmd(root *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rbee",
		Short: "Run LLM workers on your own GPUs behind one OpenAI-compatible endpoint",
		Long: "rbee drives the queen (queen-rbee), which runs workers on your hives and\n" +
			"serves them as one OpenAI-compatible endpoint.\n\n" +
			"The queen is found at --queen-url, else $RBEE_QUEEN_URL, else " +
			defaultQueenURL + ".\n$RBEE_API_KEY, when set, is sent as a bearer token.",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Arbitrary args so that an unknown command reaches runGroup and is
		// reported as a usage error (exit 2), like a bad flag.
		Args: cobra.ArbitraryArgs,
		RunE: runGroup,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if root.Debug {
				root.log = slog.New(slog.NewTextHandler(root.Stderr,
					&slog.HandlerOptions{Level: slog.LevelDebug}))
			}
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{msg: err.Error()}
	})

	flags := cmd.PersistentFlags()
	flags.StringVar(&root.QueenURL, "queen-url", "",
		"queen base URL (default $"+envQueenURL+", else "+defaultQueenURL+")")
	flags.BoolVar(&root.Debug, "debug", false, "log HTTP requests and details to stderr")

	cmd.AddCommand(
		newQueenCmd(root),
		newWorkerCmd(root),
		newDeployCmd(root),
		newHiveCmd(root),
		newModelCmd(root),
		newKeyCmd(root),
		newInferCmd(root),
		newWatchCmd(root),
		newVersionCmd(root),
	)
	return cmd
}

// runGroup is the RunE of a command that only groups subcommands: alone it
// prints help; with an argument it is an unknown subcommand.
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return &usageError{msg: msg}
}

// groupCmd returns a command that only holds subcommands.
func groupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs, RunE: runGroup}
	cmd.AddCommand(subs...)
	return cmd
}

// usageArgs wraps a cobra argument check so that its failure exits 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{msg: err.Error()}
		}
		return nil
	}
}

type versionOptions struct {
	root *rootOptions
}

func newVersionCmd(root *rootOptions) *cobra.Command {
	opts := &versionOptions{root: root}
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of rbee",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(cmd.Context(), opts)
		},
	}
}

func runVersion(_ context.Context, opts *versionOptions) error {
	_, err := io.WriteString(opts.root.Stdout, version.String()+"\n")
	return err
}
