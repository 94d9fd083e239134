package keeper

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestDeployFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no model", []string{"--replicas", "2"}, "--model is required"},
		{"no replicas", []string{"-m", "tiny"}, "--replicas is required"},
		{"negative replicas", []string{"-m", "tiny", "--replicas", "-1"},
			"--replicas must be between 0 and 64"},
		{"too many replicas", []string{"-m", "tiny", "--replicas", "65"},
			"--replicas must be between 0 and 64"},
		{"bad slots", []string{"-m", "tiny", "--replicas", "1", "--slots", "0"},
			"--slots must be between 1 and 64"},
		{"bad restart", []string{"-m", "tiny", "--replicas", "1", "--restart", "sometimes"},
			"--restart must be always, on-failure or never"},
		{"stray argument", []string{"tiny"}, `unknown command "tiny"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"deploy", "--queen-url", closedURL(t)}, tc.args...)
			res := runKeeper(t, "", args...)
			assert.Equal(t, res.code, exitUsage, res.stderr)
			assert.Check(t, cmp.Contains(res.stderr, tc.want))
		})
	}
}

// deployQueen plays a queen holding one deployment that gets ready after
// two polls.
func deployQueen(t *testing.T, got *api.DeployRequest) *httptest.Server {
	var polls atomic.Int32
	d := api.Deployment{Name: "tiny", Model: "tiny", Replicas: 2, Live: 2,
		Workers: []string{"w-a", "w-b"}}
	return fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/deployments": func(w http.ResponseWriter, r *http.Request) {
			assert.Check(t, json.NewDecoder(r.Body).Decode(got))
			reply(w, http.StatusCreated, d)
		},
		"GET /v1/deployments/tiny": func(w http.ResponseWriter, _ *http.Request) {
			ready := d
			ready.Ready = min(int(polls.Add(1)), 2)
			reply(w, http.StatusOK, ready)
		},
	})
}

func TestDeployWaitsForReplicas(t *testing.T) {
	var got api.DeployRequest
	srv := deployQueen(t, &got)
	res := runKeeper(t, "", "deploy", "-m", "tiny", "--replicas", "2", "--slots", "2",
		"--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, cmp.Equal(got.Replicas, 2))
	assert.Check(t, cmp.Equal(got.Model, "tiny"))
	assert.Check(t, cmp.Equal(got.Slots, 2))
	assert.Check(t, got.GPULayers == nil)
	assert.Check(t, cmp.Contains(res.stderr, "deployment tiny: 0/2 ready\n"))
	assert.Check(t, cmp.Contains(res.stderr, "deployment tiny: 2/2 ready\n"))
	assert.Check(t, cmp.Equal(res.stdout, "tiny\ttiny\t(placed)\t2\t2\tw-a,w-b\t-\n"))
}

func TestDeployListAndRm(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/deployments": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.DeploymentList{Deployments: []api.Deployment{
				{Name: "tiny", Model: "tiny", Hive: "h1", Replicas: 2, Ready: 1,
					Workers: []string{"w-a"}, Error: "no hive fits"}}})
		},
		"DELETE /v1/deployments/tiny": func(w http.ResponseWriter, r *http.Request) {
			assert.Check(t, cmp.Equal(r.URL.Query().Get("timeout"), "5s"))
			reply(w, http.StatusOK, api.DeploymentRemoved{Name: "tiny",
				Workers: []api.Worker{{ID: "w-a"}}})
		},
	})
	res := runKeeper(t, "", "deploy", "list", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, cmp.Equal(res.stdout, "tiny\ttiny\th1\t2\t1\tw-a\tno hive fits\n"))

	res = runKeeper(t, "", "deploy", "list", "--json", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, cmp.Contains(res.stdout, `"replicas": 2`))

	res = runKeeper(t, "", "deploy", "rm", "tiny", "--timeout", "5s", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, cmp.Equal(res.stdout, "drained and stopped w-a\nremoved deployment tiny\n"))

	res = runKeeper(t, "", "deploy", "rm", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitUsage)
}

func TestHiveGC(t *testing.T) {
	var dryRun atomic.Bool
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/hives/h1/gc": func(w http.ResponseWriter, r *http.Request) {
			dry := r.URL.Query().Get("dry_run") == "true"
			dryRun.Store(dry)
			o := api.Orphan{HiveWorker: api.HiveWorker{ID: "w-x", PID: 42, Model: "tiny",
				Alive: true}, Reason: "the queen has no worker w-x", Action: api.OrphanStop,
				Done: !dry}
			reply(w, http.StatusOK, api.GCResult{Hive: "h1", DryRun: dry, Orphans: []api.Orphan{o}})
		},
		"POST /v1/hives/h2/gc": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.GCResult{Hive: "h2", Orphans: []api.Orphan{{
				HiveWorker: api.HiveWorker{ID: "w-y"}, Action: api.OrphanStop,
				Error: "hive unreachable"}}})
		},
	})
	res := runKeeper(t, "", "hive", "gc", "h1", "--dry-run", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, dryRun.Load())
	assert.Check(t, cmp.Equal(res.stdout,
		"w-x\t42\ttiny\ttrue\tstop\tdry run\tthe queen has no worker w-x\n"))

	res = runKeeper(t, "", "hive", "gc", "h1", "--json", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Check(t, !dryRun.Load())
	assert.Check(t, cmp.Contains(res.stdout, `"done": true`))

	res = runKeeper(t, "", "hive", "gc", "h2", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitError)
	assert.Check(t, cmp.Contains(res.stdout, "ERROR: hive unreachable"))
	assert.Check(t, cmp.Contains(res.stderr, "run `rbee hive gc` again"))
}

func TestQueenStopCascade(t *testing.T) {
	var srv *httptest.Server
	srv = fakeQueen(t, map[string]http.HandlerFunc{
		"GET /health": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, map[string]string{"status": "ok"})
		},
		"POST /v1/shutdown": func(w http.ResponseWriter, r *http.Request) {
			assert.Check(t, cmp.Equal(r.URL.Query().Get("cascade"), "true"))
			assert.Check(t, cmp.Equal(r.URL.Query().Get("timeout"), "2s"))
			reply(w, http.StatusAccepted, api.ShutdownResult{Status: "shutting_down",
				Workers: []api.Worker{{ID: "w-a", Model: "tiny", Hive: "localhost"}},
				Errors:  []string{"worker w-b on hive h1: unreachable"}})
			go srv.Close()
		},
	})
	res := runKeeper(t, "", "queen", "stop", "--cascade", "--timeout", "2s", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitError)
	assert.Check(t, cmp.Equal(res.stdout, "stopped worker w-a (tiny on localhost)\nqueen stopped\n"))
	assert.Check(t, cmp.Contains(res.stderr, "rbee: worker w-b on hive h1: unreachable"))
	assert.Check(t, cmp.Contains(res.stderr, "rbee hive gc"))
}
