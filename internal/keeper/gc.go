package keeper

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

type hiveGCOptions struct {
	root   *rootOptions
	Name   string
	DryRun bool
	JSON   bool
}

func newHiveGCCmd(root *rootOptions) *cobra.Command {
	opts := &hiveGCOptions{root: root}
	cmd := &cobra.Command{
		Use:   "gc NAME",
		Short: "Stop worker processes a hive runs that the queen no longer knows",
		Long: "Ask the hive for the workers it started and stop those the queen does not\n" +
			"want running: no such worker (its row was removed, or the queen's database was\n" +
			"reset), a worker the queen wants stopped (a stop that never reached the hive),\n" +
			"or another process than the one the queen knows. Records of processes that\n" +
			"ended are removed. --dry-run only shows them.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHiveGC(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "show the orphans, stop nothing")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

// errGCIncomplete is returned when some orphan could not be stopped.
var errGCIncomplete = errors.New("some orphans could not be stopped: see ERROR above, " +
	"then run `rbee hive gc` again")

func runHiveGC(ctx context.Context, opts *hiveGCOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	path := "/v1/hives/" + url.PathEscape(opts.Name) + "/gc"
	if opts.DryRun {
		path += "?dry_run=true"
	}
	var res api.GCResult
	if err := c.do(ctx, http.MethodPost, path, nil, &res); err != nil {
		return err
	}
	if opts.JSON {
		if err := writeJSON(opts.root.Stdout, res); err != nil {
			return err
		}
		return gcOutcome(res)
	}
	if len(res.Orphans) == 0 {
		fmt.Fprintf(opts.root.Stderr, "rbee: no orphans on hive %s\n", res.Hive)
		return nil
	}
	t := newTable(opts.root.Stdout, opts.root.StdoutTTY,
		"ID", "PID", "MODEL", "RUNNING", "ACTION", "DONE", "REASON")
	for _, o := range res.Orphans {
		t.row(o.ID, strconv.Itoa(o.PID), orDash(o.Model), strconv.FormatBool(o.Alive),
			o.Action, gcDone(res.DryRun, o), o.Reason)
	}
	if err := t.flush(); err != nil {
		return err
	}
	return gcOutcome(res)
}

// gcDone is the DONE cell of one orphan.
func gcDone(dryRun bool, o api.Orphan) string {
	switch {
	case dryRun:
		return "dry run"
	case o.Error != "":
		return "ERROR: " + o.Error
	case o.Done:
		return "yes"
	}
	return "no"
}

// gcOutcome fails when an orphan could not be handled.
func gcOutcome(res api.GCResult) error {
	for _, o := range res.Orphans {
		if o.Error != "" {
			return errGCIncomplete
		}
	}
	return nil
}
