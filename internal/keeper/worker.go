package keeper

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// pollInterval is how often the keeper asks the queen about progress.
const pollInterval = 100 * time.Millisecond

// Bounds of --slots, checked here so that the person hears at once.
const (
	minSlots = 1
	maxSlots = 64
)

func newWorkerCmd(root *rootOptions) *cobra.Command {
	return groupCmd("worker", "Spawn, list and stop workers",
		newWorkerSpawnCmd(root),
		newWorkerListCmd(root),
		newWorkerStopCmd(root),
		newWorkerDrainCmd(root),
		newWorkerLogsCmd(root),
	)
}

type workerSpawnOptions struct {
	root *rootOptions

	Model   string
	Name    string
	Hive    string
	Device  string
	Slots   int
	CtxSize int
	Threads int
	Restart string
	NoWait  bool
	Timeout time.Duration
	JSON    bool

	// GPULayers is sent only when given: the default offloads every layer.
	GPULayers    int
	HasGPULayers bool
}

func newWorkerSpawnCmd(root *rootOptions) *cobra.Command {
	opts := &workerSpawnOptions{root: root}
	cmd := &cobra.Command{
		Use:   "spawn -m MODEL",
		Short: "Start a worker serving a model on a hive",
		Long: "Start a worker serving MODEL, a GGUF file on the hive, and wait until it is\n" +
			"ready. A MODEL that names a file on this machine is sent as an absolute path.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.HasGPULayers = cmd.Flags().Changed("gpu-layers")
			if err := opts.validate(); err != nil {
				return err
			}
			return runWorkerSpawn(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opts.Model, "model", "m", "", "GGUF model file on the hive (required)")
	f.StringVar(&opts.Name, "name", "",
		"name clients use to reach it (default: file name without .gguf)")
	f.StringVar(&opts.Hive, "hive", "",
		"hive to run the worker on (default: the queen picks one that holds the model and "+
			"has room; localhost for a file on this machine)")
	f.StringVar(&opts.Device, "device", "cpu", "device: cpu or cuda:N")
	f.IntVar(&opts.Slots, "slots", 1, "requests served at once (1-64)")
	f.IntVar(&opts.CtxSize, "ctx-size", 0, "context tokens per slot (0: the model's own, capped)")
	f.IntVar(&opts.GPULayers, "gpu-layers", 0, "offload only this many layers to the GPU (default: all)")
	f.IntVar(&opts.Threads, "threads", 0, "CPU decoding threads (0: the node's default)")
	f.StringVar(&opts.Restart, "restart", api.RestartOnFailure,
		"start the worker again when it ends: always, on-failure (lost or failed) or never")
	f.BoolVar(&opts.NoWait, "no-wait", false,
		"return once the worker is started, not when it is ready")
	f.DurationVar(&opts.Timeout, "timeout", 120*time.Second, "how long to wait until it is ready")
	f.BoolVar(&opts.JSON, "json", false, "print the worker as JSON")
	return cmd
}

func (o *workerSpawnOptions) validate() error {
	switch {
	case o.Model == "":
		return usageErrorf("--model is required: the GGUF file the worker serves")
	case o.Slots < minSlots || o.Slots > maxSlots:
		return usageErrorf("--slots must be between %d and %d, not %d", minSlots, maxSlots, o.Slots)
	case o.CtxSize < 0:
		return usageErrorf("--ctx-size must be 0 or more, not %d", o.CtxSize)
	case o.HasGPULayers && o.GPULayers < 0:
		return usageErrorf("--gpu-layers must be 0 or more, not %d", o.GPULayers)
	case o.Threads < 0:
		return usageErrorf("--threads must be 0 or more, not %d", o.Threads)
	case o.Timeout <= 0:
		return usageErrorf("--timeout must be positive, not %s", o.Timeout)
	case o.Restart != api.RestartAlways && o.Restart != api.RestartOnFailure &&
		o.Restart != api.RestartNever:
		return usageErrorf("--restart must be always, on-failure or never, not %q", o.Restart)
	}
	return nil
}

func runWorkerSpawn(ctx context.Context, opts *workerSpawnOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}

	model, hive := localModelPath(opts.Model, opts.Hive)
	req := api.SpawnRequest{
		Model:   model,
		Name:    opts.Name,
		Hive:    hive,
		Device:  opts.Device,
		Slots:   opts.Slots,
		CtxSize: opts.CtxSize,
		Threads: opts.Threads,
		Restart: opts.Restart,
	}
	if opts.HasGPULayers {
		req.GPULayers = &opts.GPULayers
	}
	var w api.Worker
	if err := c.do(ctx, http.MethodPost, "/v1/workers", req, &w); err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "worker %s: %s\n", w.ID, w.State)

	if !opts.NoWait {
		ready, err := waitReady(ctx, c, opts, w)
		if err != nil {
			return err
		}
		w = ready
	}

	if opts.JSON {
		return writeJSON(opts.root.Stdout, w)
	}
	return printWorkers(opts.root, []api.Worker{w})
}

// localModelPath returns model as an absolute path, and the localhost hive
// when none is given, when model names a file on this machine and the hive
// is (or defaults to) the local one; otherwise both unchanged, for the
// queen to place and the hive to resolve.
//
// Shortcoming: "local" assumes the keeper runs on the queen's machine,
// which is where the localhost hive lives.
func localModelPath(model, hive string) (string, string) {
	if hive != "" && hive != "localhost" {
		return model, hive
	}
	fi, err := os.Stat(model)
	if err != nil || !fi.Mode().IsRegular() {
		return model, hive
	}
	abs, err := filepath.Abs(model)
	if err != nil {
		return model, hive
	}
	return abs, "localhost"
}

// waitReady polls the worker until it is ready, has ended, or the
// timeout passes, telling the person about each change of state.
func waitReady(ctx context.Context, c *client, opts *workerSpawnOptions,
	w api.Worker) (api.Worker, error) {
	waitCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	for {
		switch w.State {
		case api.WorkerReady:
			return w, nil
		case api.WorkerFailed, api.WorkerLost, api.WorkerStopped:
			return w, workerEndedError(w)
		}

		var next api.Worker
		var err error
		select {
		case <-waitCtx.Done():
		case <-tick.C:
			err = c.do(waitCtx, http.MethodGet, "/v1/workers/"+url.PathEscape(w.ID), nil, &next)
		}
		switch {
		case ctx.Err() != nil:
			return w, &interruptedError{msg: fmt.Sprintf(
				"worker %s keeps starting: see `rbee worker list`, or `rbee worker stop %s`",
				w.ID, w.ID)}
		case waitCtx.Err() != nil:
			return w, fmt.Errorf("worker %s is still %s after %s: it keeps starting; "+
				"see `rbee worker list`, or `rbee worker stop %s`%s",
				w.ID, w.State, opts.Timeout, w.ID, logHint(w))
		case err != nil:
			return w, err
		}

		if next.State != w.State {
			fmt.Fprintf(opts.root.Stderr, "worker %s: %s\n", next.ID, next.State)
		}
		w = next
	}
}

func workerEndedError(w api.Worker) error {
	reason := w.Error
	if reason == "" {
		reason = "no reason given"
	}
	return fmt.Errorf("worker %s %s: %s%s", w.ID, w.State, reason, logHint(w))
}

func logHint(w api.Worker) string {
	if w.LogPath == "" {
		return ""
	}
	return fmt.Sprintf(" (log: %s on hive %s)", w.LogPath, w.Hive)
}

type workerListOptions struct {
	root *rootOptions

	All  bool
	JSON bool
}

func newWorkerListCmd(root *rootOptions) *cobra.Command {
	opts := &workerListOptions{root: root}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List workers",
		Long: "List the workers the queen knows. When stdout is not a terminal, rows are\n" +
			"tab-separated, without a header.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWorkerList(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.All, "all", false, "include stopped workers")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

func runWorkerList(ctx context.Context, opts *workerListOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	path := "/v1/workers"
	if opts.All {
		path += "?all=true"
	}
	var list api.WorkerList
	if err := c.do(ctx, http.MethodGet, path, nil, &list); err != nil {
		return err
	}
	if list.Workers == nil {
		list.Workers = []api.Worker{}
	}

	if opts.JSON {
		return writeJSON(opts.root.Stdout, list)
	}
	if len(list.Workers) == 0 && opts.root.StdoutTTY {
		fmt.Fprintln(opts.root.Stderr, "rbee: no workers: start one with `rbee worker spawn -m MODEL`")
		return nil
	}
	return printWorkers(opts.root, list.Workers)
}

// printWorkers writes workers as a table on stdout.
func printWorkers(root *rootOptions, workers []api.Worker) error {
	t := newTable(root.Stdout, root.StdoutTTY,
		"ID", "HIVE", "MODEL", "DEVICE", "STATE", "SLOTS", "RESTARTS", "LAST HEARTBEAT", "URL")
	now := root.Now()
	for _, w := range workers {
		t.row(w.ID, orDash(w.Hive), orDash(w.Model), orDash(w.Device), string(w.State),
			strconv.Itoa(w.SlotsBusy)+"/"+strconv.Itoa(w.Slots), restarts(w),
			formatAge(now, w.LastHeartbeat), orDash(w.URL))
	}
	return t.flush()
}

// restarts is the RESTARTS cell: the count, and why the last one happened.
func restarts(w api.Worker) string {
	if w.Restarts == 0 {
		return "0"
	}
	return strconv.Itoa(w.Restarts) + " (" + w.RestartReason + ")"
}

type workerStopOptions struct {
	root *rootOptions

	ID   string
	JSON bool
}

func newWorkerStopCmd(root *rootOptions) *cobra.Command {
	opts := &workerStopOptions{root: root}
	cmd := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a worker",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.ID = args[0]
			return runWorkerStop(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the stopped worker as JSON")
	return cmd
}

func runWorkerStop(ctx context.Context, opts *workerStopOptions) error {
	if opts.ID == "" {
		return usageErrorf("a worker ID is required")
	}
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var w api.Worker
	err = c.do(ctx, http.MethodDelete, "/v1/workers/"+url.PathEscape(opts.ID), nil, &w)
	if err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, w)
	}
	_, err = fmt.Fprintf(opts.root.Stdout, "stopped %s\n", opts.ID)
	return err
}
