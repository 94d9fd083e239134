package hive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// ggufMagic is how every GGUF file begins.
const ggufMagic = "GGUF"

// maxTokenLen bounds the worker token read from stdin.
const maxTokenLen = 4096

var (
	deviceSyntax = regexp.MustCompile(`^(cpu|cuda:[0-9]{1,3}(,[0-9]{1,3})*)$`)
	// Lengths are checked apart: a counted repetition such as {1,253}
	// compiles into that many states, which every hive command would pay
	// for at start (about 1 ms).
	hostSyntax = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
)

type spawnOptions struct {
	app          *app
	id           string
	model        string
	name         string
	device       string
	slots        int
	ctxSize      int
	gpuLayers    int
	threads      int
	host         string
	queenURL     string
	workerBin    string
	startTimeout time.Duration
}

func newSpawnCmd(a *app) *cobra.Command {
	opts := &spawnOptions{app: a}
	cmd := &cobra.Command{
		Use:   "spawn --id ID --model NAME|PATH",
		Short: "Start a worker for one model, detached; the token is read from stdin",
		Args:  exactArgs(0),
		RunE: runE(func(ctx context.Context, _ []string) error {
			return runSpawn(ctx, opts)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.id, "id", "", "worker id, given by the queen (A-Z a-z 0-9 _ -)")
	f.StringVar(&opts.model, "model", "", "catalog name, or path of a GGUF model file")
	f.StringVar(&opts.name, "name", "", "routing name (default: file name without .gguf)")
	f.StringVar(&opts.device, "device", "cpu", `"cpu" or "cuda:N[,M...]"`)
	f.IntVar(&opts.slots, "slots", 1, "requests served at once (1 to 64)")
	f.IntVar(&opts.ctxSize, "ctx-size", 0, "context per slot; 0: the model's own")
	f.IntVar(&opts.gpuLayers, "gpu-layers", -1, "layers to offload to the GPU (-1: all)")
	f.IntVar(&opts.threads, "threads", 0, "CPU decoding threads (0: the node's default)")
	f.StringVar(&opts.host, "host", "127.0.0.1", "address the worker listens on")
	f.StringVar(&opts.queenURL, "queen-url", "", "where the worker sends heartbeats")
	f.StringVar(&opts.workerBin, "worker-bin", "",
		"worker binary (default: llm-worker-rbee next to rbee-hive, else in PATH)")
	f.DurationVar(&opts.startTimeout, "start-timeout", 60*time.Second,
		"how long the worker has to start listening")
	return cmd
}

func runSpawn(ctx context.Context, opts *spawnOptions) error {
	if err := opts.validate(); err != nil {
		return err
	}
	token, err := readToken(opts.app.stdin)
	if err != nil {
		return err
	}
	modelPath, name, err := resolveModel(opts.app, opts.model, time.Now())
	if err != nil {
		return err
	}
	if opts.name != "" {
		name = opts.name
	}
	if err := checkSpawnFit(ctx, opts, modelPath, name); err != nil {
		return err
	}

	st, err := openStore(true)
	if err != nil {
		return err
	}
	// Shortcoming: two spawns of one id at once both pass this check; the
	// queen gives every worker a fresh id, so nothing locks against it.
	if old, err := st.read(opts.id); err == nil && alive(old.PID, old.ID) {
		return usageErrorf("worker %q is already running (pid %d); stop it first", old.ID, old.PID)
	}
	self, _ := os.Executable() // an error only skips one place to look
	bin, err := findWorkerBin(opts.workerBin, self)
	if err != nil {
		return err
	}

	// A status file an earlier process of this id left says nothing of
	// the new one.
	if err := st.removeStatus(opts.id); err != nil {
		return err
	}
	spec := workerSpec{
		bin: bin, dir: st.dir, logPath: st.logPath(opts.id), token: token,
		id: opts.id, modelPath: modelPath, name: name, device: opts.device,
		slots: opts.slots, ctxSize: opts.ctxSize, gpuLayers: opts.gpuLayers, threads: opts.threads,
		host: opts.host, queenURL: opts.queenURL, statusPath: st.statusPath(opts.id),
	}
	return spawn(ctx, opts.app, st, spec, opts.startTimeout)
}

// validate checks the flags that need neither stdin nor the file system.
func (o *spawnOptions) validate() error {
	if err := checkID(o.id); err != nil {
		return err
	}
	if o.model == "" {
		return usageErrorf("missing --model")
	}
	if !deviceSyntax.MatchString(o.device) {
		return usageErrorf(`invalid --device %q: use "cpu" or "cuda:N[,M...]"`, o.device)
	}
	if o.slots < 1 || o.slots > 64 {
		return usageErrorf("invalid --slots %d: use 1 to 64", o.slots)
	}
	if o.ctxSize < 0 {
		return usageErrorf("invalid --ctx-size %d: use 0 or more", o.ctxSize)
	}
	if o.gpuLayers < -1 {
		return usageErrorf("invalid --gpu-layers %d: use -1 (all) or more", o.gpuLayers)
	}
	if o.threads < 0 {
		return usageErrorf("invalid --threads %d: use 0 (default) or more", o.threads)
	}
	if len(o.host) > 253 || !hostSyntax.MatchString(o.host) {
		return usageErrorf("invalid --host %q: use an IP address or a host name", o.host)
	}
	if o.startTimeout <= 0 {
		return usageErrorf("invalid --start-timeout %s: use a positive duration", o.startTimeout)
	}
	if strings.ContainsFunc(o.name, unicode.IsControl) {
		return usageErrorf("invalid --name %q: control characters", o.name)
	}
	if strings.ContainsFunc(o.queenURL, unicode.IsControl) {
		return usageErrorf("invalid --queen-url %q: control characters", o.queenURL)
	}
	return nil
}

// readToken reads the worker token: the first line of stdin.
func readToken(stdin io.Reader) (string, error) {
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, maxTokenLen+2)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", failedErrorf("read worker token from stdin: %w", err)
	}

	token := strings.TrimSpace(line)
	switch {
	case token == "":
		return "", usageErrorf("no worker token on stdin: write it as one line")
	case len(token) > maxTokenLen:
		return "", usageErrorf("worker token on stdin is longer than %d bytes", maxTokenLen)
	case strings.ContainsFunc(token, func(r rune) bool {
		return unicode.IsControl(r) || unicode.IsSpace(r)
	}):
		return "", usageErrorf("worker token on stdin holds spaces or control characters")
	}
	return token, nil
}

// checkModel checks that path is a regular GGUF file and returns it made
// absolute. A missing file is not found; any other file is a usage error.
func checkModel(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", failedErrorf("check model %s: %w", path, err)
	}
	fi, err := os.Stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", notFoundErrorf("model %s does not exist", path)
	}
	if err != nil {
		return "", failedErrorf("check model %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", usageErrorf("model %s is not a regular file", path)
	}

	f, err := os.Open(abs)
	if err != nil {
		return "", failedErrorf("check model %s: %w", path, err)
	}
	defer f.Close()
	magic := make([]byte, len(ggufMagic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != ggufMagic {
		return "", usageErrorf("model %s is not a GGUF file: it does not start with %q",
			path, ggufMagic)
	}
	return abs, nil
}

// findWorkerBin returns the worker binary: explicit when set, else
// llm-worker-rbee next to self (the hive's own executable), else in PATH.
func findWorkerBin(explicit, self string) (string, error) {
	if explicit != "" {
		if err := checkExecutable(explicit); err != nil {
			return "", failedErrorf("worker binary: %w", err)
		}
		return filepath.Abs(explicit)
	}
	if self != "" {
		sibling := filepath.Join(filepath.Dir(self), workerArgv0)
		if checkExecutable(sibling) == nil {
			return sibling, nil
		}
	}
	if found, err := exec.LookPath(workerArgv0); err == nil {
		return filepath.Abs(found)
	}
	return "", failedErrorf("cannot find %s next to rbee-hive or in PATH: install it "+
		"(rbee hive install HIVE) or pass --worker-bin", workerArgv0)
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// workerSpec is everything needed to start one worker.
type workerSpec struct {
	bin     string // path of the worker binary
	dir     string // working directory of the worker
	logPath string
	token   string
	// statusPath is the worker's --status-file (see store.statusPath).
	statusPath string

	id        string
	modelPath string
	name      string
	device    string
	slots     int
	ctxSize   int
	gpuLayers int
	threads   int // 0: leave it to the worker's default
	host      string
	queenURL  string
}

// readyFD is the descriptor of the ready pipe in the worker: ExtraFiles[0].
const readyFD = 3

// argv is the worker's command line, as docs/contracts.md gives it. It
// never holds the token, since every user can read argv in ps.
func (s workerSpec) argv() []string {
	argv := []string{
		workerArgv0,
		"--id", s.id,
		"--model", s.modelPath,
		"--name", s.name,
		"--device", s.device,
		"--slots", strconv.Itoa(s.slots),
		"--ctx-size", strconv.Itoa(s.ctxSize),
		"--host", s.host,
		"--port", "0",
		"--queen-url", s.queenURL,
		"--status-file", s.statusPath,
		"--ready-fd", strconv.Itoa(readyFD),
		"--gpu-layers", strconv.Itoa(s.gpuLayers),
	}
	if s.threads > 0 {
		argv = append(argv, "--threads", strconv.Itoa(s.threads))
	}
	return argv
}

// env is the hive's environment with the worker token set.
func (s workerSpec) env() []string {
	prefix := api.EnvWorkerToken + "="
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return append(env, prefix+s.token)
}

// record is the hive's record of the worker, once it is ready.
func (s workerSpec) record(pid, port int) api.HiveWorker {
	return api.HiveWorker{
		ID:        s.id,
		PID:       pid,
		Port:      port,
		URL:       "http://" + net.JoinHostPort(s.host, strconv.Itoa(port)),
		Model:     s.name,
		ModelPath: s.modelPath,
		Device:    s.device,
		Slots:     s.slots,
		LogPath:   s.logPath,
		StartedAt: time.Now().UTC(),
		Alive:     true,
	}
}
