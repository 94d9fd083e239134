package queen

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// fleetHive plays the local hive for deployments and gc: it spawns, stops
// and lists workers, keeping a record of each as the real hive does, and
// holds one catalog model, testModel, so that placement picks it.
type fleetHive struct {
	mu        sync.Mutex
	records   map[string]api.HiveWorker
	pid       int
	spawnExit int // exit code of `worker spawn`; 0: it starts
	stopExit  int // exit code of `worker stop`; 0: it stops
	// stopGate, when set before the test starts the queen's work, holds
	// every `worker stop` until it is closed.
	stopGate chan struct{}
	stops    []string
}

func newFleetHive() *fleetHive { return &fleetHive{records: map[string]api.HiveWorker{}} }

func (h *fleetHive) Run(_ context.Context, argv []string, _ io.Reader) (sshexec.Result, error) {
	if h.stopGate != nil && len(argv) > 2 && argv[1] == "worker" && argv[2] == "stop" {
		<-h.stopGate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	args := argv[1:]
	var out any
	switch strings.Join(args[:min(2, len(args))], " ") {
	case "devices":
		out = api.Devices{CPU: api.CPUDevice{RAMAvailable: 64 << 30}}
	case "model list":
		out = api.ModelList{Models: []api.Model{{Name: testModel}}}
	case "worker spawn":
		if h.spawnExit != 0 {
			return sshexec.Result{ExitCode: h.spawnExit,
				Stdout: []byte(`{"error":"model does not load"}`)}, nil
		}
		h.pid++
		id := flagValue(args, "--id")
		h.records[id] = api.HiveWorker{ID: id, PID: h.pid, Model: flagValue(args, "--name"),
			Alive: true}
		out = api.SpawnResult{ID: id, PID: h.pid, URL: "http://127.0.0.1:1", LogPath: "/l"}
	case "worker stop":
		id := args[2]
		h.stops = append(h.stops, id)
		if h.stopExit != 0 {
			return sshexec.Result{ExitCode: h.stopExit,
				Stdout: []byte(`{"error":"cannot stop"}`)}, nil
		}
		if _, ok := h.records[id]; !ok {
			return sshexec.Result{ExitCode: api.HiveExitNotFound,
				Stdout: []byte(`{"error":"no worker"}`)}, nil
		}
		delete(h.records, id)
		out = api.StopResult{ID: id, Outcome: "exited"}
	case "worker list":
		list := api.HiveWorkerList{Workers: []api.HiveWorker{}}
		for _, w := range h.records {
			list.Workers = append(list.Workers, w)
		}
		out = list
	default:
		return sshexec.Result{ExitCode: api.HiveExitUsage}, nil
	}
	data, err := json.Marshal(out)
	return sshexec.Result{Stdout: data}, err
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func (h *fleetHive) stopped() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.stops...)
}

// newFleetServer is a queen on a fake clock with a fleetHive as its local
// hive.
func newFleetServer(t *testing.T) (*Server, *heartbeat.FakeClock, *fleetHive) {
	t.Helper()
	s, clock, _ := newRestartServer(t)
	hive := newFleetHive()
	s.hives.local = hive
	return s, clock, hive
}

// deploy records a deployment of testModel with n replicas.
func deploy(t *testing.T, s *Server, n int) {
	t.Helper()
	d, err := deploymentFrom(api.DeployRequest{SpawnRequest: api.SpawnRequest{Model: testModel},
		Replicas: n})
	assert.NilError(t, err)
	_, err = s.store.PutDeployment(context.Background(), d)
	assert.NilError(t, err)
}

// replicas returns the deployment's live workers, as GET would.
func replicas(t *testing.T, s *Server) api.Deployment {
	t.Helper()
	d, err := s.store.Deployment(context.Background(), testModel)
	assert.NilError(t, err)
	st, err := s.observeDeployment(context.Background(), d)
	assert.NilError(t, err)
	return st
}

// beat records a heartbeat in state as the heartbeat handler would.
func beat(t *testing.T, s *Server, id string, state api.WorkerState) {
	t.Helper()
	hb := api.Heartbeat{WorkerID: id, State: state}
	assert.NilError(t, s.store.RecordHeartbeat(context.Background(), id, hb, s.clock.Now()))
}

func TestDeploymentScalesUpThroughPlacement(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 2)

	s.reconcile(ctx)
	st := replicas(t, s)
	assert.Check(t, is.Equal(st.Live, 2))
	assert.Check(t, is.Len(hive.records, 2))
	for _, id := range st.Workers {
		wk, err := s.store.Worker(ctx, id)
		assert.NilError(t, err)
		assert.Check(t, is.Equal(wk.Hive, defaultHive), "placed on the hive holding the model")
		assert.Check(t, is.Equal(wk.Model, testModel))
		beat(t, s, id, api.WorkerReady)
	}

	s.reconcile(ctx) // nothing missing: nothing spawned
	assert.Check(t, is.Len(hive.records, 2))
	assert.Check(t, is.Equal(replicas(t, s).Ready, 2))
}

func TestDeploymentLeavesRestartsToTheRestartPath(t *testing.T) {
	ctx := context.Background()
	s, clock, hive := newFleetServer(t)
	deploy(t, s, 2)
	s.reconcile(ctx)
	ids := replicas(t, s).Workers
	for _, id := range ids {
		beat(t, s, id, api.WorkerReady)
	}

	// Lost after it was ready: on-failure restarts it, under its own id.
	assert.NilError(t, s.store.SetState(ctx, ids[0], api.WorkerLost, "no heartbeat"))
	s.reconcile(ctx)
	st := replicas(t, s)
	assert.Check(t, is.Equal(st.Live, 2), "the lost worker keeps its slot")
	assert.Check(t, is.Len(hive.records, 2), "no second worker beside the one being restarted")

	clock.Advance(backoffBase)
	s.reconcile(ctx)
	back, err := s.store.Worker(ctx, ids[0])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(back.Restarts, 1))
	assert.Check(t, is.DeepEqual(replicas(t, s).Workers, ids))
}

func TestDeploymentReplacesDeadWorkersWithBackoff(t *testing.T) {
	ctx := context.Background()
	s, clock, hive := newFleetServer(t)
	deploy(t, s, 1)
	s.reconcile(ctx)
	first := replicas(t, s).Workers[0]

	// Failed while loading: no restart policy brings it back.
	beat(t, s, first, api.WorkerFailed)
	s.reconcile(ctx)
	old, err := s.store.Worker(ctx, first)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(old.Desired, registry.DesiredStopped))
	assert.Check(t, is.Equal(old.State, api.WorkerFailed), "retired, and still says how it ended")
	st := replicas(t, s)
	assert.Check(t, is.Equal(st.Live, 0), "the replacement waits out the backoff")
	assert.Check(t, st.Error != "")

	clock.Advance(backoffBase)
	s.reconcile(ctx)
	st = replicas(t, s)
	assert.Assert(t, is.Len(st.Workers, 1))
	assert.Check(t, st.Workers[0] != first)

	// A hive that refuses the spawn: the record is retired at once, and
	// the wait grows.
	beat(t, s, st.Workers[0], api.WorkerFailed)
	hive.spawnExit = api.HiveExitNoFit
	for range 3 {
		clock.Advance(backoffCap)
		s.reconcile(ctx)
	}
	assert.Check(t, is.Equal(s.deploys.retry[testModel].streak, 4))
	assert.Check(t, is.Equal(replicas(t, s).Live, 0))
}

func TestDeploymentStopsLostWorkerItReplaces(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 1)
	s.reconcile(ctx)
	lost := replicas(t, s).Workers[0]

	// Lost while loading: it may still run, hung.
	assert.NilError(t, s.store.SetState(ctx, lost, api.WorkerLost, "no heartbeat"))
	s.reconcile(ctx)
	assert.Check(t, is.DeepEqual(hive.stopped(), []string{lost}))
	wk, err := s.store.Worker(ctx, lost)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.State, api.WorkerStopped), "a late heartbeat is told to exit")
	assert.Check(t, is.Contains(wk.Error, "deployment tiny replaces it"))
}

func TestDeploymentScalesDownLeastUsefulFirst(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 3)
	s.reconcile(ctx)
	ids := replicas(t, s).Workers
	beat(t, s, ids[0], api.WorkerReady) // the oldest is ready; the others still load

	deploy(t, s, 1)
	s.reconcile(ctx)
	s.deploys.drains.Wait()
	assert.Check(t, is.DeepEqual(replicas(t, s).Workers, ids[:1]))
	for _, id := range ids[1:] {
		wk, err := s.store.Worker(ctx, id)
		assert.NilError(t, err)
		assert.Check(t, is.Equal(wk.State, api.WorkerStopped))
	}
	assert.Check(t, is.Len(hive.records, 1))
}

func TestDrainFirst(t *testing.T) {
	at := func(sec int) time.Time { return restartStart.Add(time.Duration(sec) * time.Second) }
	workers := []registry.Worker{
		{Worker: api.Worker{ID: "old-busy", State: api.WorkerReady, CreatedAt: at(0)}},
		{Worker: api.Worker{ID: "old-idle", State: api.WorkerReady, CreatedAt: at(1)}},
		{Worker: api.Worker{ID: "new-idle", State: api.WorkerReady, CreatedAt: at(2)}},
		{Worker: api.Worker{ID: "loading", State: api.WorkerLoading, CreatedAt: at(0)}},
	}
	busy := map[string]int{"old-busy": 2}
	drainFirst(workers, func(id string) int { return busy[id] })
	var got []string
	for _, w := range workers {
		got = append(got, w.ID)
	}
	assert.DeepEqual(t, got, []string{"loading", "new-idle", "old-idle", "old-busy"})
}

// call sends a request to s's routes and decodes the answer into out.
func call(t *testing.T, srv *httptest.Server, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	assert.NilError(t, err)
	resp, err := http.DefaultClient.Do(req)
	assert.NilError(t, err)
	defer resp.Body.Close()
	if out != nil {
		assert.NilError(t, json.NewDecoder(resp.Body).Decode(out))
	}
	return resp.StatusCode
}

func TestDeploymentRoutes(t *testing.T) {
	s, _, hive := newFleetServer(t)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)

	var body api.ErrorBody
	code := call(t, srv, http.MethodPost, "/v1/deployments", `{"model":"tiny","replicas":-1}`, &body)
	assert.Check(t, is.Equal(code, http.StatusBadRequest))
	assert.Check(t, is.Equal(body.Error.Param, "replicas"))

	var d api.Deployment
	code = call(t, srv, http.MethodPost, "/v1/deployments",
		`{"model":"`+testModel+`","replicas":2}`, &d)
	assert.Check(t, is.Equal(code, http.StatusCreated))
	assert.Check(t, is.Equal(d.Live, 2))
	code = call(t, srv, http.MethodPost, "/v1/deployments",
		`{"model":"`+testModel+`","replicas":2}`, &d)
	assert.Check(t, is.Equal(code, http.StatusOK))

	var list api.DeploymentList
	assert.Check(t, is.Equal(call(t, srv, http.MethodGet, "/v1/deployments", "", &list), 200))
	assert.Assert(t, is.Len(list.Deployments, 1))
	assert.Check(t, is.Equal(list.Deployments[0].Replicas, 2))

	var removed api.DeploymentRemoved
	code = call(t, srv, http.MethodDelete, "/v1/deployments/"+testModel+"?timeout=1s", "", &removed)
	assert.Check(t, is.Equal(code, http.StatusOK))
	assert.Check(t, is.Len(removed.Workers, 2))
	assert.Check(t, is.Len(hive.records, 0))
	code = call(t, srv, http.MethodGet, "/v1/deployments/"+testModel, "", &body)
	assert.Check(t, is.Equal(code, http.StatusNotFound))
	assert.Check(t, is.Contains(body.Error.Message, "rbee deploy list"))

	// A new deployment that no hive can run is refused, and not kept.
	code = call(t, srv, http.MethodPost, "/v1/deployments", `{"model":"absent","replicas":1}`, &body)
	assert.Check(t, is.Equal(code, http.StatusUnprocessableEntity))
	_, err := s.store.Deployment(context.Background(), "absent")
	assert.Check(t, errors.Is(err, registry.ErrNotFound))
}

func TestCascadeStopsEveryWorker(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 2)
	s.reconcile(ctx)

	stopped, errs := s.stopEveryWorker(ctx, time.Second)
	assert.Check(t, is.Len(errs, 0))
	assert.Check(t, is.Len(stopped, 2))
	assert.Check(t, is.Len(hive.records, 0))
	all, err := s.store.Workers(ctx, true)
	assert.NilError(t, err)
	for _, wk := range all {
		assert.Check(t, is.Equal(wk.Desired, registry.DesiredStopped))
	}
	s.reconcile(ctx) // halted: the deployment spawns nothing
	assert.Check(t, is.Len(hive.records, 0))
}

func TestDeploymentNameChecked(t *testing.T) {
	tests := []struct {
		name, model, dname string
		replicas           int
		wantParam, wantMsg string
	}{
		{name: "default from file", model: "/m/tiny-q4.gguf", dname: ""},
		{name: "slash", model: testModel, dname: "a/b", wantParam: "name",
			wantMsg: "letter or digit"},
		{name: "newline", model: testModel, dname: "a\nb", wantParam: "name"},
		{name: "dot dot", model: testModel, dname: "..", wantParam: "name"},
		{name: "too long", model: testModel, dname: strings.Repeat("a", 129), wantParam: "name"},
		{name: "file name unusable", model: "/m/.gguf", wantParam: "name",
			wantMsg: "pass a name (--name)"},
		{name: "huge replicas", model: testModel, replicas: 1_000_000, wantParam: "replicas",
			wantMsg: "between 0 and 64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := deploymentFrom(api.DeployRequest{Replicas: tc.replicas,
				SpawnRequest: api.SpawnRequest{Model: tc.model, Name: tc.dname}})
			if tc.wantParam == "" {
				assert.NilError(t, err)
				return
			}
			assert.Assert(t, err != nil)
			e := httpapi.AsError(err)
			assert.Check(t, is.Equal(e.Status, http.StatusBadRequest))
			assert.Check(t, is.Equal(e.Param, tc.wantParam))
			assert.Check(t, is.Contains(e.Message, tc.wantMsg))
		})
	}
}

// A worker scale-down drains can be written back to loading by its own
// heartbeat; it must not count as a replica again, or a second worker is
// drained in its place.
func TestDeploymentScaleDownDrainsOnlyTheExtra(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	hive.stopGate = make(chan struct{})
	deploy(t, s, 2)
	s.reconcile(ctx)
	ids := replicas(t, s).Workers
	assert.Assert(t, is.Len(ids, 2))

	deploy(t, s, 1)
	s.reconcile(ctx) // one drains; its stop waits on the gate
	var going, kept string
	for _, id := range ids {
		wk, err := s.store.Worker(ctx, id)
		assert.NilError(t, err)
		if wk.State == api.WorkerDraining {
			going = id
		} else {
			kept = id
		}
	}
	assert.Assert(t, going != "" && kept != "")
	beat(t, s, going, api.WorkerLoading)
	s.reconcile(ctx)
	wk, err := s.store.Worker(ctx, kept)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.State, api.WorkerLoading), "the kept worker is not drained")

	close(hive.stopGate)
	s.deploys.drains.Wait()
	assert.Check(t, is.DeepEqual(replicas(t, s).Workers, []string{kept}))
	assert.Check(t, is.DeepEqual(hive.stopped(), []string{going}))
}

// Removing a deployment whose worker cannot be stopped says what to do,
// and leaves that worker wanted stopped, so that gc takes it later.
func TestDeleteDeploymentRetiresWorkersItCannotStop(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)
	deploy(t, s, 1)
	s.reconcile(ctx)
	id := replicas(t, s).Workers[0]

	hive.stopExit = 1
	var body api.ErrorBody
	code := call(t, srv, http.MethodDelete, "/v1/deployments/"+testModel+"?timeout=0s", "", &body)
	assert.Check(t, code >= 500, code)
	assert.Check(t, is.Contains(body.Error.Message, "deployment tiny is removed"))
	assert.Check(t, is.Contains(body.Error.Message, "run `rbee hive gc localhost`"))
	wk, err := s.store.Worker(ctx, id)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.Desired, registry.DesiredStopped))

	hive.stopExit = 0
	res, err := s.collectGarbage(ctx, defaultHive, false)
	assert.NilError(t, err)
	assert.Assert(t, is.Len(res.Orphans, 1))
	assert.Check(t, is.Equal(res.Orphans[0].ID, id))
	assert.Check(t, is.Len(hive.records, 0))
}

func TestDeploymentOnRemovedHiveSaysWhatToDo(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	d, err := deploymentFrom(api.DeployRequest{Replicas: 1,
		SpawnRequest: api.SpawnRequest{Model: testModel, Hive: "gone"}})
	assert.NilError(t, err)
	_, err = s.store.PutDeployment(ctx, d)
	assert.NilError(t, err)

	s.reconcile(ctx)
	st := replicas(t, s)
	assert.Check(t, is.Equal(st.Live, 0))
	assert.Check(t, is.Contains(st.Error, `hive "gone", which was removed`))
	assert.Check(t, is.Contains(st.Error, "rbee deploy rm tiny"))
	assert.Check(t, is.Len(hive.records, 0))
}

func TestHiveWithADeploymentIsNotRemoved(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newFleetServer(t)
	assert.NilError(t, s.store.CreateHive(ctx, registry.Hive{Name: "gpu9", Host: "127.0.0.9",
		SSHUser: "rbee", SSHPort: 22}))
	d, err := deploymentFrom(api.DeployRequest{Replicas: 1,
		SpawnRequest: api.SpawnRequest{Model: testModel, Hive: "gpu9"}})
	assert.NilError(t, err)
	_, err = s.store.PutDeployment(ctx, d)
	assert.NilError(t, err)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)

	var body api.ErrorBody
	code := call(t, srv, http.MethodDelete, "/v1/hives/gpu9?force=true", "", &body)
	assert.Check(t, is.Equal(code, http.StatusConflict))
	assert.Check(t, is.Equal(body.Error.Code, "hive_deployed"))
	assert.Check(t, is.Contains(body.Error.Message, "rbee deploy rm "+testModel))
	_, err = s.store.Hive(ctx, "gpu9")
	assert.Check(t, err, "the hive is still there")
}

// downHiveSetup is a deployment of one replica of testModel, without
// --hive, whose worker w-1 runs on remote hive gpu2 (a real sshd, with a
// fake rbee-hive that only answers version and worker stop), and a
// fleetHive as the local hive, where replacements go.
type downHiveSetup struct {
	*probeSetup
	local *fleetHive
}

func newDownHiveSetup(t *testing.T, state api.WorkerState) *downHiveSetup {
	t.Helper()
	ctx := context.Background()
	p := newProbeSetup(t)
	local := newFleetHive()
	p.s.hives.local = local
	bin := fakeHiveScript(t, `case "$1" in
version) echo '{"version":"test","protocol_version":`+strconv.Itoa(api.ProtocolVersion)+`}' ;;
worker) echo '{"id":"'"$3"'","outcome":"exited"}' ;;
*) exit 2 ;;
esac
`)
	gpu1 := p.hive(t)
	assert.NilError(t, p.s.store.CreateHive(ctx, registry.Hive{Name: "gpu2", Host: gpu1.Host,
		SSHPort: gpu1.SSHPort, SSHUser: gpu1.SSHUser, KeyPath: gpu1.KeyPath, HiveBin: bin}))
	deploy(t, p.s, 1)
	wk := registry.Worker{
		Worker: api.Worker{ID: "w-1", Hive: "gpu2", Model: testModel, ModelPath: "/m.gguf",
			Device: "cpu", Slots: 1, CreatedAt: restartStart, Restart: api.RestartOnFailure},
		Token: "tok", ReadyAt: restartStart,
	}
	assert.NilError(t, p.s.store.CreateWorker(ctx, wk))
	assert.NilError(t, p.s.store.SetWorkerDeployment(ctx, "w-1", testModel))
	assert.NilError(t, p.s.store.SetState(ctx, "w-1", state, ""))
	return &downHiveSetup{probeSetup: p, local: local}
}

// hiveDown stops the sshd and lets the probe find both remote hives gone.
func (p *downHiveSetup) hiveDown(t *testing.T) {
	t.Helper()
	p.sshd.Stop()
	p.s.probeHives(context.Background())
	h, err := p.s.store.Hive(context.Background(), "gpu2")
	assert.NilError(t, err)
	assert.Assert(t, hiveWait(h) != "")
	p.takeCalls()
}

func (p *downHiveSetup) worker(t *testing.T, id string) registry.Worker {
	t.Helper()
	wk, err := p.s.store.Worker(context.Background(), id)
	assert.NilError(t, err)
	return wk
}

func TestDeploymentReplacesWorkerOnDownHive(t *testing.T) {
	ctx := context.Background()
	p := newDownHiveSetup(t, api.WorkerLost)
	p.hiveDown(t)

	// Within the grace the lost worker keeps its replica, waiting for its
	// restart, which waits for the hive.
	p.s.reconcile(ctx)
	p.clock.Advance(hiveDownGrace - time.Second)
	p.s.reconcile(ctx)
	assert.Check(t, is.DeepEqual(replicas(t, p.s).Workers, []string{"w-1"}))
	assert.Check(t, is.Len(p.local.records, 0))

	p.clock.Advance(time.Second)
	p.s.reconcile(ctx)
	old := p.worker(t, "w-1")
	assert.Check(t, is.Equal(old.Desired, registry.DesiredStopped), "its restart never runs")
	assert.Check(t, is.Equal(old.State, api.WorkerStopped), "a late heartbeat is told to exit")
	assert.Check(t, is.Contains(old.Error, "hive gpu2, unreachable for 30s"))
	st := replicas(t, p.s)
	assert.Assert(t, is.Len(st.Workers, 1))
	assert.Check(t, st.Workers[0] != "w-1")
	assert.Check(t, is.Equal(p.worker(t, st.Workers[0]).Hive, defaultHive))

	// Later passes place no second replacement, and leave the hive alone.
	beat(t, p.s, st.Workers[0], api.WorkerReady)
	for range 5 {
		p.clock.Advance(hiveDownGrace / 10)
		p.s.reconcile(ctx)
	}
	assert.Check(t, is.Len(p.local.records, 1))
	assert.Check(t, is.DeepEqual(replicas(t, p.s).Workers, st.Workers))
	assert.Check(t, is.Equal(p.worker(t, "w-1").Restarts, 0))
	assert.Check(t, is.Len(remoteCalls(p.takeCalls()), 0))
}

// remoteCalls keeps, of the hive commands calls, those run on gpu2.
func remoteCalls(calls []string) []string {
	var out []string
	for _, c := range calls {
		if strings.HasPrefix(c, "gpu2: ") {
			out = append(out, c)
		}
	}
	return out
}

func TestDeploymentStopsReplacedWorkerWhenHiveReturns(t *testing.T) {
	ctx := context.Background()
	p := newDownHiveSetup(t, api.WorkerLost)
	sub := p.s.events.subscribe(256)
	p.hiveDown(t)
	p.s.reconcile(ctx)
	p.clock.Advance(hiveDownGrace)
	p.s.reconcile(ctx)
	assert.Assert(t, is.Equal(p.worker(t, "w-1").Desired, registry.DesiredStopped))

	// The deployment is removed meanwhile: the retired worker is no longer
	// its, and is still stopped when its hive returns.
	workers, err := p.s.forgetDeployment(ctx, testModel)
	assert.NilError(t, err)
	assert.Check(t, is.Len(workers, 1), "only the replacement")
	assert.Check(t, workers[0].ID != "w-1")

	p.sshd.Start()
	p.s.probeHives(ctx)
	p.takeCalls()
	p.s.reconcile(ctx)
	p.s.reconcile(ctx)
	var stops []string
	for _, c := range remoteCalls(p.takeCalls()) {
		if strings.HasPrefix(c, "gpu2: worker stop") {
			stops = append(stops, c)
		}
	}
	assert.Check(t, is.Len(stops, 1), "stopped once")
	assert.Check(t, is.Contains(strings.Join(stops, ""), "worker stop w-1"))

	var reasons []string
	for len(sub.events) > 0 {
		if ev := <-sub.events; ev.Type == api.EventWorker && ev.WorkerID == "w-1" {
			reasons = append(reasons, ev.Reason)
		}
	}
	// (Restarts run on their own, and publish in any order with these.)
	retired, stopped := -1, -1
	for i, r := range reasons {
		switch {
		case strings.Contains(r, "deployment tiny replaces it"):
			retired = i
		case strings.Contains(r, "hive gpu2 is reachable again"):
			stopped = i
		}
	}
	assert.Check(t, retired >= 0 && stopped > retired, "%q", reasons)
}

func TestDeploymentKeepsReadyWorkerOnSSHUnreachableHive(t *testing.T) {
	ctx := context.Background()
	p := newDownHiveSetup(t, api.WorkerReady)
	p.hiveDown(t)

	// SSH is gone, but the worker still heartbeats: it serves, and stays.
	for range 5 {
		p.clock.Advance(hiveDownGrace)
		beat(t, p.s, "w-1", api.WorkerReady)
		p.s.reconcile(ctx)
	}
	assert.Check(t, is.DeepEqual(replicas(t, p.s).Workers, []string{"w-1"}))
	assert.Check(t, is.Equal(p.worker(t, "w-1").Desired, registry.DesiredRunning))
	assert.Check(t, is.Len(p.local.records, 0))

	// Nor is one of a deployment pinned to the hive replaced when lost.
	assert.NilError(t, p.s.store.SetState(ctx, "w-1", api.WorkerLost, "no heartbeat"))
	d, err := p.s.store.Deployment(ctx, testModel)
	assert.NilError(t, err)
	d.Hive = "gpu2"
	_, err = p.s.store.PutDeployment(ctx, d)
	assert.NilError(t, err)
	for range 3 {
		p.clock.Advance(hiveDownGrace)
		p.s.reconcile(ctx)
	}
	assert.Check(t, is.Equal(p.worker(t, "w-1").Desired, registry.DesiredRunning))
	assert.Check(t, is.Len(p.local.records, 0))
}

func TestPlacementSkipsAHiveTheProbeFoundDown(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newFleetServer(t)
	s.cfg.AdvertiseURL = "http://127.0.0.1:7833"
	assert.NilError(t, s.store.CreateHive(ctx, registry.Hive{Name: "gpu9", Host: "127.0.0.9",
		SSHUser: "rbee", SSHPort: 22}))
	assert.NilError(t, s.store.SetHiveContact(ctx, "gpu9", registry.Contact{
		LastError: "connection refused", CheckedAt: time.Now()}))

	reports, err := s.hiveReportsFor(ctx, fitRequest{})
	assert.NilError(t, err)
	var down hiveReport
	for _, r := range reports {
		if r.hive == "gpu9" {
			down = r
		}
	}
	assert.ErrorContains(t, down.err, "unreachable at its last probe")
	assert.ErrorContains(t, down.err, "connection refused")
}

func TestDeploymentKeepsDeadWorkerThatBeatAgain(t *testing.T) {
	ctx := context.Background()
	s, _, hive := newFleetServer(t)
	deploy(t, s, 1)
	s.reconcile(ctx)
	id := replicas(t, s).Workers[0]
	d, err := s.store.Deployment(ctx, testModel)
	assert.NilError(t, err)

	// Lost while loading, as a pass's tally reads it; then it beats again
	// before the pass retires it: it was only slow.
	assert.NilError(t, s.store.SetState(ctx, id, api.WorkerLost, "no heartbeat"))
	tallied, err := s.store.Worker(ctx, id)
	assert.NilError(t, err)
	beat(t, s, id, api.WorkerReady)
	s.retire(ctx, d, tallied)

	wk, err := s.store.Worker(ctx, id)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.Desired, registry.DesiredRunning))
	assert.Check(t, is.Equal(wk.State, api.WorkerReady))
	assert.Check(t, is.Len(hive.stopped(), 0), "its process was stopped")
	_, retried := s.deploys.retryOf(testModel)
	assert.Check(t, !retried, "counted as a failure")
}

func TestRestartAndDownHiveRetirementNeverBothWin(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newFleetServer(t)
	deploy(t, s, 1)
	d, err := s.store.Deployment(ctx, testModel)
	assert.NilError(t, err)
	assert.NilError(t, s.store.CreateHive(ctx, registry.Hive{Name: "gpu9", Host: "127.0.0.9",
		SSHUser: "rbee", SSHPort: 22}))
	assert.NilError(t, s.store.SetHiveContact(ctx, "gpu9", registry.Contact{
		LastError: "connection refused", CheckedAt: time.Now()}))
	h, err := s.store.Hive(ctx, "gpu9")
	assert.NilError(t, err)
	lostOnGPU9 := func(id string) registry.Worker {
		t.Helper()
		wk := registry.Worker{Worker: api.Worker{ID: id, Hive: "gpu9", Model: testModel,
			ModelPath: "/m.gguf", Device: "cpu", Slots: 1, CreatedAt: restartStart,
			Restart: api.RestartOnFailure}, Token: "tok", ReadyAt: restartStart}
		assert.NilError(t, s.store.CreateWorker(ctx, wk))
		assert.NilError(t, s.store.SetWorkerDeployment(ctx, id, testModel))
		assert.NilError(t, s.store.SetState(ctx, id, api.WorkerLost, "no heartbeat"))
		wk, err := s.store.Worker(ctx, id)
		assert.NilError(t, err)
		return wk
	}

	// The restart records first: the pass's older view of the worker
	// retires nothing, and strands nothing.
	first := lostOnGPU9("w-first")
	assert.NilError(t, s.store.RecordRestart(ctx, first.ID, "new", "lost"))
	assert.Check(t, !s.retireDown(ctx, d, first, h, hiveDownGrace))
	wk, err := s.store.Worker(ctx, first.ID)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.Desired, registry.DesiredRunning))
	assert.Check(t, is.Len(s.deploys.stranded, 0))

	// The retirement first: the restart no longer records.
	second := lostOnGPU9("w-second")
	assert.Check(t, s.retireDown(ctx, d, second, h, hiveDownGrace))
	err = s.store.RecordRestart(ctx, second.ID, "new", "lost")
	assert.Check(t, errors.Is(err, registry.ErrNotFound), "%v", err)
	assert.Check(t, is.Len(s.deploys.stranded, 1))
}

func TestReplacedFailedWorkerIsToldToExit(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newFleetServer(t)
	deploy(t, s, 1)
	s.reconcile(ctx)
	first := replicas(t, s).Workers[0]
	beat(t, s, first, api.WorkerFailed)
	s.reconcile(ctx) // retired: wanted stopped, still failed

	// Its process lives on after all, and beats ready.
	wk, err := s.store.Worker(ctx, first)
	assert.NilError(t, err)
	_, err = s.heartbeat(ctx, api.Heartbeat{WorkerID: first, State: api.WorkerReady,
		ProtocolVersion: api.ProtocolVersion, URL: "http://127.0.0.1:1"}, wk.Token)
	assert.Check(t, is.Equal(httpapi.AsError(err).Status, http.StatusGone))
	wk, err = s.store.Worker(ctx, first)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(wk.State, api.WorkerFailed), "not routable again")
}
