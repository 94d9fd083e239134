package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"
)

type workerLogsOptions struct {
	root *rootOptions

	ID     string
	Follow bool
	Tail   int
}

func newWorkerLogsCmd(root *rootOptions) *cobra.Command {
	opts := &workerLogsOptions{root: root}
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a worker's log, read through its hive",
		Long: "Print the log of worker ID. With -f, keep printing the lines it appends\n" +
			"until interrupted, or until the worker is gone and its log stops growing.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.ID = args[0]
			if opts.Tail < -1 {
				return usageErrorf("--tail must be 0 or more, not %d", opts.Tail)
			}
			return runWorkerLogs(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&opts.Follow, "follow", "f", false, "keep printing lines as the worker writes them")
	f.IntVar(&opts.Tail, "tail", -1, "start with only the last N lines (default: the whole log)")
	return cmd
}

func runWorkerLogs(ctx context.Context, opts *workerLogsOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if opts.Follow {
		q.Set("follow", "true")
	}
	if opts.Tail >= 0 {
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	path := "/v1/workers/" + url.PathEscape(opts.ID) + "/logs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}

	resp, err := c.send(ctx, http.MethodGet, path, nil, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(opts.root.Stdout, resp.Body); err != nil &&
		!errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return fmt.Errorf("reading the log of worker %s: %w", opts.ID, err)
	}
	return nil
}
