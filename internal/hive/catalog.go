package hive

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	parser "github.com/gpustack/gguf-parser-go"

	"github.com/rbee-dev/rbee/internal/api"
)

// Environment variables that choose the catalog dir.
const (
	envModelsDir    = "RBEE_MODELS_DIR"
	envXDGCacheHome = "XDG_CACHE_HOME"
)

// manifestFile is the manifest's name inside a model's directory.
const manifestFile = "manifest.json"

// estimateContext is the context a catalog entry's memory estimate is for,
// unless the model's own training context is smaller (the worker's default).
const estimateContext = 4096

// modelName is what a catalog name, and a model file's name, may look like:
// no separators, no leading dot, so no name can leave the catalog dir.
var modelName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

const maxModelName = 128

// checkModelName refuses a name that could not name a catalog directory.
func checkModelName(name string) error {
	if len(name) > maxModelName || !modelName.MatchString(name) || strings.Contains(name, "..") {
		return usageErrorf("invalid model name %q: use 1 to %d of A-Z a-z 0-9 . _ -, "+
			"starting with a letter or digit, without \"..\"", name, maxModelName)
	}
	return nil
}

// modelsDir returns the catalog dir: $RBEE_MODELS_DIR, else
// $XDG_CACHE_HOME/rbee/models, else ~/.cache/rbee/models.
func modelsDir() (string, error) {
	return rbeeDir(envModelsDir, envXDGCacheHome, ".cache", "models")
}

// catalog is the directory holding one directory per model: the file and
// its manifest.json. Partial downloads live beside them as NAME.partial.
type catalog struct {
	dir string
}

func openCatalog(create bool) (catalog, error) {
	dir, err := modelsDir()
	if err != nil {
		return catalog{}, err
	}
	if create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return catalog{}, fmt.Errorf("create models dir: %w", err)
		}
	}
	return catalog{dir: dir}, nil
}

func (c catalog) modelDir(name string) string    { return filepath.Join(c.dir, name) }
func (c catalog) partialPath(name string) string { return filepath.Join(c.dir, name+".partial") }

// errNoModel reports a name that is not in the catalog.
var errNoModel = errors.New("no such model in the catalog")

// get returns the manifest of name, with Path set. It refuses a model
// directory or file that is a symlink, or a manifest naming a file that is
// not a plain name, so that no entry points outside the catalog.
func (c catalog) get(name string) (api.Model, error) {
	if err := checkModelName(name); err != nil {
		return api.Model{}, err
	}
	dir := c.modelDir(name)
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return api.Model{}, fmt.Errorf("model %q: %w", name, errNoModel)
	}
	if err != nil {
		return api.Model{}, fmt.Errorf("read catalog: %w", err)
	}
	if !fi.IsDir() {
		return api.Model{}, fmt.Errorf("model %q: %s is not a directory (a symlink?)", name, dir)
	}

	data, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return api.Model{}, fmt.Errorf("model %q: read manifest: %w", name, err)
	}
	var m api.Model
	if err := json.Unmarshal(data, &m); err != nil {
		return api.Model{}, fmt.Errorf("model %q: read manifest: %w", name, err)
	}
	if m.Name != name || checkModelName(m.File) != nil {
		return api.Model{}, fmt.Errorf("model %q: manifest names %q, file %q", name, m.Name, m.File)
	}
	m.Path = filepath.Join(dir, m.File)
	ffi, err := os.Lstat(m.Path)
	if err != nil {
		return api.Model{}, fmt.Errorf("model %q: %w", name, err)
	}
	if !ffi.Mode().IsRegular() {
		return api.Model{}, fmt.Errorf("model %q: %s is not a regular file (a symlink?)", name, m.Path)
	}
	return m, nil
}

// list returns every readable entry, sorted by name, and the errors of
// the others.
func (c catalog) list() ([]api.Model, []error, error) {
	entries, err := os.ReadDir(c.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read catalog: %w", err)
	}
	var models []api.Model
	var warnings []error
	for _, e := range entries {
		if !e.IsDir() || checkModelName(e.Name()) != nil {
			continue // partial downloads, temporary dirs
		}
		m, err := c.get(e.Name())
		if err != nil {
			warnings = append(warnings, err)
			continue
		}
		models = append(models, m)
	}
	sort.Slice(models, func(i, j int) bool { return models[i].Name < models[j].Name })
	return models, warnings, nil
}

// writeManifest stores m in dir atomically.
func writeManifest(dir string, m api.Model) error {
	m.Path = ""
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, manifestFile), data); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// install moves the verified file at src into the catalog as name, with
// its manifest, in one rename of a finished directory: a reader sees the
// whole entry or none. link says to hard-link src (left in place) rather
// than move it. It fails when name is taken.
func (c catalog) install(src string, link bool, m api.Model) (api.Model, error) {
	tmpDir, err := os.MkdirTemp(c.dir, "."+m.Name+".tmp*")
	if err != nil {
		return api.Model{}, fmt.Errorf("install model: %w", err)
	}
	defer os.RemoveAll(tmpDir) // empty after a successful rename
	if err := os.Chmod(tmpDir, 0o755); err != nil {
		return api.Model{}, fmt.Errorf("install model: %w", err)
	}

	dst := filepath.Join(tmpDir, m.File)
	if link {
		err = os.Link(src, dst)
	} else {
		err = os.Rename(src, dst)
	}
	if err != nil {
		return api.Model{}, fmt.Errorf("install model: %w", err)
	}
	if err := writeManifest(tmpDir, m); err != nil {
		return api.Model{}, err
	}
	if _, err := os.Lstat(c.modelDir(m.Name)); err == nil {
		return api.Model{}, usageErrorf("model %q is already in the catalog", m.Name)
	}
	if err := os.Rename(tmpDir, c.modelDir(m.Name)); err != nil {
		return api.Model{}, fmt.Errorf("install model: %w", err)
	}
	m.Path = filepath.Join(c.modelDir(m.Name), m.File)
	return m, nil
}

// touch records that name was used now; a failure only costs the date.
func (c catalog) touch(m api.Model, now time.Time) error {
	m.LastUsedAt = now.UTC()
	return writeManifest(c.modelDir(m.Name), m)
}

// fileSHA256 returns the hex sha256 of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// describeGGUF fills m's GGUF metadata and memory estimate from the header
// of the file at path. A file the parser cannot read is refused: the
// catalog holds only models a worker can load.
func describeGGUF(path string, m *api.Model) error {
	if err := readGGUFInfo(path, m); err != nil {
		return usageErrorf("%s is not a readable GGUF file: %v", path, err)
	}
	return nil
}

// readGGUFInfo is describeGGUF's work, with any panic of the parser (in
// the header, the metadata or the estimate) returned as an error.
func readGGUFInfo(path string, m *api.Model) (err error) {
	defer recoverGGUF(&err)
	gf, err := parser.ParseGGUFFile(path, parser.SkipLargeMetadata())
	if err != nil {
		return err
	}
	meta := gf.Metadata()
	m.Architecture = meta.Architecture
	m.Parameters = uint64(meta.Parameters)
	m.Quantization = meta.FileTypeDescriptor
	if m.Quantization == "" {
		m.Quantization = meta.FileType.String()
	}
	arch := gf.Architecture()
	m.ContextLength = arch.MaximumContextLength
	m.MemoryEstimate = estimateMemory(gf, contextFor(m.ContextLength, 0), 1, -1)
	return nil
}

// parseGGUF reads the GGUF header of the file at path, large metadata
// arrays (the vocabulary) skipped. The file comes from outside (a
// download, a path given to model add), so a panic of the parser on a
// malformed header is turned into an error: a bad file must not take the
// hive down (FuzzGGUFHeader feeds it arbitrary bytes).
func parseGGUF(path string) (gf *parser.GGUFFile, err error) {
	defer recoverGGUF(&err)
	return parser.ParseGGUFFile(path, parser.SkipLargeMetadata())
}

// estimateFile re-reads the header of the model file at path and estimates
// its memory for ctx tokens per slot (0: the model's default, from its
// trained context) in each of slots slots, gpuLayers on the GPU (-1: all).
func estimateFile(path string, trained uint64, ctx, slots, gpuLayers int) (
	est api.MemoryEstimate, err error) {
	defer recoverGGUF(&err)
	gf, err := parser.ParseGGUFFile(path, parser.SkipLargeMetadata())
	if err != nil {
		return est, err
	}
	return estimateMemory(gf, contextFor(trained, ctx), slots, gpuLayers), nil
}

// recoverGGUF, deferred, turns a panic of gguf-parser-go into *err.
func recoverGGUF(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("malformed GGUF header (the parser failed: %v)", r)
	}
}

// contextFor is the context per slot a worker uses: ctx when set, else the
// model's own, at most estimateContext (as the worker does).
func contextFor(trained uint64, ctx int) int {
	if ctx > 0 {
		return ctx
	}
	if trained > 0 && trained < estimateContext {
		return int(trained)
	}
	return estimateContext
}

// estimateMemory asks gguf-parser-go what llama.cpp needs for ctx tokens of
// context in each of slots slots: all layers on the CPU, and gpuLayers
// layers (-1: all) on one GPU.
//
// Shortcoming: it is the parser's estimate, not a measurement; the worker
// (llama.cpp v0.6.5 through ollama) may differ by some percent.
func estimateMemory(gf *parser.GGUFFile, ctx, slots, gpuLayers int) api.MemoryEstimate {
	est := api.MemoryEstimate{Context: ctx, Slots: slots}
	opts := []parser.GGUFRunEstimateOption{
		parser.WithLLaMACppContextSize(int32(ctx * slots)),
		parser.WithParallelSize(int32(slots)),
	}
	cpu := gf.EstimateLLaMACppRun(append(opts, parser.WithLLaMACppOffloadLayers(0))...).
		SummarizeItem(true, 0, 0)
	est.CPURAM = uint64(cpu.RAM.NonUMA)

	if gpuLayers >= 0 {
		opts = append(opts, parser.WithLLaMACppOffloadLayers(uint64(gpuLayers)))
	}
	gpu := gf.EstimateLLaMACppRun(opts...).SummarizeItem(true, 0, 0)
	est.GPURAM = uint64(gpu.RAM.NonUMA)
	for _, v := range gpu.VRAMs {
		est.GPUVRAM += uint64(v.NonUMA)
	}
	return est
}
