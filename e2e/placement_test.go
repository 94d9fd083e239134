package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// fakeHF plays Hugging Face's resolve endpoint for one file: a redirect to
// a CDN path carrying X-Linked-Etag (the sha256) and X-Linked-Size, then
// the bytes, with Range honoured. With a token, the file is private: the
// resolve request without that bearer token gets 401.
func fakeHF(t *testing.T, repo, file string, data []byte, token string) *httptest.Server {
	t.Helper()
	sum := sha256.Sum256(data)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /"+repo+"/resolve/main/"+file, func(w http.ResponseWriter, r *http.Request) {
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Invalid credentials", http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-Linked-Etag", `"`+hex.EncodeToString(sum[:])+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(data)))
		w.Header().Set("X-Repo-Commit", strings.Repeat("ab", 20))
		http.Redirect(w, r, "/cdn/"+file, http.StatusFound)
	})
	mux.HandleFunc("GET /cdn/"+file, func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, file, time.Time{}, strings.NewReader(string(data)))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestDownloadThenPlace downloads a model onto one of two remote hives and
// spawns it without --hive: the queen places it on the hive that holds it.
func TestDownloadThenPlace(t *testing.T) {
	model := findModelBytes(t)
	hf := fakeHF(t, "org/repo", "stories260K.gguf", model, "")
	// The hive reads HF_ENDPOINT from its own environment, set here as a
	// host's sshd or login configuration would set it.
	env := sshtest.WithEnv("HF_ENDPOINT=" + hf.URL)
	hives := []*sshHive{startSSHHive(t, "h1", "127.0.0.2", env),
		startSSHHive(t, "h2", "127.0.0.3", env)}
	c := newCluster(t, clusterOptions{advertise: true, heartbeatInterval: 300 * time.Millisecond})
	for _, h := range hives {
		c.addHive(h)
		c.installHive(h.name)
	}

	out, errOut, code := c.rbee("model", "download", "hf:org/repo/stories260K.gguf",
		"--hive", "h1", "--json")
	assert.Equal(t, code, 0, errOut)
	assert.Assert(t, is.Contains(errOut, "hf:org/repo/stories260K.gguf: "+
		strconv.Itoa(len(model))+"/"+strconv.Itoa(len(model))+" bytes"))
	var m api.Model
	assert.NilError(t, json.Unmarshal([]byte(out), &m))
	assert.Equal(t, m.Name, "stories260K")
	assert.Equal(t, m.Size, int64(len(model)))
	assert.Assert(t, m.MemoryEstimate.CPURAM > 0)

	var listed api.Catalog
	assert.NilError(t, json.Unmarshal([]byte(c.mustRbee("model", "list", "--json")), &listed))
	assert.Equal(t, len(listed.Models), 1)
	assert.DeepEqual(t, listed.Models[0].Hives, []string{"h1"})
	assert.Equal(t, listed.Models[0].Name, "stories260K")
	assert.Equal(t, len(listed.Unreachable), 0)

	var w api.Worker
	out = c.mustRbee("worker", "spawn", "-m", "stories260K", "--json")
	assert.NilError(t, json.Unmarshal([]byte(out), &w))
	assert.Equal(t, w.Hive, "h1")
	assert.Equal(t, w.Device, "cpu")
	assert.Equal(t, w.State, api.WorkerReady)
	assert.Assert(t, len(strings.TrimSpace(c.complete("stories260K"))) > 0)

	t.Run("no hive holds the model", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "spawn", "-m", "absent")
		assert.Equal(t, code, 1)
		for _, want := range []string{`no hive can run model "absent"`,
			`h1: no model "absent" in its catalog`, `h2: no model "absent"`,
			`localhost: no model "absent"`} {
			assert.Check(t, is.Contains(errOut, want))
		}
	})
	t.Run("the hive refuses a spawn that does not fit", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "spawn", "-m", "stories260K", "--hive", "h1",
			"--ctx-size", strconv.Itoa(1<<24), "--slots", "64", "--no-wait")
		assert.Equal(t, code, 1)
		assert.Check(t, is.Contains(errOut, "of RAM, but only"))
	})

	t.Run("placement estimates for the slots and context asked", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "spawn", "-m", "stories260K",
			"--ctx-size", strconv.Itoa(1<<24), "--slots", "64", "--no-wait")
		assert.Equal(t, code, 1)
		assert.Check(t, is.Contains(errOut, `no hive can run model "stories260K"`))
		assert.Check(t, is.Regexp(`h1: needs [0-9.]+ [GT]iB of RAM`, errOut))
	})
	t.Run("a private file with the user's token and endpoint", func(t *testing.T) {
		const token = "hf_e2e_secret_token"
		private := fakeHF(t, "org/private", "stories260K.gguf", model, token)
		args := []string{"model", "download", "hf:org/private/stories260K.gguf", "--hive", "h2",
			"--name", "private", "--hf-endpoint", private.URL}
		_, errOut, code := c.rbeeEnv([]string{"HF_TOKEN="}, args...)
		assert.Equal(t, code, 1)
		assert.Check(t, is.Contains(errOut, "private or gated"))

		_, errOut, code = c.rbeeEnv([]string{"HF_TOKEN=" + token}, args...)
		assert.Equal(t, code, 0, errOut)
		var cat api.Catalog
		assert.NilError(t, json.Unmarshal([]byte(c.mustRbee("model", "list", "--json")), &cat))
		assert.Equal(t, len(cat.Models), 2)
		assert.Equal(t, cat.Models[0].Name, "private")
		assert.DeepEqual(t, cat.Models[0].Hives, []string{"h2"})
		// Neither the queen's log nor its database holds the token.
		assert.Check(t, !strings.Contains(c.queenLog.String(), token))
		assertNotInFiles(t, filepath.Dir(c.dbPath), token)
	})

	t.Run("a deployment is placed on the hives that hold the model", func(t *testing.T) {
		c.mustRbee("model", "download", "hf:org/repo/stories260K.gguf", "--hive", "h2")
		var d api.Deployment
		out := c.mustRbee("deploy", "-m", "stories260K", "--name", "placed", "--replicas", "2",
			"--json")
		assert.NilError(t, json.Unmarshal([]byte(out), &d))
		assert.Equal(t, d.Ready, 2)
		for _, id := range d.Workers {
			wk := c.worker(id)
			assert.Check(t, wk.Hive == "h1" || wk.Hive == "h2", "placed on %s", wk.Hive)
		}
		assert.Assert(t, len(strings.TrimSpace(c.complete("placed"))) > 0)
		c.mustRbee("deploy", "rm", "placed")
		for _, id := range d.Workers {
			assert.Check(t, is.Equal(c.worker(id).State, api.WorkerStopped))
		}
	})

	c.mustRbee("worker", "stop", w.ID)
	assert.Equal(t, c.worker(w.ID).State, api.WorkerStopped)
}

// assertNotInFiles checks that no file under dir holds secret.
func assertNotInFiles(t *testing.T, dir, secret string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(data), secret) {
			t.Errorf("%s holds the secret", path)
		}
		return err
	})
	assert.NilError(t, err)
}

// findModelBytes reads the test model (stories260K, or the generated one).
func findModelBytes(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(testenv.FindModel(t).Path)
	assert.NilError(t, err)
	return data
}
