package keeper

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

var tinyModel = api.Model{Name: "tiny", File: "tiny.gguf", Source: "hf:org/repo/tiny.gguf",
	Size: 1 << 20, Architecture: "llama", Parameters: 260_000, Quantization: "F32",
	ContextLength: 512, MemoryEstimate: api.MemoryEstimate{CPURAM: 3 << 20}}

// sse writes download events as the queen streams them.
func sse(w http.ResponseWriter, events ...api.DownloadEvent) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, ev := range events {
		data, _ := json.Marshal(ev)
		fmt.Fprintf(w, "data: %s\n\n", data)
	}
}

func progressEvent(n, total int64) api.DownloadEvent {
	return api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "progress", Bytes: n,
		Total: total, Rate: 2e6}}
}

func TestModelDownload(t *testing.T) {
	done := api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "done"}, Model: &tinyModel}
	failed := api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "error"},
		Error: &api.ErrorDetail{Message: "sha256 mismatch: the download is corrupt"}}
	tests := []struct {
		name       string
		args       []string
		events     []api.DownloadEvent
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{name: "progress as plain lines, then the model",
			args: []string{"--hive", "h1"},
			events: []api.DownloadEvent{progressEvent(512<<10, 1<<20),
				progressEvent(1<<20, 1<<20), done},
			wantCode:   exitOK,
			wantStdout: []string{"tiny\th1\t1.0 MiB\tllama\t260K\t"},
			wantStderr: []string{
				"hf:org/repo/tiny.gguf: 524288/1048576 bytes, 2.0 MB/s\n",
				"hf:org/repo/tiny.gguf: 1048576/1048576 bytes, 2.0 MB/s\n",
			}},
		{name: "json", args: []string{"--hive", "h1", "--json"},
			events: []api.DownloadEvent{done}, wantCode: exitOK,
			wantStdout: []string{`"name": "tiny"`, `"source": "hf:org/repo/tiny.gguf"`}},
		{name: "error event", args: []string{"--hive", "h1"},
			events:   []api.DownloadEvent{progressEvent(1, 2), failed},
			wantCode: exitError, wantStderr: []string{"sha256 mismatch"}},
		{name: "stream ends early", args: []string{"--hive", "h1"},
			events:   []api.DownloadEvent{progressEvent(1, 2)},
			wantCode: exitError, wantStderr: []string{"run the command again to resume"}},
		{name: "missing hive", wantCode: exitUsage, wantStderr: []string{"missing --hive"}},
	}
	t.Setenv(envHFToken, "")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got api.ModelDownloadRequest
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"POST /v1/models/download": func(w http.ResponseWriter, r *http.Request) {
					_ = json.NewDecoder(r.Body).Decode(&got)
					sse(w, tc.events...)
				},
			})
			args := append([]string{"model", "download", "hf:org/repo/tiny.gguf",
				"--queen-url", srv.URL}, tc.args...)
			res := runKeeper(t, "", args...)

			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			for _, want := range tc.wantStdout {
				assert.Check(t, cmp.Contains(res.stdout, want))
			}
			for _, want := range tc.wantStderr {
				assert.Check(t, cmp.Contains(res.stderr, want))
			}
			if tc.wantCode != exitUsage {
				assert.Equal(t, got, api.ModelDownloadRequest{Hive: "h1",
					Ref: "hf:org/repo/tiny.gguf"})
			}
		})
	}
}

// TestModelDownloadForwardsHF: the user's HF_TOKEN (or --hf-token-file)
// and --hf-endpoint go to the queen in the request.
func TestModelDownloadForwardsHF(t *testing.T) {
	done := api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "done"}, Model: &tinyModel}
	tokenFile := filepath.Join(t.TempDir(), "token")
	assert.NilError(t, os.WriteFile(tokenFile, []byte("hf_from_file\n"), 0o600))
	badFile := filepath.Join(t.TempDir(), "bad")
	assert.NilError(t, os.WriteFile(badFile, []byte("two words\n"), 0o600))
	tests := []struct {
		name      string
		env       string
		args      []string
		wantToken string
		wantErr   string
	}{
		{name: "from the environment", env: "hf_from_env", wantToken: "hf_from_env"},
		{name: "the file wins", env: "hf_from_env", args: []string{"--hf-token-file", tokenFile},
			wantToken: "hf_from_file"},
		{name: "none"},
		{name: "bad file", args: []string{"--hf-token-file", badFile},
			wantErr: "must hold the token alone"},
		{name: "missing file", args: []string{"--hf-token-file", badFile + ".absent"},
			wantErr: "read --hf-token-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envHFToken, tc.env)
			var got api.ModelDownloadRequest
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"POST /v1/models/download": func(w http.ResponseWriter, r *http.Request) {
					_ = json.NewDecoder(r.Body).Decode(&got)
					sse(w, done)
				},
			})
			res := runKeeper(t, "", append([]string{"model", "download", "hf:org/repo/tiny.gguf",
				"--hive", "h1", "--hf-endpoint", "https://mirror.example", "--queen-url",
				srv.URL}, tc.args...)...)
			if tc.wantErr != "" {
				assert.Equal(t, res.code, exitUsage, res.stderr)
				assert.Check(t, cmp.Contains(res.stderr, tc.wantErr))
				return
			}
			assert.Equal(t, res.code, exitOK, res.stderr)
			assert.Equal(t, got.HFToken, tc.wantToken)
			assert.Equal(t, got.HFEndpoint, "https://mirror.example")
			assert.Check(t, !strings.Contains(res.stdout+res.stderr, "hf_from"))
		})
	}
}

func TestModelList(t *testing.T) {
	routes := map[string]http.HandlerFunc{
		"GET /v1/catalog": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.Catalog{
				Models: []api.CatalogModel{
					{Model: api.Model{Name: "tiny", Size: 1 << 20, Architecture: "llama",
						Parameters: 260_000, Quantization: "F32", ContextLength: 512, SHA256: "aa",
						MemoryEstimate: api.MemoryEstimate{CPURAM: 3 << 20, GPUVRAM: 4 << 20}},
						Hives: []string{"h1", "h2"}, NameConflict: true},
					{Model: api.Model{Name: "tiny", Size: 2 << 20, SHA256: "bb"},
						Hives: []string{"h3"}, NameConflict: true},
				},
				Unreachable: []api.CatalogHiveError{{Hive: "down",
					Error: `could not run rbee-hive on hive "down"`}}})
		},
		"GET /v1/hives/h1/models": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.ModelList{Models: []api.Model{tinyModel}})
		},
		"GET /v1/hives/down/models": func(w http.ResponseWriter, _ *http.Request) {
			replyError(w, http.StatusBadGateway, `could not run rbee-hive on hive "down"`)
		},
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{name: "every hive: one row per file, with its hives", wantCode: exitOK,
			wantStdout: []string{
				"tiny\t1.0 MiB\tllama\t260K\tF32\t512\t3.0 MiB\t4.0 MiB\th1,h2\n",
				"tiny\t2.0 MiB\t-\t-\t-\t0\t-\t-\th3\n"},
			wantStderr: []string{`rbee: warning: hive down not listed: could not run rbee-hive`,
				"hives hold different files named tiny"}},
		{name: "every hive as json", args: []string{"--json"}, wantCode: exitOK,
			wantStdout: []string{`"hives": [`, `"unreachable": [`, `"name_conflict": true`}},
		{name: "one hive as json", args: []string{"--hive", "h1", "--json"}, wantCode: exitOK,
			wantStdout: []string{`"h1": [`, `"name": "tiny"`}},
		{name: "one hive", args: []string{"--hive", "h1"}, wantCode: exitOK,
			wantStdout: []string{"tiny\th1\t1.0 MiB\tllama\t260K\tF32\t512\t3.0 MiB"}},
		{name: "the one hive asked for is down", args: []string{"--hive", "down"},
			wantCode: exitError, wantStderr: []string{`could not run rbee-hive on hive "down"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeQueen(t, routes)
			res := runKeeper(t, "", append([]string{"model", "list", "--queen-url", srv.URL},
				tc.args...)...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			for _, want := range tc.wantStdout {
				assert.Check(t, cmp.Contains(res.stdout, want))
			}
			for _, want := range tc.wantStderr {
				assert.Check(t, cmp.Contains(res.stderr, want))
			}
		})
	}
}

func TestModelRm(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		status     int
		wantCode   int
		wantQuery  string
		wantStdout string
		wantStderr string
	}{
		{name: "removed", args: []string{"--hive", "h1"}, status: http.StatusOK,
			wantCode: exitOK, wantStdout: "removed tiny from h1\n"},
		{name: "forced", args: []string{"--hive", "h1", "--force"}, status: http.StatusOK,
			wantCode: exitOK, wantQuery: "force=true", wantStdout: "removed tiny from h1\n"},
		{name: "refused while used", args: []string{"--hive", "h1"},
			status: http.StatusBadRequest, wantCode: exitError,
			wantStderr: "used by running worker(s) w-1"},
		{name: "missing hive", wantCode: exitUsage, wantStderr: "missing --hive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var query string
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"DELETE /v1/hives/h1/models/tiny": func(w http.ResponseWriter, r *http.Request) {
					query = r.URL.RawQuery
					if tc.status != http.StatusOK {
						replyError(w, tc.status, `hive "h1": model "tiny" is used by running `+
							"worker(s) w-1: stop them first, or pass --force")
						return
					}
					reply(w, http.StatusOK, api.ModelRemoved{Name: "tiny"})
				},
			})
			res := runKeeper(t, "", append([]string{"model", "rm", "tiny", "--queen-url",
				srv.URL}, tc.args...)...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			assert.Equal(t, res.stdout, tc.wantStdout)
			assert.Check(t, cmp.Contains(res.stderr, tc.wantStderr))
			assert.Equal(t, query, tc.wantQuery)
		})
	}
}

func TestHiveDevices(t *testing.T) {
	devs := api.Devices{
		CPU: api.CPUDevice{Cores: 16, RAMTotal: 64 << 30, RAMAvailable: 32 << 30,
			Architecture: "amd64"},
		GPUs: []api.GPUDevice{{Index: 0, Device: "cuda:0", Name: "NVIDIA H200",
			MemoryTotal: 140 << 30, MemoryFree: 139 << 30, ComputeCapability: "9.0",
			Driver: "570.86"}},
	}
	tests := []struct {
		name       string
		devs       api.Devices
		args       []string
		wantStdout []string
		wantStderr string
	}{
		{name: "table", devs: devs, wantStdout: []string{
			"cpu\t16 cores (amd64)\t64 GiB\t32 GiB\t-\t-",
			"cuda:0\tNVIDIA H200\t140 GiB\t139 GiB\t9.0\t570.86",
		}},
		{name: "json", devs: devs, args: []string{"--json"},
			wantStdout: []string{`"device": "cuda:0"`, `"ram_available": 34359738368`}},
		{name: "nvidia-smi failed", devs: api.Devices{CPU: devs.CPU, GPUError: "nvidia-smi: boom"},
			wantStdout: []string{"cpu\t16 cores"}, wantStderr: "rbee: nvidia-smi: boom\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"GET /v1/hives/gpu1/devices": func(w http.ResponseWriter, _ *http.Request) {
					reply(w, http.StatusOK, tc.devs)
				},
			})
			res := runKeeper(t, "", append([]string{"hive", "devices", "gpu1", "--queen-url",
				srv.URL}, tc.args...)...)
			assert.Equal(t, res.code, exitOK, res.stderr)
			for _, want := range tc.wantStdout {
				assert.Check(t, cmp.Contains(res.stdout, want))
			}
			assert.Check(t, cmp.Contains(res.stderr, tc.wantStderr))
		})
	}
}
