// Package workerd is the llm-worker-rbee daemon: it parses its flags,
// listens, tells the hive its port, loads the model, serves completions,
// heartbeats to the queen and shuts down cleanly on SIGTERM.
package workerd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// Config is everything the worker is told at start.
type Config struct {
	ID        string
	ModelPath string
	Name      string
	Device    Device
	Slots     int
	CtxSize   int // per slot; 0: the model's training context, capped
	Threads   int
	BatchSize int
	GPULayers int
	Host      string
	Port      int
	QueenURL  string
	ReadyFD   int
	Token     string
	DrainWait time.Duration
	Verbose   bool

	// StatusFile is where the worker says that the queen no longer knows
	// it (api.WorkerQueenStatus); empty: nowhere.
	StatusFile string
}

// maxDefaultCtx caps the default context per slot, so that a model trained
// on 128K tokens does not reserve a huge KV cache unasked.
const maxDefaultCtx = 4096

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// parseConfig reads flags and the token from the environment.
func parseConfig(args []string, stderr io.Writer) (Config, error) {
	var c Config
	var device string
	fs := flag.NewFlagSet("llm-worker-rbee", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.ID, "id", "", "worker id, given by the queen (required)")
	fs.StringVar(&c.ModelPath, "model", "", "path to a GGUF model file (required)")
	fs.StringVar(&c.Name, "name", "", "model name for routing (default: file name without .gguf)")
	fs.StringVar(&device, "device", "cpu", "cpu, cuda:N, or cuda:N,M to split over GPUs")
	fs.IntVar(&c.Slots, "slots", 1, "requests decoded together")
	fs.IntVar(&c.CtxSize, "ctx-size", 0, "context tokens per slot (0: the model's, at most 4096)")
	fs.IntVar(&c.Threads, "threads", defaultThreads(), "CPU threads for decoding")
	fs.IntVar(&c.BatchSize, "batch-size", 512, "most tokens per decode step")
	fs.IntVar(&c.GPULayers, "gpu-layers", -1, "layers to offload on a GPU device (-1: all)")
	fs.StringVar(&c.Host, "host", "127.0.0.1", "address to listen on")
	fs.IntVar(&c.Port, "port", 0, "port to listen on (0: any free port)")
	fs.StringVar(&c.QueenURL, "queen-url", "", "queen to heartbeat to (empty: none)")
	fs.StringVar(&c.StatusFile, "status-file", "",
		"file to write while the queen answers heartbeats 404 (empty: none)")
	fs.IntVar(&c.ReadyFD, "ready-fd", 0, "file descriptor to report the port on once listening")
	fs.DurationVar(&c.DrainWait, "drain-timeout", 10*time.Second,
		"on SIGTERM, how long in-flight requests may take to finish")
	fs.BoolVar(&c.Verbose, "verbose", false, "debug logs, including llama.cpp's")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.Token = os.Getenv(api.EnvWorkerToken)
	var err error
	if c.Device, err = ParseDevice(device); err != nil {
		return c, err
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	switch {
	case !idPattern.MatchString(c.ID):
		return errors.New("--id is required: letters, digits, '-' or '_', at most 64")
	case c.ModelPath == "":
		return errors.New("--model is required: the path of a GGUF file")
	case c.Slots < 1 || c.Slots > 64:
		return fmt.Errorf("--slots must be between 1 and 64, got %d", c.Slots)
	case c.CtxSize < 0:
		return fmt.Errorf("--ctx-size must be 0 or more, got %d", c.CtxSize)
	case c.Threads < 1:
		return fmt.Errorf("--threads must be at least 1, got %d", c.Threads)
	case c.BatchSize < 1:
		return fmt.Errorf("--batch-size must be at least 1, got %d", c.BatchSize)
	case c.Token == "":
		return fmt.Errorf("%s is not set: the worker needs a token to accept requests",
			api.EnvWorkerToken)
	}
	if c.Name == "" {
		c.Name = ModelName(c.ModelPath)
	}
	return nil
}

// ModelName is the routing name of a model file: its base name without .gguf.
func ModelName(path string) string {
	base := path[strings.LastIndex(path, "/")+1:]
	return strings.TrimSuffix(base, ".gguf")
}

// ThreadsEnv sets a node's default decoding threads per worker, for nodes
// that run several CPU workers side by side (tests do too): llama.cpp's
// threads spin, so workers that together want more threads than there are
// cores slow each other down badly.
const ThreadsEnv = "RBEE_WORKER_THREADS"

// defaultThreads is $RBEE_WORKER_THREADS, else one decoding thread per
// physical core: llama.cpp gains nothing from SMT siblings.
func defaultThreads() int {
	if n, err := strconv.Atoi(os.Getenv(ThreadsEnv)); err == nil && n > 0 {
		return n
	}
	if n := physicalCores(); n > 0 {
		return min(n, runtime.NumCPU())
	}
	return runtime.NumCPU()
}

// physicalCores counts distinct (package, core) pairs in /proc/cpuinfo;
// 0 when they cannot be read (not Linux, or a kernel that hides them).
func physicalCores() int {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	cores := map[string]bool{}
	var pkg string
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "physical id":
			pkg = strings.TrimSpace(value)
		case "core id":
			cores[pkg+"/"+strings.TrimSpace(value)] = true
		}
	}
	return len(cores)
}

// Device is where the model runs.
type Device struct {
	CUDA []int // GPU indices; empty for the CPU
}

// String is the device as the flag spells it.
func (d Device) String() string {
	if len(d.CUDA) == 0 {
		return "cpu"
	}
	parts := make([]string, len(d.CUDA))
	for i, n := range d.CUDA {
		parts[i] = strconv.Itoa(n)
	}
	return "cuda:" + strings.Join(parts, ",")
}

// ParseDevice reads "cpu", "cuda:N" or "cuda:N,M,...".
func ParseDevice(s string) (Device, error) {
	if s == "cpu" {
		return Device{}, nil
	}
	list, ok := strings.CutPrefix(s, "cuda:")
	if !ok || list == "" {
		return Device{}, fmt.Errorf("--device %q: use cpu, cuda:N, or cuda:N,M", s)
	}
	var d Device
	seen := map[int]bool{}
	for _, part := range strings.Split(list, ",") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 || seen[n] {
			return Device{}, fmt.Errorf("--device %q: %q is not a GPU index (0, 1, ...)", s, part)
		}
		seen[n] = true
		d.CUDA = append(d.CUDA, n)
	}
	return d, nil
}
