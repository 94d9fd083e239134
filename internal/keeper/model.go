package keeper

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

func newModelCmd(root *rootOptions) *cobra.Command {
	return groupCmd("model", "Download, list and remove the models of hives",
		newModelDownloadCmd(root), newModelListCmd(root), newModelRmCmd(root))
}

type modelOptions struct {
	root     *rootOptions
	Ref      string
	Hive     string
	Revision string
	Name     string
	Force    bool
	JSON     bool
}

func newModelDownloadCmd(root *rootOptions) *cobra.Command {
	opts := &modelOptions{root: root}
	cmd := &cobra.Command{
		Use:   "download hf:ORG/REPO/FILE.gguf --hive H",
		Short: "Download a model from Hugging Face onto a hive (resumable, sha256-checked)",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Ref = args[0]
			if opts.Hive == "" {
				return usageErrorf("missing --hive")
			}
			return runModelDownload(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Hive, "hive", "", "the hive to download onto")
	f.StringVar(&opts.Revision, "revision", "", "branch, tag or commit (default main)")
	f.StringVar(&opts.Name, "name", "", "catalog name (default: file name without .gguf)")
	f.BoolVar(&opts.JSON, "json", false, "print the model as JSON")
	return cmd
}

func runModelDownload(ctx context.Context, opts *modelOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, http.MethodPost, "/v1/models/download", api.ModelDownloadRequest{
		Hive: opts.Hive, Ref: opts.Ref, Revision: opts.Revision, Name: opts.Name}, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	tty := isTerminal(opts.root.Stderr)
	var bar *progressbar.ProgressBar
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev api.DownloadEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("reading the queen's download events: %w", err)
		}
		switch ev.Event {
		case "progress":
			if tty {
				if bar == nil {
					bar = progressbar.NewOptions64(ev.Total,
						progressbar.OptionSetWriter(opts.root.Stderr),
						progressbar.OptionShowBytes(true),
						progressbar.OptionSetDescription(opts.Ref))
				}
				_ = bar.Set64(ev.Bytes)
			} else {
				fmt.Fprintf(opts.root.Stderr, "%s: %d/%d bytes, %.1f MB/s\n",
					opts.Ref, ev.Bytes, ev.Total, ev.Rate/1e6)
			}
		case "error":
			if bar != nil {
				fmt.Fprintln(opts.root.Stderr)
			}
			if ev.Error == nil {
				return errors.New("download failed")
			}
			return errors.New(ev.Error.Message)
		case "done":
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(opts.root.Stderr)
			}
			if ev.Model == nil {
				return errors.New("the queen reported a download without its model")
			}
			if opts.JSON {
				return writeJSON(opts.root.Stdout, ev.Model)
			}
			return printModels(opts.root, map[string][]api.Model{opts.Hive: {*ev.Model}})
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the queen's download events: %w", err)
	}
	return errors.New("the download stream ended without a result; run the command again " +
		"to resume")
}

func newModelListCmd(root *rootOptions) *cobra.Command {
	opts := &modelOptions{root: root}
	cmd := &cobra.Command{
		Use:   "list [--hive H]",
		Short: "List the models in hives' catalogs (every hive without --hive)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runModelList(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Hive, "hive", "", "only this hive")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print {hive: [models]} as JSON")
	return cmd
}

func runModelList(ctx context.Context, opts *modelOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	hives := []string{opts.Hive}
	if opts.Hive == "" {
		var list api.HiveList
		if err := c.do(ctx, http.MethodGet, "/v1/hives", nil, &list); err != nil {
			return err
		}
		hives = hives[:0]
		for _, h := range list.Hives {
			hives = append(hives, h.Name)
		}
	}
	byHive := map[string][]api.Model{}
	for _, h := range hives {
		var list api.ModelList
		if err := c.do(ctx, http.MethodGet, hivePath(h, "/models"), nil, &list); err != nil {
			if opts.Hive != "" {
				return err
			}
			fmt.Fprintf(opts.root.Stderr, "rbee: hive %s: %v\n", h, err)
			continue
		}
		byHive[h] = list.Models
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, byHive)
	}
	return printModels(opts.root, byHive)
}

func printModels(root *rootOptions, byHive map[string][]api.Model) error {
	t := newTable(root.Stdout, root.StdoutTTY, "NAME", "HIVE", "SIZE", "ARCH", "PARAMS",
		"QUANT", "CONTEXT", "MEM(CPU)")
	for hive, models := range byHive {
		for _, m := range models {
			t.row(m.Name, hive, gib(uint64(m.Size)), orDash(m.Architecture),
				fmt.Sprintf("%.2fB", float64(m.Parameters)/1e9), orDash(m.Quantization),
				strconv.FormatUint(m.ContextLength, 10), gib(m.MemoryEstimate.CPURAM))
		}
	}
	return t.flush()
}

func gib(n uint64) string { return fmt.Sprintf("%.2fGiB", float64(n)/(1<<30)) }

func newModelRmCmd(root *rootOptions) *cobra.Command {
	opts := &modelOptions{root: root}
	cmd := &cobra.Command{
		Use:   "rm NAME --hive H",
		Short: "Remove a model from a hive; refused while a worker uses it, unless --force",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Hive == "" {
				return usageErrorf("missing --hive")
			}
			c, err := opts.root.client()
			if err != nil {
				return err
			}
			var out api.ModelRemoved
			path := hivePath(opts.Hive, "/models/"+url.PathEscape(args[0])) + forceQuery(opts.Force)
			if err := c.do(cmd.Context(), http.MethodDelete, path, nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(opts.root.Stdout, "removed %s from %s\n", out.Name, opts.Hive)
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Hive, "hive", "", "the hive")
	cmd.Flags().BoolVar(&opts.Force, "force", false, "remove it even while workers use it")
	return cmd
}

func newHiveDevicesCmd(root *rootOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices NAME",
		Short: "Show a hive's CPU, RAM and GPUs (name, memory total/free, compute capability)",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := root.client()
			if err != nil {
				return err
			}
			var d api.Devices
			if err := c.do(cmd.Context(), http.MethodGet, hivePath(args[0], "/devices"), nil,
				&d); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(root.Stdout, d)
			}
			t := newTable(root.Stdout, root.StdoutTTY, "DEVICE", "NAME", "MEM TOTAL", "MEM FREE",
				"COMPUTE", "DRIVER")
			t.row("cpu", fmt.Sprintf("%d cores (%s)", d.CPU.Cores, d.CPU.Architecture),
				gib(d.CPU.RAMTotal), gib(d.CPU.RAMAvailable), "-", "-")
			for _, g := range d.GPUs {
				t.row(g.Device, g.Name, gib(g.MemoryTotal), gib(g.MemoryFree),
					g.ComputeCapability, g.Driver)
			}
			if d.GPUError != "" {
				fmt.Fprintf(root.Stderr, "rbee: %s\n", d.GPUError)
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the devices as JSON")
	return cmd
}
