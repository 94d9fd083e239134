package keeper

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// hiveQueen plays the queen's hive routes, recording the add requests and
// the paths it was asked for.
func hiveQueen(t *testing.T, adds *recorder[api.HiveAddRequest], paths *recorder[string]) string {
	t.Helper()
	checked := testNow.Add(-2 * time.Second)
	gpu1 := api.Hive{Name: "gpu1", Host: "10.0.0.5", User: "ann", Port: 22, Reachable: true,
		Version: "v1", ProtocolVersion: api.ProtocolVersion, OS: "linux", Arch: "amd64",
		CheckedAt: &checked}
	down := api.Hive{Name: "down", Host: "10.0.0.6", Port: 2222, CheckedAt: &checked,
		LastError: "connection refused"}
	record := func(r *http.Request) { paths.add(r.Method + " " + r.URL.RequestURI()) }
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/hives": func(w http.ResponseWriter, r *http.Request) {
			var req api.HiveAddRequest
			assert.Check(t, json.NewDecoder(r.Body).Decode(&req))
			adds.add(req)
			reply(w, http.StatusCreated, gpu1)
		},
		"GET /v1/hives": func(w http.ResponseWriter, r *http.Request) {
			reply(w, http.StatusOK, api.HiveList{Hives: []api.Hive{
				{Name: "localhost", Host: "127.0.0.1", Local: true}, gpu1, down}})
		},
		"POST /v1/hives/{name}/check": func(w http.ResponseWriter, r *http.Request) {
			record(r)
			if r.PathValue("name") == "down" {
				reply(w, http.StatusOK, down)
				return
			}
			reply(w, http.StatusOK, gpu1)
		},
		"POST /v1/hives/{name}/uninstall": func(w http.ResponseWriter, r *http.Request) {
			record(r)
			reply(w, http.StatusOK, api.HiveUninstallResult{Hive: "gpu1",
				Removed: []string{"~/.local/bin/rbee-hive"}})
		},
		"DELETE /v1/hives/{name}": func(w http.ResponseWriter, r *http.Request) {
			record(r)
			reply(w, http.StatusOK, gpu1)
		},
	})
	return srv.URL
}

func TestHiveAdd(t *testing.T) {
	key := filepath.Join(t.TempDir(), "id_ed25519")
	assert.NilError(t, writeFile(key))
	tests := []struct {
		name     string
		args     []string
		wantReq  api.HiveAddRequest
		wantCode int
	}{
		{name: "ssh with key", args: []string{"gpu1", "--ssh", "ann@10.0.0.5", "-i", key,
			"--accept-new-host-key"},
			wantReq: api.HiveAddRequest{Name: "gpu1", SSH: "ann@10.0.0.5", KeyPath: key,
				AcceptNewHostKey: true}},
		{name: "alias", args: []string{"gpu1", "--ssh-alias", "box"},
			wantReq: api.HiveAddRequest{Name: "gpu1", SSHAlias: "box"}},
		{name: "neither", args: []string{"gpu1"}, wantCode: exitUsage},
		{name: "both", args: []string{"gpu1", "--ssh", "a@b", "--ssh-alias", "b"},
			wantCode: exitUsage},
		{name: "no name", args: []string{"--ssh", "a@b"}, wantCode: exitUsage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var adds recorder[api.HiveAddRequest]
			var paths recorder[string]
			url := hiveQueen(t, &adds, &paths)
			args := append([]string{"hive", "add", "--queen-url", url}, tc.args...)
			res := runKeeper(t, "", args...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			if tc.wantCode != 0 {
				assert.Equal(t, len(adds.all()), 0)
				return
			}
			assert.DeepEqual(t, adds.all(), []api.HiveAddRequest{tc.wantReq})
			assert.Assert(t, cmp.Contains(res.stdout, "gpu1\tann@10.0.0.5:22\tyes\tv1"))
		})
	}
}

func TestHiveList(t *testing.T) {
	var adds recorder[api.HiveAddRequest]
	var paths recorder[string]
	root, stdout, _ := testRoot(t, hiveQueen(t, &adds, &paths), false)
	cmd := newHiveListCmd(root)
	cmd.SetArgs(nil)
	assert.NilError(t, cmd.Execute())
	assert.Equal(t, stdout.String(),
		"localhost\t127.0.0.1\t-\t-\t-\t-\t-\n"+
			"gpu1\tann@10.0.0.5:22\tyes\tv1\tlinux/amd64\t2.0s ago\t-\n"+
			"down\t10.0.0.6:2222\tno\t-\t-\t2.0s ago\tconnection refused\n")
}

func TestHiveActions(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantPath   string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "check", args: []string{"check", "gpu1"}, wantPath: "POST /v1/hives/gpu1/check",
			wantStderr: "devices: `rbee hive devices gpu1`"},
		{name: "check unreachable", args: []string{"check", "down"},
			wantPath: "POST /v1/hives/down/check", wantCode: exitError,
			wantStderr: "hive down is unreachable: connection refused"},
		{name: "uninstall forced", args: []string{"uninstall", "gpu1", "--force"},
			wantPath:   "POST /v1/hives/gpu1/uninstall?force=true",
			wantStdout: "removed ~/.local/bin/rbee-hive\n"},
		{name: "rm", args: []string{"rm", "gpu1"}, wantPath: "DELETE /v1/hives/gpu1",
			wantStdout: "removed hive gpu1\n"},
		{name: "rm forced", args: []string{"rm", "gpu1", "--force"},
			wantPath: "DELETE /v1/hives/gpu1?force=true", wantStdout: "removed hive gpu1\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var adds recorder[api.HiveAddRequest]
			var paths recorder[string]
			url := hiveQueen(t, &adds, &paths)
			res := runKeeper(t, "", append([]string{"hive", "--queen-url", url}, tc.args...)...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			assert.DeepEqual(t, paths.all(), []string{tc.wantPath})
			if tc.wantStdout != "" {
				assert.Equal(t, res.stdout, tc.wantStdout)
			}
			assert.Assert(t, cmp.Contains(res.stderr, tc.wantStderr))
		})
	}
}

func writeFile(path string) error {
	return os.WriteFile(path, []byte("key"), 0o600)
}
