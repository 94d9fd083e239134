package hive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

func newModelCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "model",
		Short: "List, add, download and remove the models of this node's catalog",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(newModelListCmd(a), newModelAddCmd(a), newModelRmCmd(a),
		newModelDownloadCmd(a))
	return cmd
}

// modelListOptions: the spawn a listing's memory estimates are for.
type modelListOptions struct {
	slots     int
	ctxSize   int
	gpuLayers int
}

func newModelListCmd(a *app) *cobra.Command {
	opts := &modelListOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the models in the catalog",
		Args:  exactArgs(0),
		RunE: runE(func(context.Context, []string) error {
			return runModelList(a, opts)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&opts.slots, "slots", 1, "estimate memory for this many slots (1 to 64)")
	f.IntVar(&opts.ctxSize, "ctx-size", 0, "estimate memory for this context per slot; "+
		"0: the model's own, at most 4096")
	f.IntVar(&opts.gpuLayers, "gpu-layers", -1, "estimate GPU memory with this many layers "+
		"offloaded (-1: all)")
	return cmd
}

func runModelList(a *app, opts *modelListOptions) error {
	if opts.slots < 1 || opts.slots > 64 || opts.ctxSize < 0 || opts.ctxSize > math.MaxInt32 ||
		opts.gpuLayers < -1 {
		return usageErrorf("--slots must be 1 to 64, --ctx-size 0 or more, --gpu-layers -1 or more")
	}
	c, err := openCatalog(false)
	if err != nil {
		return err
	}
	models, warnings, err := c.list()
	if err != nil {
		return err
	}
	for _, w := range warnings {
		a.log.Warn("skipping unreadable catalog entry", "error", w)
	}
	if models == nil {
		models = []api.Model{}
	}
	if *opts != (modelListOptions{slots: 1, gpuLayers: -1}) {
		reestimate(a, models, opts)
	}
	return a.printResult(api.ModelList{Models: models})
}

// reestimate replaces the manifests' one-slot estimates with ones for the
// spawn opts describes, read again from each file's header (milliseconds
// a model: the large arrays are skipped). A model whose header cannot be
// read keeps its manifest's estimate, with a warning.
func reestimate(a *app, models []api.Model, opts *modelListOptions) {
	for i, m := range models {
		if int64(contextFor(m.ContextLength, opts.ctxSize))*int64(opts.slots) > math.MaxInt32 {
			continue // more tokens than llama.cpp takes: the spawn refuses it anyway
		}
		est, err := estimateFile(m.Path, m.ContextLength, opts.ctxSize, opts.slots, opts.gpuLayers)
		if err != nil {
			a.log.Warn("cannot estimate the model's memory; keeping the catalog's",
				"model", m.Name, "error", err)
			continue
		}
		models[i].MemoryEstimate = est
	}
}

type modelAddOptions struct {
	app  *app
	path string
	name string
}

func newModelAddCmd(a *app) *cobra.Command {
	opts := &modelAddOptions{app: a}
	cmd := &cobra.Command{
		Use:   "add PATH",
		Short: "Add a local GGUF file to the catalog (hard-linked when it can be, else copied)",
		Args:  exactArgs(1),
		RunE: runE(func(_ context.Context, args []string) error {
			opts.path = args[0]
			return runModelAdd(opts, time.Now())
		}),
	}
	cmd.Flags().StringVar(&opts.name, "name", "", "catalog name (default: file name without .gguf)")
	return cmd
}

func runModelAdd(opts *modelAddOptions, now time.Time) error {
	src, err := checkModel(opts.path)
	if err != nil {
		return err
	}
	name := opts.name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(src), ".gguf")
	}
	if err := checkModelName(name); err != nil {
		return err
	}
	file := filepath.Base(src)
	if checkModelName(file) != nil {
		file = name + ".gguf"
	}
	c, err := openCatalog(true)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(c.modelDir(name)); err == nil {
		return usageErrorf("model %q is already in the catalog; remove it first "+
			"or pass another --name", name)
	}

	m := api.Model{Name: name, File: file, Source: "file:" + src, AddedAt: now.UTC()}
	if err := describeGGUF(src, &m); err != nil {
		return err
	}

	// A hard link costs no space and no time; across file systems, copy to
	// a temporary name in the catalog first.
	link := true
	staged := src
	if err := tryLink(src, c.dir); err != nil {
		link = false
		staged, err = copyInto(src, c.dir, name)
		if err != nil {
			return err
		}
		defer os.Remove(staged) // gone after a successful install
	}
	sum, size, err := hashSize(staged)
	if err != nil {
		return failedErrorf("hash %s: %w", src, err)
	}
	m.SHA256, m.Size = sum, size

	installed, err := c.install(staged, link, m)
	if err != nil {
		return err
	}
	opts.app.log.Info("model added", "model", name, "linked", link, "size", size)
	return opts.app.printResult(installed)
}

// tryLink reports whether src can be hard-linked into dir (same file
// system, permitted), by doing it once with a throwaway name.
func tryLink(src, dir string) error {
	probe := filepath.Join(dir, fmt.Sprintf(".link-probe-%d", os.Getpid()))
	if err := os.Link(src, probe); err != nil {
		return err
	}
	return os.Remove(probe)
}

// copyInto copies src to a temporary file in dir and returns its path.
func copyInto(src, dir, name string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", failedErrorf("copy model: %w", err)
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "."+name+".copy*")
	if err != nil {
		return "", failedErrorf("copy model: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if closeErr := out.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Chmod(out.Name(), 0o644)
	}
	if err != nil {
		os.Remove(out.Name())
		return "", failedErrorf("copy model into the catalog: %w", diskFull(err))
	}
	return out.Name(), nil
}

func hashSize(path string) (string, int64, error) {
	sum, err := fileSHA256(path)
	if err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	return sum, fi.Size(), nil
}

type modelRmOptions struct {
	app   *app
	name  string
	force bool
}

func newModelRmCmd(a *app) *cobra.Command {
	opts := &modelRmOptions{app: a}
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a model from the catalog; refused while a live worker uses it",
		Args:  exactArgs(1),
		RunE: runE(func(_ context.Context, args []string) error {
			opts.name = args[0]
			return runModelRm(opts)
		}),
	}
	cmd.Flags().BoolVar(&opts.force, "force", false, "remove it even while workers use it")
	return cmd
}

func runModelRm(opts *modelRmOptions) error {
	c, err := openCatalog(false)
	if err != nil {
		return err
	}
	m, err := c.get(opts.name)
	if errors.Is(err, errNoModel) {
		return notFoundErrorf("no model %q in the catalog", opts.name)
	}
	if err != nil {
		return err
	}

	users, err := liveUsers(c.modelDir(m.Name))
	if err != nil {
		return err
	}
	if len(users) > 0 && !opts.force {
		return usageErrorf("model %q is used by running worker(s) %s: stop them first, "+
			"or pass --force", m.Name, strings.Join(users, ", "))
	}
	if err := os.RemoveAll(c.modelDir(m.Name)); err != nil {
		return failedErrorf("remove model %q: %w", m.Name, err)
	}
	opts.app.log.Info("model removed", "model", m.Name, "workers", users)
	return opts.app.printResult(api.ModelRemoved{Name: m.Name, Workers: users})
}

// liveUsers returns the ids of the live workers whose model file lies in
// dir, sorted.
func liveUsers(dir string) ([]string, error) {
	st, err := openStore(false)
	if err != nil {
		return nil, err
	}
	workers, _, err := st.list()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, w := range workers {
		if filepath.Dir(w.ModelPath) == dir && alive(w.PID, w.ID) {
			ids = append(ids, w.ID)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// resolveModel turns a spawn's --model into a file path and a default
// routing name: a catalog name when it is one (its last use is recorded),
// else a path to a GGUF file.
func resolveModel(a *app, ref string, now time.Time) (path, name string, err error) {
	if checkModelName(ref) == nil {
		c, err := openCatalog(false)
		if err != nil {
			return "", "", err
		}
		m, err := c.get(ref)
		if err == nil {
			if err := c.touch(m, now); err != nil {
				a.log.Warn("cannot record the model's last use", "model", ref, "error", err)
			}
			return m.Path, m.Name, nil
		}
		if !errors.Is(err, errNoModel) {
			return "", "", err
		}
		if _, statErr := os.Stat(ref); errors.Is(statErr, fs.ErrNotExist) {
			return "", "", notFoundErrorf("no model %q in the catalog, and no such file: "+
				"rbee-hive model add PATH, or model download hf:ORG/REPO/FILE.gguf", ref)
		}
	}
	path, err = checkModel(ref)
	if err != nil {
		return "", "", err
	}
	return path, strings.TrimSuffix(filepath.Base(path), ".gguf"), nil
}
