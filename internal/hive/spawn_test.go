package hive

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestSpawnStartsDetachedWorker(t *testing.T) {
	f := newFixture(t, "ready")

	res := f.spawn(t, "w1", "--name", "tiny-chat", "--queen-url", "http://127.0.0.1:7833")

	assert.Equal(t, res.ID, "w1")
	assert.Assert(t, res.PID > 1)
	assert.Assert(t, res.Port > 0)
	assert.Equal(t, res.URL, "http://127.0.0.1:"+strconv.Itoa(res.Port))
	assert.Equal(t, res.LogPath, filepath.Join(f.workersDir(), "w1.log"))

	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(res.URL, "http://"), 5*time.Second)
	assert.NilError(t, err)
	conn.Close()

	// argv is exactly the contract, and the token is not in it.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", res.PID))
	assert.NilError(t, err)
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	assert.DeepEqual(t, argv, []string{
		"llm-worker-rbee", "--id", "w1", "--model", f.model, "--name", "tiny-chat",
		"--device", "cpu", "--slots", "1", "--ctx-size", "0", "--host", "127.0.0.1",
		"--port", "0", "--queen-url", "http://127.0.0.1:7833",
		"--status-file", filepath.Join(f.workersDir(), "w1.status.json"), "--ready-fd", "3",
		"--gpu-layers", "-1",
	})
	assert.Assert(t, !bytes.Contains(cmdline, []byte(testToken)))

	// Its own session, so it survives the hive and its SSH session.
	sid, err := getsid(res.PID)
	assert.NilError(t, err)
	assert.Equal(t, sid, res.PID)

	dir, err := os.Stat(f.workersDir())
	assert.NilError(t, err)
	assert.Equal(t, dir.Mode().Perm(), os.FileMode(0o700))
	rec, err := os.Stat(filepath.Join(f.workersDir(), "w1.json"))
	assert.NilError(t, err)
	assert.Equal(t, rec.Mode().Perm(), os.FileMode(0o600))
}

// getsid reads the session id of pid from /proc/PID/stat.
func getsid(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid pgrp session ...; comm may hold spaces.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	return strconv.Atoi(fields[3])
}

func TestSpawnRefusesRunningID(t *testing.T) {
	f := newFixture(t, "ready")
	res := f.spawn(t, "w1")

	run := runHive(t, testToken+"\n", f.spawnArgs("w1")...)

	wantError(t, run, api.HiveExitUsage,
		fmt.Sprintf(`worker "w1" is already running (pid %d)`, res.PID))
}

func TestSpawnReplacesDeadRecord(t *testing.T) {
	f := newFixture(t, "ready")
	first := f.spawn(t, "w1")
	killAndReap(t, first.PID)

	second := f.spawn(t, "w1")

	assert.Assert(t, second.PID != first.PID)
	list := decodeOne[api.HiveWorkerList](t, runHive(t, "", "worker", "list").stdout)
	assert.Equal(t, len(list.Workers), 1)
	assert.Equal(t, list.Workers[0].PID, second.PID)
	assert.Assert(t, list.Workers[0].Alive)
}

func TestSpawnWorkerFailsToStart(t *testing.T) {
	boomTail := make([]string, 0, 20)
	for i := 11; i <= 30; i++ {
		boomTail = append(boomTail, "boom "+strconv.Itoa(i))
	}

	tests := []struct {
		name     string
		mode     string
		extra    []string
		wantErr  string
		wantTail []string // nil: only check that the tail is there
	}{
		{
			name:     "worker exits",
			mode:     "die",
			wantErr:  "it ended with exit status 1",
			wantTail: boomTail,
		},
		{
			name:    "start timeout",
			mode:    "hang",
			extra:   []string{"--start-timeout", "300ms"},
			wantErr: "worker did not report ready within 300ms; killed it",
		},
		{
			name:    "ready pipe closed while running",
			mode:    "close",
			wantErr: "closed its ready pipe without writing a ready line; killed it",
		},
		{
			name:    "bad ready line",
			mode:    "garbage",
			wantErr: `bad ready line "hello"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.mode)

			run := runHive(t, testToken+"\n", f.spawnArgs("w1", tc.extra...)...)

			herr := wantError(t, run, api.HiveExitFailed, tc.wantErr)
			if tc.wantTail != nil {
				assert.DeepEqual(t, herr.LogTail, tc.wantTail)
			} else {
				assert.Assert(t, len(herr.LogTail) > 0)
				assert.Assert(t, is.Contains(herr.LogTail[0], "fake worker pid="))
			}
			// The hive killed and reaped it, and recorded nothing.
			assert.Assert(t, !alive(f.fakePID(t, "w1"), "w1"))
			_, err := os.Stat(filepath.Join(f.workersDir(), "w1.json"))
			assert.Assert(t, os.IsNotExist(err))
		})
	}
}

func TestSpawnLogTailSkipsEarlierStarts(t *testing.T) {
	f := newFixture(t, "die")
	runHive(t, testToken+"\n", f.spawnArgs("w1")...)
	t.Setenv(envFakeMode, "hang")

	run := runHive(t, testToken+"\n", f.spawnArgs("w1", "--start-timeout", "200ms")...)

	herr := wantError(t, run, api.HiveExitFailed, "did not report ready")
	assert.Equal(t, len(herr.LogTail), 1, "tail: %q", herr.LogTail)
}

func TestSpawnRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notGGUF := filepath.Join(dir, "notes.gguf")
	assert.NilError(t, os.WriteFile(notGGUF, []byte("hello world"), 0o644))
	empty := filepath.Join(dir, "empty.gguf")
	assert.NilError(t, os.WriteFile(empty, nil, 0o644))
	missing := filepath.Join(dir, "missing.gguf")

	tests := []struct {
		name     string
		args     []string // replace the fixture's flags of the same name
		stdin    string   // default: the token
		noStdin  bool
		wantCode int
		wantErr  string
	}{
		{name: "missing id", args: []string{"--id", ""}, wantCode: api.HiveExitUsage,
			wantErr: "missing worker id"},
		{name: "path in id", args: []string{"--id", "../w1"}, wantCode: api.HiveExitUsage,
			wantErr: `invalid worker id "../w1"`},
		{name: "id too long", args: []string{"--id", strings.Repeat("a", 65)},
			wantCode: api.HiveExitUsage, wantErr: "invalid worker id"},
		{name: "missing model flag", args: []string{"--model", ""},
			wantCode: api.HiveExitUsage, wantErr: "missing --model"},
		{name: "model does not exist", args: []string{"--model", missing},
			wantCode: api.HiveExitNotFound, wantErr: "model " + missing + " does not exist"},
		{name: "model is a directory", args: []string{"--model", dir},
			wantCode: api.HiveExitUsage, wantErr: "is not a regular file"},
		{name: "model is not GGUF", args: []string{"--model", notGGUF},
			wantCode: api.HiveExitUsage, wantErr: "model " + notGGUF + " is not a GGUF file"},
		{name: "model is empty", args: []string{"--model", empty},
			wantCode: api.HiveExitUsage, wantErr: "is not a GGUF file"},
		{name: "bad device", args: []string{"--device", "gpu0"},
			wantCode: api.HiveExitUsage, wantErr: `invalid --device "gpu0"`},
		{name: "device without index", args: []string{"--device", "cuda:"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --device"},
		{name: "device with trailing comma", args: []string{"--device", "cuda:0,"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --device"},
		{name: "zero slots", args: []string{"--slots", "0"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --slots 0"},
		{name: "too many slots", args: []string{"--slots", "65"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --slots 65"},
		{name: "slots not a number", args: []string{"--slots", "many"},
			wantCode: api.HiveExitUsage, wantErr: `invalid argument "many"`},
		{name: "negative ctx size", args: []string{"--ctx-size", "-1"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --ctx-size"},
		{name: "bad host", args: []string{"--host", "a b"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --host"},
		{name: "unknown flag", args: []string{"--gpu", "0"},
			wantCode: api.HiveExitUsage, wantErr: "unknown flag: --gpu"},
		{name: "no token", noStdin: true, wantCode: api.HiveExitUsage,
			wantErr: "no worker token on stdin"},
		{name: "blank token", stdin: "  \n" + testToken + "\n", wantCode: api.HiveExitUsage,
			wantErr: "no worker token on stdin"},
		{name: "token with spaces", stdin: "two words\n", wantCode: api.HiveExitUsage,
			wantErr: "spaces or control characters"},
		{name: "missing worker binary", args: []string{"--worker-bin", missing},
			wantCode: api.HiveExitFailed, wantErr: "worker binary: stat " + missing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "ready")
			stdin := tc.stdin
			if stdin == "" && !tc.noStdin {
				stdin = testToken + "\n"
			}

			run := runHive(t, stdin, withFlags(f.spawnArgs("w1"), tc.args...)...)

			wantError(t, run, tc.wantCode, tc.wantErr)
			_, err := os.Stat(filepath.Join(f.workersDir(), "w1.log"))
			assert.Assert(t, os.IsNotExist(err), "a worker was started")
		})
	}
}

// withFlags sets flags (name, value pairs) in args, replacing the value of
// a flag already there and appending the others.
func withFlags(args []string, flags ...string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(flags); i += 2 {
		replaced := false
		for j := 0; j+1 < len(out); j++ {
			if out[j] == flags[i] {
				out[j+1] = flags[i+1]
				replaced = true
			}
		}
		if !replaced {
			out = append(out, flags[i], flags[i+1])
		}
	}
	return out
}

// killAndReap kills a worker behind the hive's back, as a crash would.
func killAndReap(t *testing.T, pid int) {
	t.Helper()
	assert.NilError(t, syscall.Kill(pid, syscall.SIGKILL))
	var ws syscall.WaitStatus
	_, err := syscall.Wait4(pid, &ws, 0, nil)
	assert.NilError(t, err)
}

func TestFindWorkerBin(t *testing.T) {
	dir := t.TempDir()
	exe := func(path string) string {
		t.Helper()
		assert.NilError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		assert.NilError(t, os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755))
		return path
	}
	explicit := exe(filepath.Join(dir, "custom", "worker"))
	notExec := filepath.Join(dir, "custom", "plain")
	assert.NilError(t, os.WriteFile(notExec, nil, 0o644))
	sibling := exe(filepath.Join(dir, "bin", workerArgv0))
	inPath := exe(filepath.Join(dir, "path", workerArgv0))

	tests := []struct {
		name     string
		explicit string
		self     string
		path     string
		want     string
		wantErr  string
	}{
		{name: "explicit", explicit: explicit, self: filepath.Join(dir, "bin", "rbee-hive"),
			want: explicit},
		{name: "explicit not executable", explicit: notExec,
			wantErr: "is not an executable file"},
		{name: "next to the hive", self: filepath.Join(dir, "bin", "rbee-hive"),
			path: filepath.Dir(inPath), want: sibling},
		{name: "in PATH", self: filepath.Join(dir, "elsewhere", "rbee-hive"),
			path: filepath.Dir(inPath), want: inPath},
		{name: "nowhere", self: filepath.Join(dir, "elsewhere", "rbee-hive"),
			path:    filepath.Join(dir, "empty"),
			wantErr: "cannot find llm-worker-rbee next to rbee-hive or in PATH: install it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)

			got, err := findWorkerBin(tc.explicit, tc.self)

			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
		})
	}
}
