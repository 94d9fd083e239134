package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// getWithKey sends GET path to the queen with key as a bearer token (none
// when empty) and returns the status and the body.
func getWithKey(t *testing.T, c *cluster, path, key string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.url+path, nil)
	assert.NilError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	assert.NilError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	assert.NilError(t, err)
	return resp.StatusCode, body
}

func TestAPIKeys(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 300 * time.Millisecond})

	// No key yet, on loopback: the queen is open, so the first admin key is
	// created on its own machine.
	out, errOut, code := c.rbee("key", "create", "--name", "admin", "--scope", "admin")
	assert.Equal(t, code, 0, errOut)
	adminKey := strings.TrimSpace(out)
	assert.Assert(t, strings.HasPrefix(adminKey, "rbee_"), adminKey)
	assert.Check(t, is.Contains(errOut, "export RBEE_API_KEY="))
	asAdmin := []string{"RBEE_API_KEY=" + adminKey}

	out = c.mustRbeeEnv(asAdmin, "key", "create", "--name", "app")
	appKey := strings.TrimSpace(out)
	asApp := []string{"RBEE_API_KEY=" + appKey}

	t.Run("without a key", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "list")
		assert.Equal(t, code, 1)
		assert.Check(t, is.Contains(errOut, "missing API key"))
		assert.Check(t, is.Contains(errOut, "rbee key create"))

		status, body := getWithKey(t, c, "/v1/models", "")
		assert.Equal(t, status, http.StatusUnauthorized, string(body))
		var e api.ErrorBody
		assert.NilError(t, json.Unmarshal(body, &e))
		assert.Equal(t, e.Error.Type, "authentication_error")

		status, _ = getWithKey(t, c, "/health", "")
		assert.Equal(t, status, http.StatusOK)
	})

	t.Run("with a wrong key", func(t *testing.T) {
		_, errOut, code := c.rbeeEnv([]string{"RBEE_API_KEY=rbee_guess"}, "worker", "list")
		assert.Equal(t, code, 1)
		assert.Check(t, is.Contains(errOut, "invalid API key"))
	})

	t.Run("with an inference key", func(t *testing.T) {
		for _, args := range [][]string{{"worker", "list"}, {"key", "list"}, {"queen", "status"}} {
			_, errOut, code := c.rbeeEnv(asApp, args...)
			assert.Equal(t, code, 1, "rbee %v", args)
			assert.Check(t, is.Contains(errOut, "an admin key is needed"), "rbee %v", args)
		}
		status, body := getWithKey(t, c, "/v1/models", appKey)
		assert.Equal(t, status, http.StatusOK, string(body))
	})

	t.Run("with the admin key", func(t *testing.T) {
		// Workers heartbeat with their own token while keys are enforced.
		var w api.Worker
		out := c.mustRbeeEnv(asAdmin, "worker", "spawn", "-m", c.model.Path, "--json")
		assert.NilError(t, json.Unmarshal([]byte(out), &w))
		assert.Equal(t, w.State, api.WorkerReady)

		out = c.mustRbeeEnv(asApp, "infer", "-m", c.model.Name, "--max-tokens", "8",
			"Once upon a time")
		assert.Assert(t, strings.TrimSpace(out) != "")

		assert.Check(t, is.Contains(c.mustRbeeEnv(asAdmin, "worker", "list"), w.ID))
		c.mustRbeeEnv(asAdmin, "queen", "status")

		var list api.APIKeyList
		assert.NilError(t, json.Unmarshal([]byte(c.mustRbeeEnv(asAdmin, "key", "list", "--json")),
			&list))
		assert.Equal(t, len(list.Keys), 2)
		secrets := map[string]string{"admin": adminKey, "app": appKey}
		for _, k := range list.Keys {
			assert.Check(t, strings.HasPrefix(secrets[k.Name], k.Prefix), k.Prefix)
			assert.Check(t, !k.LastUsedAt.IsZero(), "key %s was used", k.Name)
		}

		c.mustRbeeEnv(asAdmin, "worker", "stop", w.ID)
	})

	t.Run("a removed key", func(t *testing.T) {
		c.mustRbeeEnv(asAdmin, "key", "rm", "app")
		status, _ := getWithKey(t, c, "/v1/models", appKey)
		assert.Equal(t, status, http.StatusUnauthorized)
	})
}
