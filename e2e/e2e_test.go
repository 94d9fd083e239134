package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// looksEnglish reports whether text holds common English words, as
// stories260K's children's stories do (a generated model writes noise).
func looksEnglish(text string) bool {
	lower := " " + strings.ToLower(text) + " "
	for _, w := range []string{" the ", " was ", " a ", " and ", " to ", " he ", " she "} {
		if strings.Contains(lower, w) {
			return true
		}
	}
	return false
}

func TestSpawnInferStop(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 300 * time.Millisecond})
	w := c.spawn("--slots", "2")
	assert.Equal(t, w.Model, c.model.Name)
	assert.Equal(t, w.Hive, "localhost")
	assert.Assert(t, w.PID > 0 && w.URL != "")

	list := c.mustRbee("worker", "list")
	assert.Assert(t, is.Contains(list, w.ID))
	assert.Assert(t, is.Contains(list, "ready"))

	t.Run("rbee infer streams text", func(t *testing.T) {
		out, errOut, code := c.rbee("infer", "-m", c.model.Name, "--max-tokens", "40",
			"--temperature", "0", "Once upon a time")
		assert.Equal(t, code, 0, errOut)
		assert.Assert(t, len(strings.TrimSpace(out)) > 0)
		if c.model.Trained {
			assert.Assert(t, looksEnglish(out), "not English: %q", out)
		}
	})

	t.Run("HTTP completion", func(t *testing.T) {
		status, body := c.postJSON("/v1/completions",
			`{"model":"`+c.model.Name+`","prompt":"Once upon a time","max_tokens":30,"temperature":0}`)
		assert.Equal(t, status, http.StatusOK, string(body))
		var resp struct {
			Object  string
			Choices []struct {
				Text         string
				FinishReason string `json:"finish_reason"`
			}
			Usage struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		assert.NilError(t, json.Unmarshal(body, &resp))
		assert.Equal(t, resp.Object, "text_completion")
		assert.Equal(t, len(resp.Choices), 1)
		assert.Assert(t, resp.Choices[0].Text != "")
		assert.Assert(t, resp.Usage.PromptTokens > 0 && resp.Usage.CompletionTokens > 0)
		if c.model.Trained {
			assert.Assert(t, looksEnglish(resp.Choices[0].Text), resp.Choices[0].Text)
		}
	})

	t.Run("HTTP streaming", func(t *testing.T) {
		resp, err := http.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
			`{"model":"`+c.model.Name+`","prompt":"Once upon a time","max_tokens":30,`+
				`"stream":true,"stream_options":{"include_usage":true}}`))
		assert.NilError(t, err)
		defer resp.Body.Close()
		assert.Equal(t, resp.StatusCode, http.StatusOK)
		events := httpapi.NewSSEReader(resp.Body)
		chunks, sawUsage, sawDone := 0, false, false
		for {
			data, done, err := events.Next()
			assert.NilError(t, err)
			if done {
				sawDone = true
				break
			}
			chunks++
			sawUsage = sawUsage || strings.Contains(string(data), `"usage"`)
		}
		assert.Assert(t, sawDone && sawUsage)
		assert.Assert(t, chunks > 5, "tokens should arrive as separate chunks, got %d", chunks)
	})

	t.Run("registry holds the ready worker and its heartbeats advance", func(t *testing.T) {
		store, err := registry.Open(c.dbPath)
		assert.NilError(t, err)
		defer store.Close()
		first, err := store.Worker(context.Background(), w.ID)
		assert.NilError(t, err)
		assert.Equal(t, first.State, api.WorkerReady)
		poll.WaitOn(t, func(poll.LogT) poll.Result {
			now, err := store.Worker(context.Background(), w.ID)
			if err != nil {
				return poll.Error(err)
			}
			if now.LastHeartbeat.After(first.LastHeartbeat) {
				return poll.Success()
			}
			return poll.Continue("heartbeat still at %s", now.LastHeartbeat)
		}, poll.WithTimeout(5*time.Second), poll.WithDelay(50*time.Millisecond))
	})

	out := c.mustRbee("worker", "stop", w.ID)
	assert.Assert(t, is.Contains(out, w.ID))
	assert.Equal(t, c.worker(w.ID).State, api.WorkerStopped)
	assert.Assert(t, !processAlive(w.PID), "worker process %d still runs", w.PID)
}

func TestKilledWorkerTurnsLost(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 200 * time.Millisecond})
	w := c.spawn("--restart", "never") // stays lost: not started again
	assert.NilError(t, syscall.Kill(w.PID, syscall.SIGKILL))

	// Deadline: interval + grace (2 intervals) after the last beat.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if state := c.worker(w.ID).State; state != api.WorkerLost {
			return poll.Continue("worker is %s", state)
		}
		return poll.Success()
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(50*time.Millisecond))

	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Post(c.url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"`+c.model.Name+`","prompt":"Once upon a time","max_tokens":5}`))
	assert.NilError(t, err, "a request to a lost model must fail fast, not hang")
	defer resp.Body.Close()
	assert.Equal(t, resp.StatusCode, http.StatusServiceUnavailable)
	assert.Assert(t, resp.Header.Get("Retry-After") != "")
	var body api.ErrorBody
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&body))
	assert.Assert(t, is.Contains(body.Error.Message, "lost"))
}

func TestBadInputGetsClearErrors(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	dir := t.TempDir()
	notGGUF := filepath.Join(dir, "notes.gguf")
	assert.NilError(t, os.WriteFile(notGGUF, []byte("just some text, not a model"), 0o600))

	t.Run("spawn", func(t *testing.T) {
		tests := []struct {
			name string
			args []string
			want string
		}{
			{name: "not a GGUF file", args: []string{"-m", notGGUF}, want: "GGUF"},
			{name: "missing model file", args: []string{"-m", filepath.Join(dir, "nope.gguf")}, want: "nope.gguf"},
			{name: "zero slots", args: []string{"-m", c.model.Path, "--slots", "0"}, want: "slots"},
			{name: "unknown hive", args: []string{"-m", c.model.Path, "--hive", "atlantis"}, want: "atlantis"},
			// No CUDA backend on this machine: the worker says so at start,
			// never falls back to the CPU in silence.
			{name: "cuda without the backend", args: []string{"-m", c.model.Path, "--device", "cuda:0"}, want: "make cuda"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, errOut, code := c.rbee(append([]string{"worker", "spawn"}, tc.args...)...)
				assert.Assert(t, code != 0)
				assert.Assert(t, is.Contains(errOut, tc.want))
			})
		}
	})

	t.Run("unknown model", func(t *testing.T) {
		_, errOut, code := c.rbee("infer", "-m", "no-such-model", "hello")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "no worker serves model"))
	})

	w := c.spawn("--ctx-size", "64")
	long := strings.Repeat("Once upon a time there was a little dog. ", 40)
	tests := []struct {
		name, body string
		status     int
		want       string
	}{
		{name: "malformed body", body: `{"model":`, status: 400, want: "not valid JSON"},
		{name: "prompt of the wrong type", body: `{"model":"` + w.Model + `","prompt":{}}`, status: 400, want: "prompt"},
		{name: "zero max_tokens", body: `{"model":"` + w.Model + `","prompt":"hi","max_tokens":0}`, status: 400, want: "max_tokens"},
		{name: "negative max_tokens", body: `{"model":"` + w.Model + `","prompt":"hi","max_tokens":-5}`, status: 400, want: "max_tokens"},
		{name: "n above one", body: `{"model":"` + w.Model + `","prompt":"hi","n":2}`, status: 400, want: "n must be 1"},
		{name: "unknown model", body: `{"model":"nope","prompt":"hi"}`, status: 404, want: "no worker serves"},
		{name: "prompt longer than the context", body: `{"model":"` + w.Model + `","prompt":"` + long + `"}`, status: 400, want: "context"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := c.postJSON("/v1/completions", tc.body)
			assert.Equal(t, status, tc.status, string(body))
			var e api.ErrorBody
			assert.NilError(t, json.Unmarshal(body, &e))
			assert.Assert(t, is.Contains(e.Error.Message, tc.want))
		})
	}

	// After all that, the worker still serves.
	status, body := c.postJSON("/v1/completions",
		`{"model":"`+w.Model+`","prompt":"Once upon a time","max_tokens":5}`)
	assert.Equal(t, status, http.StatusOK, string(body))
}

func TestKeeperStartsAndStopsTheQueen(t *testing.T) {
	home := t.TempDir()
	addr := freeAddr(t)
	c := &cluster{t: t, url: "http://" + addr}
	c.env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_STATE_HOME="+filepath.Join(home, "state"), "RBEE_QUEEN_URL="+c.url)

	_, errOut, code := c.rbee("queen", "status")
	assert.Equal(t, code, 1)
	assert.Assert(t, is.Contains(errOut, "rbee queen start"))

	out := c.mustRbee("queen", "start")
	assert.Assert(t, is.Contains(out, addr))
	t.Cleanup(func() { c.rbee("queen", "stop") })

	var st api.QueenStatus
	assert.NilError(t, json.Unmarshal([]byte(c.mustRbee("queen", "status", "--json")), &st))
	assert.Equal(t, st.ProtocolVersion, api.ProtocolVersion)
	_, err := os.Stat(filepath.Join(home, "data", "rbee", "queen.db"))
	assert.NilError(t, err, "the queen keeps its state under XDG_DATA_HOME")

	out = c.mustRbee("queen", "start")
	assert.Assert(t, is.Contains(out, "already running"))

	c.mustRbee("queen", "stop")
	_, err = http.Get(c.url + "/health")
	assert.Assert(t, err != nil, "the queen still answers after stop")
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil {
		return false
	}
	// A zombie still has a pid; it is not running.
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	return err != nil || !strings.Contains(string(data), ") Z ")
}
