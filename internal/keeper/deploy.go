package keeper

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// maxReplicas bounds --replicas, as the queen does.
const maxReplicas = 64

type deployOptions struct {
	// The spawn settings of every worker, checked as `rbee worker spawn`
	// checks them.
	workerSpawnOptions
	Replicas int
}

func newDeployCmd(root *rootOptions) *cobra.Command {
	opts := &deployOptions{workerSpawnOptions: workerSpawnOptions{root: root}}
	cmd := &cobra.Command{
		Use:   "deploy -m MODEL --replicas N",
		Short: "Keep N workers of a model running; list and remove deployments",
		Long: "Keep --replicas workers of MODEL running: the queen places each one as it\n" +
			"places `rbee worker spawn` without --hive, replaces those that end for good,\n" +
			"and leaves those its restart policy brings back alone. Run it again with\n" +
			"another --replicas to scale: extra workers are drained, least busy and\n" +
			"newest first. It waits until every replica is ready (see --no-wait).",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.HasGPULayers = cmd.Flags().Changed("gpu-layers")
			if err := opts.validate(); err != nil {
				return err
			}
			if !cmd.Flags().Changed("replicas") {
				return usageErrorf("--replicas is required: how many workers to keep running")
			}
			return runDeploy(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opts.Model, "model", "m", "", "catalog name, or GGUF file on the hive (required)")
	f.IntVar(&opts.Replicas, "replicas", 0, "how many workers to keep running (0-64, required)")
	f.StringVar(&opts.Name, "name", "",
		"name of the deployment, and of its workers for clients (default: file name without .gguf)")
	f.StringVar(&opts.Hive, "hive", "",
		"hive to run every worker on (default: the queen places each one)")
	f.StringVar(&opts.Device, "device", "cpu", "device: cpu, cuda (any GPU) or cuda:N")
	f.IntVar(&opts.Slots, "slots", 1, "requests each worker serves at once (1-64)")
	f.IntVar(&opts.CtxSize, "ctx-size", 0, "context tokens per slot (0: the model's own, capped)")
	f.IntVar(&opts.GPULayers, "gpu-layers", 0,
		"offload only this many layers to the GPU (default: all)")
	f.IntVar(&opts.Threads, "threads", 0, "CPU decoding threads (0: the node's default)")
	f.StringVar(&opts.Restart, "restart", api.RestartOnFailure,
		"restart policy of each worker: always, on-failure or never")
	f.BoolVar(&opts.NoWait, "no-wait", false,
		"return once the missing workers are started, not when they are ready")
	f.DurationVar(&opts.Timeout, "timeout", 120*time.Second, "how long to wait until all are ready")
	f.BoolVar(&opts.JSON, "json", false, "print the deployment as JSON")
	cmd.AddCommand(newDeployListCmd(root), newDeployRmCmd(root))
	return cmd
}

func (o *deployOptions) validate() error {
	if o.Replicas < 0 || o.Replicas > maxReplicas {
		return usageErrorf("--replicas must be between 0 and %d, not %d", maxReplicas, o.Replicas)
	}
	return o.workerSpawnOptions.validate()
}

func runDeploy(ctx context.Context, opts *deployOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	model, hive := localModelPath(opts.Model, opts.Hive) // a file here: its absolute path
	req := api.DeployRequest{Replicas: opts.Replicas, SpawnRequest: api.SpawnRequest{
		Model: model, Name: opts.Name, Hive: hive, Device: opts.Device, Slots: opts.Slots,
		CtxSize: opts.CtxSize, Threads: opts.Threads, Restart: opts.Restart}}
	if opts.HasGPULayers {
		req.GPULayers = &opts.GPULayers
	}
	var d api.Deployment
	if err := c.do(ctx, http.MethodPost, "/v1/deployments", req, &d); err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "deployment %s: %s\n", d.Name, progress(d))
	if !opts.NoWait {
		if d, err = waitReplicas(ctx, c, opts, d); err != nil {
			return err
		}
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, d)
	}
	return printDeployments(opts.root, []api.Deployment{d})
}

// progress says how far a deployment is: "1/2 ready".
func progress(d api.Deployment) string {
	return fmt.Sprintf("%d/%d ready", d.Ready, d.Replicas)
}

// waitReplicas polls the deployment until every replica is ready, or the
// timeout passes, telling the person of each change and of failed spawns.
func waitReplicas(ctx context.Context, c *client, opts *deployOptions,
	d api.Deployment) (api.Deployment, error) {
	waitCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	path := "/v1/deployments/" + url.PathEscape(d.Name)
	for d.Ready < d.Replicas || d.Live > d.Replicas {
		var next api.Deployment
		var err error
		select {
		case <-waitCtx.Done():
		case <-tick.C:
			err = c.do(waitCtx, http.MethodGet, path, nil, &next)
		}
		switch {
		case ctx.Err() != nil:
			return d, &interruptedError{msg: fmt.Sprintf("deployment %s keeps going (%s): "+
				"see `rbee deploy list`", d.Name, progress(d))}
		case waitCtx.Err() != nil:
			return d, fmt.Errorf("deployment %s has %s after %s%s: see `rbee deploy list` "+
				"and `rbee worker list`", d.Name, progress(d), opts.Timeout, lastError(d))
		case err != nil:
			return d, err
		}
		if progress(next) != progress(d) {
			fmt.Fprintf(opts.root.Stderr, "deployment %s: %s\n", next.Name, progress(next))
		}
		if next.Error != "" && next.Error != d.Error {
			fmt.Fprintf(opts.root.Stderr, "rbee: deployment %s: %s; trying again\n",
				next.Name, next.Error)
		}
		d = next
	}
	return d, nil
}

func lastError(d api.Deployment) string {
	if d.Error == "" {
		return ""
	}
	return " (last failure: " + d.Error + ")"
}

// printDeployments writes deployments as a table on stdout.
func printDeployments(root *rootOptions, deployments []api.Deployment) error {
	t := newTable(root.Stdout, root.StdoutTTY,
		"NAME", "MODEL", "HIVE", "REPLICAS", "READY", "WORKERS", "LAST FAILURE")
	for _, d := range deployments {
		hive := d.Hive
		if hive == "" {
			hive = "(placed)"
		}
		t.row(d.Name, d.Model, hive, strconv.Itoa(d.Replicas), strconv.Itoa(d.Ready),
			orDash(strings.Join(d.Workers, ",")), orDash(d.Error))
	}
	return t.flush()
}

type deployListOptions struct {
	root *rootOptions
	JSON bool
}

func newDeployListCmd(root *rootOptions) *cobra.Command {
	opts := &deployListOptions{root: root}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List deployments: replicas wanted, ready, and their workers",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDeployList(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

func runDeployList(ctx context.Context, opts *deployListOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var list api.DeploymentList
	if err := c.do(ctx, http.MethodGet, "/v1/deployments", nil, &list); err != nil {
		return err
	}
	if list.Deployments == nil {
		list.Deployments = []api.Deployment{}
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, list)
	}
	if len(list.Deployments) == 0 && opts.root.StdoutTTY {
		fmt.Fprintln(opts.root.Stderr,
			"rbee: no deployments: create one with `rbee deploy -m MODEL --replicas N`")
		return nil
	}
	return printDeployments(opts.root, list.Deployments)
}

type deployRmOptions struct {
	root    *rootOptions
	Name    string
	Timeout time.Duration
	JSON    bool
}

func newDeployRmCmd(root *rootOptions) *cobra.Command {
	opts := &deployRmOptions{root: root}
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Forget a deployment, and drain and stop its workers",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if opts.Timeout < 0 {
				return usageErrorf("--timeout must be 0 or more, not %s", opts.Timeout)
			}
			return runDeployRm(cmd.Context(), opts)
		},
	}
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 60*time.Second,
		"how long in-flight requests may run before the workers are stopped anyway")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the stopped workers as JSON")
	return cmd
}

func runDeployRm(ctx context.Context, opts *deployRmOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: removing deployment %s, draining its workers "+
		"(up to %s)...\n", opts.Name, opts.Timeout)
	path := "/v1/deployments/" + url.PathEscape(opts.Name) + "?timeout=" +
		url.QueryEscape(opts.Timeout.String())
	var res api.DeploymentRemoved
	if err := c.do(ctx, http.MethodDelete, path, nil, &res); err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, res)
	}
	for _, w := range res.Workers {
		if _, err := fmt.Fprintf(opts.root.Stdout, "drained and stopped %s\n", w.ID); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(opts.root.Stdout, "removed deployment %s\n", res.Name)
	return err
}
