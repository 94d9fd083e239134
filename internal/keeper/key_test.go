package keeper

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

const testSecret = "rbee_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlYw"

// keyQueen plays the queen's key routes, recording what it was sent.
func keyQueen(t *testing.T, reqs *recorder[api.KeyRequest]) string {
	t.Helper()
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/keys": func(w http.ResponseWriter, r *http.Request) {
			var req api.KeyRequest
			assert.Check(t, json.NewDecoder(r.Body).Decode(&req))
			reqs.add(req)
			if req.Name == "taken" {
				reply(w, http.StatusConflict, api.ErrorBody{Error: api.ErrorDetail{
					Message: `a key named "taken" exists`, Type: "invalid_request_error"}})
				return
			}
			reply(w, http.StatusCreated, api.CreatedKey{Key: testSecret, APIKey: api.APIKey{
				Name: req.Name, Scope: req.Scope, Prefix: testSecret[:13], CreatedAt: testNow}})
		},
	})
	return srv.URL
}

func TestKeyCreate(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		tty        bool
		wantReq    api.KeyRequest
		wantStdout string
		wantStderr string
	}{
		{
			name:       "inference by default, piped",
			args:       []string{"--name", "laptop"},
			wantReq:    api.KeyRequest{Name: "laptop", Scope: api.KeyScopeInference},
			wantStdout: testSecret + "\n",
			wantStderr: "rbee: created inference key \"laptop\". It is shown only this once: " +
				"store it now, e.g.\n  export RBEE_API_KEY=<the key on stdout>\n",
		},
		{
			name:       "admin on a terminal",
			args:       []string{"--name", "admin", "--scope", "admin"},
			tty:        true,
			wantReq:    api.KeyRequest{Name: "admin", Scope: api.KeyScopeAdmin},
			wantStdout: testSecret + "\n",
			wantStderr: "rbee: created admin key \"admin\". It is shown only this once: " +
				"store it now, e.g.\n  export RBEE_API_KEY=" + testSecret + "\n",
		},
		{
			name:    "json",
			args:    []string{"--name", "ci", "--json"},
			tty:     true,
			wantReq: api.KeyRequest{Name: "ci", Scope: api.KeyScopeInference},
			wantStdout: "{\n  \"key\": \"" + testSecret + "\",\n  \"name\": \"ci\",\n" +
				"  \"scope\": \"inference\",\n  \"prefix\": \"rbee_c2VjcmV0\",\n" +
				"  \"created_at\": \"2025-06-01T12:00:00Z\"\n}\n",
			wantStderr: "rbee: created inference key \"ci\". It is shown only this once: " +
				"store it now, e.g.\n  export RBEE_API_KEY=<the key on stdout>\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reqs recorder[api.KeyRequest]
			root, stdout, stderr := testRoot(t, keyQueen(t, &reqs), tc.tty)
			cmd := newKeyCreateCmd(root)
			cmd.SetArgs(tc.args)
			cmd.SetOut(stdout)
			cmd.SetErr(stderr)

			assert.NilError(t, cmd.ExecuteContext(context.Background()))
			assert.DeepEqual(t, reqs.all(), []api.KeyRequest{tc.wantReq})
			assert.Equal(t, stdout.String(), tc.wantStdout)
			assert.Equal(t, stderr.String(), tc.wantStderr)
		})
	}
}

func TestKeyCreateRefused(t *testing.T) {
	var reqs recorder[api.KeyRequest]
	res := runKeeper(t, "", "key", "create", "--name", "taken", "--queen-url", keyQueen(t, &reqs))
	assert.Equal(t, res.code, exitError)
	assert.Equal(t, res.stdout, "")
	assert.Equal(t, res.stderr, "rbee: a key named \"taken\" exists\n")
}

func TestKeyUsageErrors(t *testing.T) {
	var reqs recorder[api.KeyRequest]
	srv := keyQueen(t, &reqs)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"create without name", []string{"key", "create"}, "--name is required"},
		{"unknown scope", []string{"key", "create", "--name", "x", "--scope", "root"},
			`--scope must be inference or admin, not "root"`},
		{"rm without name", []string{"key", "rm"}, "accepts 1 arg(s), received 0"},
		{"unknown subcommand", []string{"key", "craete"}, `did you mean "create"?`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runKeeper(t, "", append(tc.args, "--queen-url", srv)...)
			assert.Equal(t, res.code, exitUsage, res.stderr)
			assert.Assert(t, cmp.Contains(res.stderr, tc.want))
		})
	}
	assert.Check(t, cmp.Len(reqs.all(), 0), "no request for a usage error")
}

// testKeys are the queen's keys as it lists them, seen at testNow.
var testKeys = []api.APIKey{
	{Name: "admin", Scope: api.KeyScopeAdmin, Prefix: "rbee_AAAAAAAA",
		CreatedAt: testNow.Add(-3 * time.Hour), LastUsedAt: testNow.Add(-2 * time.Second)},
	{Name: "laptop", Scope: api.KeyScopeInference, Prefix: "rbee_BBBBBBBB",
		CreatedAt: testNow.Add(-5 * time.Minute)},
}

func TestKeyList(t *testing.T) {
	var keys []api.APIKey
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/keys": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.APIKeyList{Keys: keys})
		},
	})
	tests := []struct {
		name       string
		keys       []api.APIKey
		tty        bool
		json       bool
		wantStdout string
		wantStderr string
	}{
		{
			name: "terminal",
			keys: testKeys,
			tty:  true,
			wantStdout: "" +
				"NAME    SCOPE      PREFIX            CREATED  LAST USED\n" +
				"admin   admin      rbee_AAAAAAAA...  3h ago   2.0s ago\n" +
				"laptop  inference  rbee_BBBBBBBB...  5m ago   -\n",
		},
		{
			name: "pipe",
			keys: testKeys,
			wantStdout: "admin\tadmin\trbee_AAAAAAAA...\t3h ago\t2.0s ago\n" +
				"laptop\tinference\trbee_BBBBBBBB...\t5m ago\t-\n",
		},
		{
			name: "json",
			keys: testKeys[1:],
			json: true,
			wantStdout: "{\n  \"keys\": [\n    {\n      \"name\": \"laptop\",\n" +
				"      \"scope\": \"inference\",\n      \"prefix\": \"rbee_BBBBBBBB\",\n" +
				"      \"created_at\": \"2025-06-01T11:55:00Z\"\n    }\n  ]\n}\n",
		},
		{
			name: "none on a terminal",
			tty:  true,
			wantStderr: "rbee: no API keys: the queen trusts every client on its machine; " +
				"create the first with `rbee key create --name admin --scope admin`\n",
		},
		{name: "none as json", json: true, wantStdout: "{\n  \"keys\": []\n}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys = tc.keys
			root, stdout, stderr := testRoot(t, srv.URL, tc.tty)
			err := runKeyList(context.Background(), &keyListOptions{root: root, JSON: tc.json})
			assert.NilError(t, err)
			assert.Equal(t, stdout.String(), tc.wantStdout)
			assert.Equal(t, stderr.String(), tc.wantStderr)
		})
	}
}

func TestKeyRm(t *testing.T) {
	var paths recorder[string]
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"DELETE /v1/keys/{name}": func(w http.ResponseWriter, r *http.Request) {
			paths.add(r.URL.EscapedPath())
			if r.PathValue("name") != "laptop" {
				replyError(w, http.StatusNotFound, "no API key \""+r.PathValue("name")+"\"")
				return
			}
			reply(w, http.StatusOK, testKeys[1])
		},
	})
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "removed",
			args:       []string{"key", "rm", "laptop"},
			wantStdout: "removed key laptop\n",
		},
		{
			name:       "json",
			args:       []string{"key", "remove", "laptop", "--json"},
			wantStdout: `"name": "laptop"`,
		},
		{
			name:       "unknown",
			args:       []string{"key", "rm", "a/b"},
			wantCode:   exitError,
			wantStderr: "rbee: no API key \"a/b\"\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runKeeper(t, "", append(tc.args, "--queen-url", srv.URL)...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			assert.Assert(t, cmp.Contains(res.stdout, tc.wantStdout))
			assert.Equal(t, res.stderr, tc.wantStderr)
		})
	}
	assert.Check(t, cmp.Contains(strings.Join(paths.all(), " "), "/v1/keys/a%2Fb"))
}
