package keeper

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// drainOptions serve `rbee worker drain` and `rbee hive drain`.
type drainOptions struct {
	root    *rootOptions
	Name    string // worker id or hive name
	Timeout time.Duration
	JSON    bool
}

func newWorkerDrainCmd(root *rootOptions) *cobra.Command {
	opts := &drainOptions{root: root}
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Stop routing new requests to a worker, let in-flight ones finish, then stop it",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runDrain(cmd.Context(), opts, "/v1/workers/"+url.PathEscape(opts.Name)+"/drain", false)
		},
	}
	addDrainFlags(cmd, opts)
	return cmd
}

func newHiveDrainCmd(root *rootOptions) *cobra.Command {
	opts := &drainOptions{root: root}
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Drain every worker of a hive at once, then stop them",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runDrain(cmd.Context(), opts, "/v1/hives/"+url.PathEscape(opts.Name)+"/drain", true)
		},
	}
	addDrainFlags(cmd, opts)
	return cmd
}

func addDrainFlags(cmd *cobra.Command, opts *drainOptions) {
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 60*time.Second,
		"how long in-flight requests may run before the worker is stopped anyway")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the stopped workers as JSON")
}

// runDrain asks the queen to drain and waits until it has stopped what it
// drained. A worker drain answers one worker, a hive drain a list.
func runDrain(ctx context.Context, opts *drainOptions, path string, hive bool) error {
	if opts.Timeout < 0 {
		return usageErrorf("--timeout must be 0 or more, not %s", opts.Timeout)
	}
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: draining %s (up to %s)...\n", opts.Name, opts.Timeout)
	path += "?timeout=" + url.QueryEscape(opts.Timeout.String())
	var workers []api.Worker
	if hive {
		var list api.WorkerList
		if err := c.do(ctx, http.MethodPost, path, nil, &list); err != nil {
			return err
		}
		workers = list.Workers
	} else {
		var w api.Worker
		if err := c.do(ctx, http.MethodPost, path, nil, &w); err != nil {
			return err
		}
		workers = []api.Worker{w}
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, api.WorkerList{Workers: workers})
	}
	for _, w := range workers {
		if _, err := fmt.Fprintf(opts.root.Stdout, "drained and stopped %s\n", w.ID); err != nil {
			return err
		}
	}
	return nil
}
