package keeper

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
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
	// HFTokenFile holds the Hugging Face token to forward (default
	// $HF_TOKEN); HFEndpoint is a mirror's URL to forward.
	HFTokenFile string
	HFEndpoint  string
}

// envHFToken is the Hugging Face token's variable, as HF's own tools read it.
const envHFToken = "HF_TOKEN"

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
	f.StringVar(&opts.HFTokenFile, "hf-token-file", "", "file holding the Hugging Face "+
		"token for a private or gated model (default $"+envHFToken+"); the hive gets it "+
		"over SSH stdin, and nothing stores it")
	f.StringVar(&opts.HFEndpoint, "hf-endpoint", "", "Hugging Face mirror URL for the hive "+
		"to download from (default: the hive's $HF_ENDPOINT, else huggingface.co)")
	return cmd
}

// hfToken is the token to forward: --hf-token-file's, else $HF_TOKEN, else
// none (the hive's own $HF_TOKEN then applies).
func (opts *modelOptions) hfToken() (string, error) {
	if opts.HFTokenFile == "" {
		return strings.TrimSpace(os.Getenv(envHFToken)), nil
	}
	data, err := os.ReadFile(opts.HFTokenFile)
	if err != nil {
		return "", usageErrorf("read --hf-token-file: %v", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", usageErrorf("--hf-token-file %s must hold the token alone, on one line",
			opts.HFTokenFile)
	}
	return token, nil
}

func runModelDownload(ctx context.Context, opts *modelOptions) error {
	token, err := opts.hfToken()
	if err != nil {
		return err
	}
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, http.MethodPost, "/v1/models/download", api.ModelDownloadRequest{
		Hive: opts.Hive, Ref: opts.Ref, Revision: opts.Revision, Name: opts.Name,
		HFToken: token, HFEndpoint: opts.HFEndpoint}, false)
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
		Short: "List the models of every hive, one row per model with the hives holding it",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Hive != "" {
				return runHiveModelList(cmd.Context(), opts)
			}
			return runModelList(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Hive, "hive", "", "only this hive (one row per model there)")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the catalog as JSON "+
		"({models: [...], unreachable: [...]}; with --hive, {hive: [models]})")
	return cmd
}

// runModelList lists every hive's models from the queen's GET /v1/catalog:
// one row per model file, with the hives that hold it. Hives that could
// not be asked are named on stderr; the list is what the others hold.
func runModelList(ctx context.Context, opts *modelOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var cat api.Catalog
	if err := c.do(ctx, http.MethodGet, "/v1/catalog", nil, &cat); err != nil {
		return err
	}
	for _, u := range cat.Unreachable {
		fmt.Fprintf(opts.root.Stderr, "rbee: warning: hive %s not listed: %s\n", u.Hive, u.Error)
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, cat)
	}
	t := newTable(opts.root.Stdout, opts.root.StdoutTTY, "NAME", "SIZE", "ARCH", "PARAMS",
		"QUANT", "CONTEXT", "MEM(CPU)", "MEM(GPU)", "HIVES")
	conflicts := map[string]bool{}
	for _, m := range cat.Models {
		t.row(m.Name, memSize(uint64(m.Size)), orDash(m.Architecture), paramCount(m.Parameters),
			orDash(m.Quantization), strconv.FormatUint(m.ContextLength, 10),
			memSize(m.MemoryEstimate.CPURAM), memSize(m.MemoryEstimate.GPUVRAM),
			strings.Join(m.Hives, ","))
		if m.NameConflict {
			conflicts[m.Name] = true
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(conflicts)) {
		fmt.Fprintf(opts.root.Stderr, "rbee: note: hives hold different files named %s "+
			"(another sha256), listed on separate rows: a spawn of %s runs whichever its "+
			"hive holds (see --json for each sha256)\n", name, name)
	}
	return nil
}

// runHiveModelList lists one hive's models.
func runHiveModelList(ctx context.Context, opts *modelOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var list api.ModelList
	if err := c.do(ctx, http.MethodGet, hivePath(opts.Hive, "/models"), nil, &list); err != nil {
		return err
	}
	byHive := map[string][]api.Model{opts.Hive: list.Models}
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
			t.row(m.Name, hive, memSize(uint64(m.Size)), orDash(m.Architecture),
				paramCount(m.Parameters), orDash(m.Quantization),
				strconv.FormatUint(m.ContextLength, 10), memSize(m.MemoryEstimate.CPURAM))
		}
	}
	return t.flush()
}

// paramCount writes a parameter count the way model names do: 7.6B,
// 494M, 293K.
func paramCount(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.0fM", float64(n)/1e6)
	case n > 0:
		return fmt.Sprintf("%.0fK", float64(n)/1e3)
	}
	return "-"
}

// memSize writes a byte count in binary units: 1.1 MiB, 23 GiB; "-" for
// zero, which here means unknown (a file whose header could not be read).
func memSize(n uint64) string {
	if n == 0 {
		return "-"
	}
	return humanize.IBytes(n)
}

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
				memSize(d.CPU.RAMTotal), memSize(d.CPU.RAMAvailable), "-", "-")
			for _, g := range d.GPUs {
				t.row(g.Device, g.Name, memSize(g.MemoryTotal), memSize(g.MemoryFree),
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
