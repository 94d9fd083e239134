// Package e2e drives the real binaries end to end: it builds rbee,
// queen-rbee, rbee-hive and llm-worker-rbee once per test run, starts a
// queen on a free port with its own state directories, and runs real
// workers on a real model through the local hive.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// binDir holds the binaries built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rbee-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// buildBinaries builds the four programs from the workspace. The worker
// needs cgo; CGO_CFLAGS from the environment (the Makefile sets them) pick
// the same cached llama.cpp build as `make build`.
func buildBinaries(dir string) error {
	root, err := findRoot()
	if err != nil {
		return err
	}
	targets := map[string]string{
		"rbee": "./cmd/rbee-keeper", "queen-rbee": "./cmd/queen-rbee",
		"rbee-hive": "./cmd/rbee-hive", "llm-worker-rbee": "./cmd/llm-worker-rbee",
	}
	for name, pkg := range targets {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the test directory")
		}
		dir = parent
	}
}

// cluster is one queen with its own state, and the local hive.
type cluster struct {
	t        testing.TB
	url      string
	addr     string
	env      []string
	dbPath   string
	hiveDir  string
	queen    *exec.Cmd
	queenLog *lockedBuffer
	model    testenv.Model
}

type clusterOptions struct {
	heartbeatInterval time.Duration
	queueWait         time.Duration
	queueLimit        int
	// advertise passes the queen's own URL as --advertise-url, so that
	// workers on the sshtest hives (127.0.0.2, .3) reach it.
	advertise bool
	// eventBuffer and summaryInterval set the queen's hidden flags of the
	// same names (slow-consumer tests).
	eventBuffer     int
	summaryInterval time.Duration
}

// newCluster starts queen-rbee directly (so tests pick its flags) with a
// private HOME, and stops it and every worker it spawned at the end.
func newCluster(t testing.TB, opts clusterOptions) *cluster {
	t.Helper()
	home := t.TempDir()
	addr := freeAddr(t)
	c := &cluster{t: t, addr: addr, url: "http://" + addr, model: testenv.FindModel(t),
		dbPath:  filepath.Join(home, "data", "rbee", "queen.db"),
		hiveDir: filepath.Join(home, "state", "rbee"), queenLog: &lockedBuffer{}}
	c.env = append(os.Environ(),
		"HOME="+home,
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_STATE_HOME="+filepath.Join(home, "state"),
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"RBEE_QUEEN_URL="+c.url,
		"RBEE_HIVE_STATE_DIR="+c.hiveDir,
		// Several workers share this machine's cores in one test.
		"RBEE_WORKER_THREADS=1",
	)
	args := []string{"--addr", addr, "--db", c.dbPath, "--verbose"}
	if opts.heartbeatInterval > 0 {
		args = append(args, "--heartbeat-interval", opts.heartbeatInterval.String())
	}
	if opts.queueWait > 0 {
		args = append(args, "--queue-wait", opts.queueWait.String())
	}
	if opts.queueLimit > 0 {
		args = append(args, "--queue-limit", strconv.Itoa(opts.queueLimit))
	}
	if opts.advertise {
		args = append(args, "--advertise-url", c.url)
	}
	if opts.eventBuffer > 0 {
		args = append(args, "--event-buffer", strconv.Itoa(opts.eventBuffer))
	}
	if opts.summaryInterval > 0 {
		args = append(args, "--summary-interval", opts.summaryInterval.String())
	}
	c.startQueen(args)
	t.Cleanup(c.stop)
	return c
}

func (c *cluster) startQueen(args []string) {
	c.t.Helper()
	c.queen = exec.Command(filepath.Join(binDir, "queen-rbee"), args...)
	c.queen.Env = c.env
	c.queen.Stdout, c.queen.Stderr = c.queenLog, c.queenLog
	assert.NilError(c.t, c.queen.Start())
	poll.WaitOn(c.t, func(poll.LogT) poll.Result {
		resp, err := http.Get(c.url + "/health")
		if err != nil {
			return poll.Continue("queen not up: %v", err)
		}
		resp.Body.Close()
		return poll.Success()
	}, poll.WithTimeout(15*time.Second), poll.WithDelay(20*time.Millisecond))
}

// stop ends the queen and kills every worker the hive recorded; on failure
// it prints the queen's and the workers' logs.
func (c *cluster) stop() {
	if c.queen.Process != nil {
		_ = c.queen.Process.Signal(syscall.SIGTERM)
		_ = c.queen.Wait()
	}
	records, _ := filepath.Glob(filepath.Join(c.hiveDir, "workers", "*.json"))
	for _, rec := range records {
		var w api.HiveWorker
		if data, err := os.ReadFile(rec); err == nil && json.Unmarshal(data, &w) == nil && w.PID > 0 {
			_ = syscall.Kill(w.PID, syscall.SIGKILL)
		}
	}
	if c.t.Failed() {
		c.t.Logf("queen log:\n%s", c.queenLog.String())
		logs, _ := filepath.Glob(filepath.Join(c.hiveDir, "workers", "*.log"))
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			c.t.Logf("worker log %s:\n%s", filepath.Base(l), data)
		}
	}
}

// rbee runs the keeper CLI and returns stdout, stderr and the exit code.
func (c *cluster) rbee(args ...string) (string, string, int) {
	c.t.Helper()
	return c.rbeeEnv(nil, args...)
}

// rbeeEnv runs the keeper CLI with extra environment variables (KEY=VALUE),
// which override the cluster's.
func (c *cluster) rbeeEnv(extra []string, args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "rbee"), args...)
	cmd.Env = append(append([]string(nil), c.env...), extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if exitErr, ok := err.(*exec.ExitError); ok {
		code = exitErr.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run rbee %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// mustRbee runs the keeper and fails the test unless it succeeds.
func (c *cluster) mustRbee(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.rbee(args...)
	assert.Equal(c.t, code, 0, "rbee %v failed:\n%s", args, errOut)
	return out
}

// mustRbeeEnv is mustRbee with extra environment variables, as rbeeEnv.
func (c *cluster) mustRbeeEnv(extra []string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.rbeeEnv(extra, args...)
	assert.Equal(c.t, code, 0, "rbee %v failed:\n%s", args, errOut)
	return out
}

// spawn starts a worker on the test model and waits until it is ready.
func (c *cluster) spawn(extra ...string) api.Worker {
	c.t.Helper()
	args := append([]string{"worker", "spawn", "-m", c.model.Path, "--json"}, extra...)
	var w api.Worker
	assert.NilError(c.t, json.Unmarshal([]byte(c.mustRbee(args...)), &w))
	assert.Equal(c.t, w.State, api.WorkerReady)
	return w
}

// worker reads one worker from the queen's API.
func (c *cluster) worker(id string) api.Worker {
	c.t.Helper()
	var w api.Worker
	c.getJSON("/v1/workers/"+id, &w)
	return w
}

func (c *cluster) getJSON(path string, out any) {
	c.t.Helper()
	resp, err := http.Get(c.url + path)
	assert.NilError(c.t, err)
	defer resp.Body.Close()
	assert.Equal(c.t, resp.StatusCode, http.StatusOK)
	assert.NilError(c.t, json.NewDecoder(resp.Body).Decode(out))
}

// postJSON sends body to the queen and returns the status and the reply.
func (c *cluster) postJSON(path, body string) (int, []byte) {
	c.t.Helper()
	resp, err := http.Post(c.url+path, "application/json", strings.NewReader(body))
	assert.NilError(c.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	assert.NilError(c.t, err)
	return resp.StatusCode, data
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	assert.NilError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer collects a subprocess's output safely across goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
