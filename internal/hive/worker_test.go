package hive

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestWorkerLifecycle(t *testing.T) {
	f := newFixture(t, "ready")
	res := f.spawn(t, "w1", "--device", "cuda:0,1", "--slots", "4")

	run := runHive(t, "", "worker", "list")
	assert.Equal(t, run.code, api.HiveExitOK)
	list := decodeOne[api.HiveWorkerList](t, run.stdout)
	assert.Equal(t, len(list.Workers), 1)
	w := list.Workers[0]
	assert.Check(t, is.Equal(w.ID, "w1"))
	assert.Check(t, is.Equal(w.PID, res.PID))
	assert.Check(t, is.Equal(w.Port, res.Port))
	assert.Check(t, is.Equal(w.URL, res.URL))
	assert.Check(t, is.Equal(w.Model, "tiny"))
	assert.Check(t, is.Equal(w.ModelPath, f.model))
	assert.Check(t, is.Equal(w.Device, "cuda:0,1"))
	assert.Check(t, is.Equal(w.Slots, 4))
	assert.Check(t, is.Equal(w.LogPath, res.LogPath))
	assert.Check(t, time.Since(w.StartedAt) < time.Minute)
	assert.Check(t, w.Alive)

	run = runHive(t, "", "worker", "stop", "w1")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.StopResult](t, run.stdout),
		api.StopResult{ID: "w1", Outcome: "exited"})
	assert.Assert(t, !alive(res.PID, "w1"))

	log, err := os.ReadFile(res.LogPath)
	assert.NilError(t, err, "the log is kept")
	assert.Assert(t, is.Contains(string(log), "fake worker: got SIGTERM"))

	run = runHive(t, "", "worker", "list")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Equal(t, run.stdout, `{"workers":[]}`+"\n")

	run = runHive(t, "", "worker", "stop", "w1")
	wantError(t, run, api.HiveExitNotFound, `no worker "w1" on this hive`)
}

func TestStopKillsWorkerThatIgnoresSIGTERM(t *testing.T) {
	f := newFixture(t, "stubborn")
	res := f.spawn(t, "w1")

	run := runHive(t, "", "worker", "stop", "w1", "--timeout", "200ms")

	assert.Equal(t, run.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.StopResult](t, run.stdout),
		api.StopResult{ID: "w1", Outcome: "killed"})
	assert.Assert(t, !alive(res.PID, "w1"))
}

func TestListShowsDeadWorker(t *testing.T) {
	f := newFixture(t, "ready")
	res := f.spawn(t, "w1")
	f.spawn(t, "w2")
	killAndReap(t, res.PID)

	run := runHive(t, "", "worker", "list")

	assert.Equal(t, run.code, api.HiveExitOK)
	list := decodeOne[api.HiveWorkerList](t, run.stdout)
	assert.Equal(t, len(list.Workers), 2)
	assert.Check(t, is.Equal(list.Workers[0].ID, "w1"))
	assert.Check(t, !list.Workers[0].Alive)
	assert.Check(t, is.Equal(list.Workers[1].ID, "w2"))
	assert.Check(t, list.Workers[1].Alive)

	run = runHive(t, "", "worker", "stop", "w1")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.StopResult](t, run.stdout),
		api.StopResult{ID: "w1", Outcome: "not_running"})
	_, err := os.Stat(filepath.Join(f.workersDir(), "w1.json"))
	assert.Assert(t, os.IsNotExist(err), "the record is removed")
}

func TestPIDReusedByAnotherProgram(t *testing.T) {
	f := newFixture(t, "ready")
	// A record whose pid now belongs to another program: this test.
	writeRecord(t, f, api.HiveWorker{ID: "w1", PID: os.Getpid()})

	list := decodeOne[api.HiveWorkerList](t, runHive(t, "", "worker", "list").stdout)
	assert.Equal(t, len(list.Workers), 1)
	assert.Check(t, !list.Workers[0].Alive)

	run := runHive(t, "", "worker", "stop", "w1", "--timeout", "0s")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.StopResult](t, run.stdout),
		api.StopResult{ID: "w1", Outcome: "not_running"})
}

func TestListSkipsUnreadableRecords(t *testing.T) {
	f := newFixture(t, "ready")
	writeRecord(t, f, api.HiveWorker{ID: "good"})
	assert.NilError(t, os.WriteFile(filepath.Join(f.workersDir(), "bad.json"), []byte("{"), 0o600))
	assert.NilError(t, os.WriteFile(filepath.Join(f.workersDir(), ".good.json.tmp1"), nil, 0o600))

	run := runHive(t, "", "worker", "list")

	assert.Equal(t, run.code, api.HiveExitOK)
	list := decodeOne[api.HiveWorkerList](t, run.stdout)
	assert.Equal(t, len(list.Workers), 1)
	assert.Check(t, is.Equal(list.Workers[0].ID, "good"))
	assert.Check(t, is.Contains(run.stderr, "skipping unreadable worker record"))
}

func TestListWithoutStateDir(t *testing.T) {
	t.Setenv(envStateDir, filepath.Join(t.TempDir(), "never-created"))

	run := runHive(t, "", "worker", "list")

	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Equal(t, run.stdout, `{"workers":[]}`+"\n")
}

func writeRecord(t *testing.T, f fixture, w api.HiveWorker) {
	t.Helper()
	assert.NilError(t, os.MkdirAll(f.workersDir(), 0o700))
	data, err := json.Marshal(w)
	assert.NilError(t, err)
	assert.NilError(t, os.WriteFile(filepath.Join(f.workersDir(), w.ID+".json"), data, 0o600))
}

func TestStopRejectsBadInput(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "unknown id", args: []string{"nope"}, wantCode: api.HiveExitNotFound,
			wantErr: `no worker "nope" on this hive`},
		{name: "path in id", args: []string{"../w1"}, wantCode: api.HiveExitUsage,
			wantErr: "invalid worker id"},
		{name: "no id", wantCode: api.HiveExitUsage,
			wantErr: "rbee-hive worker stop takes 1 argument(s), got 0"},
		{name: "two ids", args: []string{"a", "b"}, wantCode: api.HiveExitUsage,
			wantErr: "got 2"},
		{name: "negative timeout", args: []string{"w1", "--timeout", "-1s"},
			wantCode: api.HiveExitUsage, wantErr: "--timeout must not be negative"},
		{name: "bad timeout", args: []string{"w1", "--timeout", "soon"},
			wantCode: api.HiveExitUsage, wantErr: `invalid argument "soon"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			newFixture(t, "ready")

			run := runHive(t, "", append([]string{"worker", "stop"}, tc.args...)...)

			wantError(t, run, tc.wantCode, tc.wantErr)
		})
	}
}

func TestIsWorkerCmdline(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want bool
	}{
		{name: "worker", argv: []string{"llm-worker-rbee", "--id", "w1", "--port", "0"}, want: true},
		{name: "worker by path", argv: []string{"/opt/bin/llm-worker-rbee", "--id=w1"}, want: true},
		{name: "other id", argv: []string{"llm-worker-rbee", "--id", "w2"}},
		{name: "id as a prefix", argv: []string{"llm-worker-rbee", "--id", "w10"}},
		{name: "other program", argv: []string{"sleep", "--id", "w1"}},
		{name: "id at the end without value", argv: []string{"llm-worker-rbee", "--id"}},
		{name: "empty (zombie)", argv: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cmdline []byte
			if tc.argv != nil {
				cmdline = []byte(strings.Join(tc.argv, "\x00") + "\x00")
			}
			assert.Equal(t, isWorkerCmdline(cmdline, "w1"), tc.want)
		})
	}
}

func TestListReportsWorkerTheQueenForgot(t *testing.T) {
	f := newFixture(t, "ready")
	f.spawn(t, "w1", "--queen-url", "http://127.0.0.1:7833")
	f.spawn(t, "w2", "--queen-url", "http://127.0.0.1:7833")

	// What w1 writes when the queen answers its heartbeats 404.
	since := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	status, err := json.Marshal(api.WorkerQueenStatus{QueenURL: "http://127.0.0.1:7833",
		UnknownSince: since, LastReply: "404 worker_not_found"})
	assert.NilError(t, err)
	statusPath := filepath.Join(f.workersDir(), "w1.status.json")
	assert.NilError(t, os.WriteFile(statusPath, status, 0o600))

	run := runHive(t, "", "worker", "list")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Assert(t, is.Contains(run.stdout, `"orphan":true`))
	list := decodeOne[api.HiveWorkerList](t, run.stdout)
	assert.Equal(t, len(list.Workers), 2, "the status file is no record")
	w1, w2 := list.Workers[0], list.Workers[1]
	assert.Check(t, w1.Orphan)
	assert.Check(t, is.Equal(w1.OrphanReason, "the queen at http://127.0.0.1:7833 has not "+
		"known this worker since 2026-03-04T05:06:07Z (its heartbeats get 404 worker_not_found)"))
	assert.Check(t, !w2.Orphan)
	assert.Check(t, is.Equal(w2.OrphanReason, ""))
	assert.Check(t, !strings.Contains(run.stdout, `"orphan":false`), "omitted when unset")

	// Stopping the worker removes its status file with its record.
	run = runHive(t, "", "worker", "stop", "w1")
	assert.Equal(t, run.code, api.HiveExitOK)
	_, err = os.Stat(statusPath)
	assert.Assert(t, os.IsNotExist(err))
}
