package hive

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

// The test binary doubles as a fake llm-worker-rbee: the hive starts it
// (with argv[0] set to llm-worker-rbee) and the environment it inherits
// from the test says how to behave.
const (
	envFakeMode  = "RBEE_HIVE_TEST_WORKER"     // see fakeWorker
	envWantToken = "RBEE_HIVE_TEST_WANT_TOKEN" // the token the fake expects
	testToken    = "s3cret-token"
	fakeLifetime = 2 * time.Minute // a fake that is never stopped ends by itself
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envFakeMode); mode != "" && filepath.Base(os.Args[0]) == workerArgv0 {
		os.Exit(fakeWorker(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeWorker behaves as the mode says:
//
//	ready     listen, write the ready line, exit 0 on SIGTERM
//	stubborn  like ready, but ignore SIGTERM
//	die       print 30 "boom N" lines on stderr and exit 1
//	hang      never write the ready line
//	close     close the ready pipe without writing to it, then hang
//	garbage   write a ready line that is not JSON, then hang
func fakeWorker(mode string, args []string) int {
	fs := flag.NewFlagSet(workerArgv0, flag.ContinueOnError)
	id := fs.String("id", "", "")
	host := fs.String("host", "", "")
	port := fs.Int("port", -1, "")
	readyFD := fs.Int("ready-fd", -1, "")
	for _, name := range []string{"model", "name", "device", "slots", "ctx-size", "queen-url", "status-file", "gpu-layers", "threads"} {
		fs.String(name, "", "")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fmt.Printf("fake worker pid=%d id=%s\n", os.Getpid(), *id)
	if os.Getenv(api.EnvWorkerToken) != os.Getenv(envWantToken) {
		fmt.Fprintln(os.Stderr, "fake worker: wrong token")
		return 2
	}
	ready := os.NewFile(uintptr(*readyFD), "ready")

	switch mode {
	case "die":
		for i := 1; i <= 30; i++ {
			fmt.Fprintf(os.Stderr, "boom %d\n", i)
		}
		return 1
	case "hang":
		time.Sleep(fakeLifetime)
		return 0
	case "close":
		ready.Close()
		time.Sleep(fakeLifetime)
		return 0
	case "garbage":
		fmt.Fprintln(ready, "hello")
		time.Sleep(fakeLifetime)
		return 0
	}

	term := make(chan os.Signal, 1)
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake worker:", err)
		return 1
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	json.NewEncoder(ready).Encode(api.ReadyLine{Port: ln.Addr().(*net.TCPAddr).Port})
	ready.Close()

	select {
	case <-term:
		fmt.Println("fake worker: got SIGTERM")
	case <-time.After(fakeLifetime):
	}
	return 0
}

// hiveRun is what one run of Main left behind.
type hiveRun struct {
	code   int
	stdout string
	stderr string
}

// runHive runs Main in this process with stdin as its standard input.
func runHive(t *testing.T, stdin string, args ...string) hiveRun {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, strings.NewReader(stdin), &stdout, &stderr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rbee-hive %s: exit %d\nstdout: %s\nstderr: %s",
				strings.Join(args, " "), code, stdout.String(), stderr.String())
		}
	})
	return hiveRun{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// decodeOne decodes stdout, which must hold exactly one JSON document.
func decodeOne[T any](t *testing.T, stdout string) T {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var v T
	assert.NilError(t, dec.Decode(&v), "stdout: %q", stdout)
	var extra json.RawMessage
	assert.Assert(t, errors.Is(dec.Decode(&extra), io.EOF), "more than one document: %q", stdout)
	return v
}

// wantError checks that run failed with code and printed one api.HiveError
// whose message holds substr, and returns it.
func wantError(t *testing.T, run hiveRun, code int, substr string) api.HiveError {
	t.Helper()
	assert.Equal(t, run.code, code)
	herr := decodeOne[api.HiveError](t, run.stdout)
	assert.ErrorContains(t, errors.New(herr.Error), substr)
	assert.Assert(t, strings.Contains(run.stderr, "rbee-hive: "+herr.Error), run.stderr)
	return herr
}

// fixture is a hive with its own state dir, a model and the fake worker.
type fixture struct {
	stateDir  string
	model     string
	workerBin string
}

func newFixture(t *testing.T, mode string) fixture {
	t.Helper()
	f := fixture{stateDir: t.TempDir()}
	t.Setenv(envStateDir, f.stateDir)
	t.Setenv(envFakeMode, mode)
	t.Setenv(envWantToken, testToken)
	// The token from stdin must win over one in the hive's environment.
	t.Setenv(api.EnvWorkerToken, "stale-token")

	f.model = filepath.Join(t.TempDir(), "tiny.gguf")
	assert.NilError(t, os.WriteFile(f.model, []byte("GGUF\x03\x00\x00\x00rest"), 0o644))
	exe, err := os.Executable()
	assert.NilError(t, err)
	f.workerBin = exe
	return f
}

func (f fixture) workersDir() string { return filepath.Join(f.stateDir, "workers") }

func (f fixture) spawnArgs(id string, extra ...string) []string {
	args := []string{"worker", "spawn", "--id", id, "--model", f.model,
		"--worker-bin", f.workerBin, "--start-timeout", "20s"}
	return append(args, extra...)
}

// spawn starts a worker that must get ready; the test reaps it at the end.
func (f fixture) spawn(t *testing.T, id string, extra ...string) api.SpawnResult {
	t.Helper()
	run := runHive(t, testToken+"\n", f.spawnArgs(id, extra...)...)
	assert.Equal(t, run.code, api.HiveExitOK)
	res := decodeOne[api.SpawnResult](t, run.stdout)
	reapOnCleanup(t, res.PID)
	return res
}

// reapOnCleanup makes sure the worker pid, a child of this test process
// once the hive released it, is killed and reaped when the test ends.
func reapOnCleanup(t *testing.T, pid int) {
	t.Helper()
	t.Cleanup(func() {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err != nil || got == pid {
			return // reaped before, or just now
		}
		syscall.Kill(pid, syscall.SIGKILL)
		syscall.Wait4(pid, &ws, 0, nil)
	})
}

// fakePID finds the pid the fake worker logged for id.
func (f fixture) fakePID(t *testing.T, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.workersDir(), id+".log"))
	assert.NilError(t, err)
	_, rest, ok := strings.Cut(string(data), "fake worker pid=")
	assert.Assert(t, ok, "no pid in log: %s", data)
	pid, err := strconv.Atoi(strings.Fields(rest)[0])
	assert.NilError(t, err)
	return pid
}
