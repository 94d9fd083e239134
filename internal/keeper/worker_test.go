package keeper

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// testWorkers are two workers as the queen reports them, seen at testNow.
var testWorkers = []api.Worker{
	{
		ID: "w-abc", Hive: "localhost", Model: "qwen2.5-0.5b", Device: "cuda:0",
		Slots: 4, SlotsBusy: 1, State: api.WorkerReady, URL: "http://127.0.0.1:41234",
		LastHeartbeat: testNow.Add(-1200 * time.Millisecond),
	},
	{
		ID: "w-def", Hive: "gpu2", Model: "llama-3-8b", Device: "cpu",
		Slots: 1, State: api.WorkerStarting, Restarts: 2, RestartReason: "lost: no heartbeat",
	},
}

func TestWorkerListTable(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/workers": func(w http.ResponseWriter, r *http.Request) {
			list := api.WorkerList{Workers: testWorkers}
			if r.URL.Query().Get("all") != "true" {
				list.Workers = list.Workers[:1]
			}
			reply(w, http.StatusOK, list)
		},
	})
	tests := []struct {
		name string
		tty  bool
		all  bool
		want string
	}{
		{
			name: "terminal",
			tty:  true,
			all:  true,
			want: "" +
				"ID     HIVE       MODEL         DEVICE  STATE     SLOTS  RESTARTS                LAST HEARTBEAT  URL\n" +
				"w-abc  localhost  qwen2.5-0.5b  cuda:0  ready     1/4    0                       1.2s ago        http://127.0.0.1:41234\n" +
				"w-def  gpu2       llama-3-8b    cpu     starting  0/1    2 (lost: no heartbeat)  -               -\n",
		},
		{
			name: "pipe",
			all:  true,
			want: "" +
				"w-abc\tlocalhost\tqwen2.5-0.5b\tcuda:0\tready\t1/4\t0\t1.2s ago\thttp://127.0.0.1:41234\n" +
				"w-def\tgpu2\tllama-3-8b\tcpu\tstarting\t0/1\t2 (lost: no heartbeat)\t-\t-\n",
		},
		{
			name: "without all",
			want: "w-abc\tlocalhost\tqwen2.5-0.5b\tcuda:0\tready\t1/4\t0\t1.2s ago\thttp://127.0.0.1:41234\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, stdout, stderr := testRoot(t, srv.URL, tc.tty)
			err := runWorkerList(context.Background(), &workerListOptions{root: root, All: tc.all})
			assert.NilError(t, err)
			assert.Equal(t, stdout.String(), tc.want)
			assert.Equal(t, stderr.String(), "")
		})
	}
}

func TestWorkerListEmpty(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/workers": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.WorkerList{})
		},
	})
	tests := []struct {
		name       string
		tty        bool
		json       bool
		wantStdout string
		wantStderr string
	}{
		{"terminal", true, false, "", "rbee: no workers: start one with `rbee worker spawn -m MODEL`\n"},
		{"pipe", false, false, "", ""},
		{"json", false, true, "{\n  \"workers\": []\n}\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, stdout, stderr := testRoot(t, srv.URL, tc.tty)
			err := runWorkerList(context.Background(), &workerListOptions{root: root, JSON: tc.json})
			assert.NilError(t, err)
			assert.Equal(t, stdout.String(), tc.wantStdout)
			assert.Equal(t, stderr.String(), tc.wantStderr)
		})
	}
}

func TestWorkerListJSON(t *testing.T) {
	var gotQuery recorder[string]
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/workers": func(w http.ResponseWriter, r *http.Request) {
			gotQuery.add(r.URL.RawQuery)
			reply(w, http.StatusOK, api.WorkerList{Workers: testWorkers})
		},
	})
	res := runKeeper(t, "", "worker", "list", "--all", "--json", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.DeepEqual(t, gotQuery.all(), []string{"all=true"})

	var got api.WorkerList
	assert.NilError(t, json.Unmarshal([]byte(res.stdout), &got))
	assert.DeepEqual(t, got, api.WorkerList{Workers: testWorkers})
}

// spawnQueen plays the queen for a spawn: the worker it starts goes
// through states, one per poll, then stays in the last.
type spawnQueen struct {
	mu     sync.Mutex
	req    api.SpawnRequest
	polls  int
	states []api.Worker
}

func (q *spawnQueen) routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"POST /v1/workers": func(w http.ResponseWriter, r *http.Request) {
			q.mu.Lock()
			defer q.mu.Unlock()
			if err := json.NewDecoder(r.Body).Decode(&q.req); err != nil {
				replyError(w, http.StatusBadRequest, err.Error())
				return
			}
			reply(w, http.StatusCreated, spawnedWorker(api.WorkerLoading, ""))
		},
		"GET /v1/workers/{id}": func(w http.ResponseWriter, r *http.Request) {
			q.mu.Lock()
			defer q.mu.Unlock()
			if r.PathValue("id") != "w-1" {
				replyError(w, http.StatusNotFound, "no worker "+r.PathValue("id"))
				return
			}
			next := q.states[min(q.polls, len(q.states)-1)]
			q.polls++
			reply(w, http.StatusOK, next)
		},
	}
}

// seen returns the spawn request and the number of polls so far.
func (q *spawnQueen) seen() (api.SpawnRequest, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.req, q.polls
}

func spawnedWorker(state api.WorkerState, errText string) api.Worker {
	return api.Worker{
		ID: "w-1", Hive: "localhost", Model: "tiny", ModelPath: "/models/tiny.gguf",
		Device: "cpu", Slots: 2, State: state, Error: errText,
		LogPath: "/home/me/.local/state/rbee/workers/w-1.log",
	}
}

func TestWorkerSpawn(t *testing.T) {
	ready := spawnedWorker(api.WorkerReady, "")
	ready.URL = "http://127.0.0.1:40001"
	ready.LastHeartbeat = time.Now()
	readyJSON, err := json.MarshalIndent(ready, "", "  ")
	assert.NilError(t, err)

	tests := []struct {
		name       string
		args       []string
		states     []api.Worker
		wantCode   int
		wantPolls  int // -1: not checked
		wantStdout string
		wantStderr []string // in order
	}{
		{
			name:       "loading then ready",
			args:       []string{"--json"},
			states:     []api.Worker{spawnedWorker(api.WorkerLoading, ""), ready},
			wantCode:   exitOK,
			wantPolls:  2,
			wantStdout: string(readyJSON) + "\n",
			wantStderr: []string{"worker w-1: loading\nworker w-1: ready\n"},
		},
		{
			name:   "ready as a table",
			states: []api.Worker{ready},
			// Not a terminal: plain rows, no header.
			wantCode:   exitOK,
			wantPolls:  1,
			wantStdout: "w-1\tlocalhost\ttiny\tcpu\tready\t0/2\t",
			wantStderr: []string{"worker w-1: loading\nworker w-1: ready\n"},
		},
		{
			name: "failed",
			states: []api.Worker{
				spawnedWorker(api.WorkerLoading, ""),
				spawnedWorker(api.WorkerFailed, "model needs 9.1 GiB, cpu has 4 GiB free"),
			},
			wantCode:  exitError,
			wantPolls: 2,
			wantStderr: []string{
				"worker w-1: loading\nworker w-1: failed\n",
				"rbee: worker w-1 failed: model needs 9.1 GiB, cpu has 4 GiB free " +
					"(log: /home/me/.local/state/rbee/workers/w-1.log on hive localhost)\n",
			},
		},
		{
			name:       "lost while loading",
			states:     []api.Worker{spawnedWorker(api.WorkerLost, "")},
			wantCode:   exitError,
			wantPolls:  1,
			wantStderr: []string{"rbee: worker w-1 lost: no reason given"},
		},
		{
			name:       "timeout",
			args:       []string{"--timeout", "300ms"},
			states:     []api.Worker{spawnedWorker(api.WorkerLoading, "")},
			wantCode:   exitError,
			wantPolls:  -1, // as many as fit in the timeout
			wantStderr: []string{"rbee: worker w-1 is still loading after 300ms"},
		},
		{
			name:       "no wait",
			args:       []string{"--no-wait", "--json"},
			states:     []api.Worker{ready},
			wantCode:   exitOK,
			wantPolls:  0,
			wantStdout: `"state": "loading"`,
			wantStderr: []string{"worker w-1: loading\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := &spawnQueen{states: tc.states}
			srv := fakeQueen(t, q.routes())
			args := append([]string{"worker", "spawn", "-m", "hf:org/repo/tiny.gguf",
				"--queen-url", srv.URL}, tc.args...)
			res := runKeeper(t, "", args...)

			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			assert.Assert(t, cmp.Contains(res.stdout, tc.wantStdout))
			if tc.wantCode != exitOK {
				assert.Equal(t, res.stdout, "")
			}
			rest := res.stderr
			for _, want := range tc.wantStderr {
				i := strings.Index(rest, want)
				assert.Assert(t, i >= 0, "want %q in order in stderr:\n%s", want, res.stderr)
				rest = rest[i+len(want):]
			}
			if _, polls := q.seen(); tc.wantPolls >= 0 {
				assert.Equal(t, polls, tc.wantPolls)
			}
		})
	}
}

func TestWorkerSpawnRequest(t *testing.T) {
	q := &spawnQueen{states: []api.Worker{spawnedWorker(api.WorkerReady, "")}}
	srv := fakeQueen(t, q.routes())
	res := runKeeper(t, "", "worker", "spawn", "-m", "hf:org/repo/tiny.gguf", "--name", "tiny",
		"--device", "cuda:1", "--slots", "4", "--ctx-size", "2048", "--restart", "always",
		"--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	req, _ := q.seen()
	// No --hive and no local file: the hive is left for the queen to pick.
	assert.DeepEqual(t, req, api.SpawnRequest{
		Model: "hf:org/repo/tiny.gguf", Name: "tiny",
		Device: "cuda:1", Slots: 4, CtxSize: 2048, Restart: api.RestartAlways,
	})
}

func TestWorkerSpawnSendsLocalFileAsAbsolutePath(t *testing.T) {
	dir := t.TempDir()
	assert.NilError(t, os.WriteFile(filepath.Join(dir, "tiny.gguf"), []byte("GGUF"), 0o600))
	t.Chdir(dir)
	wd, err := os.Getwd()
	assert.NilError(t, err)

	q := &spawnQueen{states: []api.Worker{spawnedWorker(api.WorkerReady, "")}}
	srv := fakeQueen(t, q.routes())
	res := runKeeper(t, "", "worker", "spawn", "-m", "tiny.gguf", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	req, _ := q.seen()
	assert.Equal(t, req.Model, filepath.Join(wd, "tiny.gguf"))
}

func TestLocalModelPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tiny.gguf")
	assert.NilError(t, os.WriteFile(file, []byte("GGUF"), 0o600))
	rel, err := filepath.Rel(mustGetwd(t), file)
	assert.NilError(t, err)

	tests := []struct {
		name     string
		model    string
		hive     string
		want     string
		wantHive string
	}{
		{"relative local file", rel, "localhost", file, "localhost"},
		{"absolute local file", file, "localhost", file, "localhost"},
		{"no hive named, local file", rel, "", file, "localhost"},
		{"no hive named, catalog name", "tiny", "", "tiny", ""},
		{"remote hive", rel, "gpu2", rel, "gpu2"},
		{"hugging face ref", "hf:org/repo/tiny.gguf", "localhost", "hf:org/repo/tiny.gguf",
			"localhost"},
		{"missing file", "nope.gguf", "localhost", "nope.gguf", "localhost"},
		{"directory", dir, "localhost", dir, "localhost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			model, hive := localModelPath(tc.model, tc.hive)
			assert.Equal(t, model, tc.want)
			assert.Equal(t, hive, tc.wantHive)
		})
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	assert.NilError(t, err)
	return wd
}

func TestWorkerStop(t *testing.T) {
	var gotPath recorder[string]
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"DELETE /v1/workers/{id}": func(w http.ResponseWriter, r *http.Request) {
			gotPath.add(r.URL.Path)
			stopped := spawnedWorker(api.WorkerStopped, "")
			stopped.ID = r.PathValue("id")
			reply(w, http.StatusOK, stopped)
		},
	})
	tests := []struct {
		name       string
		args       []string
		wantStdout string
	}{
		{"plain", []string{"w-1"}, "stopped w-1\n"},
		{"json", []string{"w-1", "--json"}, `"state": "stopped"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runKeeper(t, "", append([]string{"worker", "stop", "--queen-url", srv.URL},
				tc.args...)...)
			assert.Equal(t, res.code, exitOK, res.stderr)
			paths := gotPath.all()
			assert.Equal(t, paths[len(paths)-1], "/v1/workers/w-1")
			assert.Assert(t, cmp.Contains(res.stdout, tc.wantStdout))
			assert.Equal(t, res.stderr, "")
		})
	}
}
