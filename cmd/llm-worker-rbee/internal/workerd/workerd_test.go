package workerd

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/testenv"
)

const testToken = "secret-token"

// startWorker serves a ready worker on the test model over httptest.
func startWorker(t *testing.T, ctxSize int) *httptest.Server {
	t.Helper()
	tm := testenv.FindModel(t)
	cfg := Config{ID: "w-test", ModelPath: tm.Path, Name: tm.Name, Slots: 2, CtxSize: ctxSize,
		Threads: 1, BatchSize: 512, Token: testToken}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := loadModel(cfg, log)
	assert.NilError(t, err)
	w := &worker{cfg: cfg, log: log, state: api.WorkerReady, engine: m.engine,
		chatTemplate: m.info.ChatTemplate}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.engine.Run(ctx) }()
	srv := httptest.NewServer(w.routes())
	t.Cleanup(func() { srv.Close(); cancel(); <-done; m.model.Close() })
	return srv
}

func post(t *testing.T, srv *httptest.Server, token, body string) *http.Response {
	t.Helper()
	return postTo(t, srv, "/v1/completion", token, body)
}

func postTo(t *testing.T, srv *httptest.Server, path, token, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
	assert.NilError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	assert.NilError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestStreamingCompletion(t *testing.T) {
	srv := startWorker(t, 256)
	resp := post(t, srv, testToken, `{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"stream":true}`)
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	assert.Equal(t, resp.Header.Get("Content-Type"), "text/event-stream")

	events := httpapi.NewSSEReader(resp.Body)
	var tokens int
	var text strings.Builder
	var final api.CompletionEvent
	for {
		data, done, err := events.Next()
		assert.NilError(t, err)
		if done {
			break
		}
		var ev api.CompletionEvent
		assert.NilError(t, json.Unmarshal(data, &ev))
		if ev.Done {
			final = ev
			continue
		}
		tokens++
		text.WriteString(ev.Text)
	}
	assert.Assert(t, final.Done)
	assert.Equal(t, final.FinishReason, api.FinishLength)
	assert.Equal(t, final.CompletionTokens, 20)
	assert.Assert(t, final.PromptTokens > 0 && final.GenerationMS > 0)
	assert.Assert(t, tokens > 1, "tokens should arrive one event at a time")
	assert.Assert(t, text.Len() > 0)
}

func TestNonStreamingCompletion(t *testing.T) {
	srv := startWorker(t, 256)
	resp := post(t, srv, testToken, `{"prompt":"Once upon a time","max_tokens":10,"seed":7}`)
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	var ev api.CompletionEvent
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&ev))
	assert.Assert(t, ev.Done && ev.Text != "")
	assert.Assert(t, ev.CompletionTokens > 0)
}

func TestCompletionRejectsBadRequests(t *testing.T) {
	srv := startWorker(t, 64)
	long := strings.Repeat("Once upon a time there was a little dog. ", 50)
	tests := []struct {
		name, token, body string
		status            int
		param             string
	}{
		{name: "no token", body: `{"prompt":"hi","max_tokens":5}`, status: 401},
		{name: "wrong token", token: "nope", body: `{"prompt":"hi","max_tokens":5}`, status: 401},
		{name: "malformed json", token: testToken, body: `{"prompt":`, status: 400},
		{name: "empty body", token: testToken, body: ``, status: 400},
		{name: "wrong type", token: testToken, body: `{"prompt":5,"max_tokens":5}`, status: 400, param: "prompt"},
		{name: "missing prompt", token: testToken, body: `{"max_tokens":5}`, status: 400, param: "prompt"},
		{name: "zero max_tokens", token: testToken, body: `{"prompt":"hi","max_tokens":0}`, status: 400, param: "max_tokens"},
		{name: "negative max_tokens", token: testToken, body: `{"prompt":"hi","max_tokens":-1}`, status: 400, param: "max_tokens"},
		{name: "temperature too high", token: testToken, body: `{"prompt":"hi","max_tokens":5,"temperature":9}`, status: 400, param: "temperature"},
		{name: "top_p zero", token: testToken, body: `{"prompt":"hi","max_tokens":5,"top_p":0}`, status: 400, param: "top_p"},
		{name: "negative top_k", token: testToken, body: `{"prompt":"hi","max_tokens":5,"top_k":-2}`, status: 400, param: "top_k"},
		{name: "empty stop", token: testToken, body: `{"prompt":"hi","max_tokens":5,"stop":[""]}`, status: 400, param: "stop"},
		{name: "prompt longer than the context", token: testToken, body: `{"prompt":"` + long + `","max_tokens":5}`, status: 400, param: "prompt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, srv, tc.token, tc.body)
			assert.Equal(t, resp.StatusCode, tc.status)
			var body api.ErrorBody
			assert.NilError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Assert(t, body.Error.Message != "")
			assert.Equal(t, body.Error.Param, tc.param)
		})
	}
}

func TestHealthNeedsNoToken(t *testing.T) {
	srv := startWorker(t, 64)
	resp, err := http.Get(srv.URL + "/health")
	assert.NilError(t, err)
	defer resp.Body.Close()
	var h api.WorkerHealth
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&h))
	assert.Equal(t, h.Status, api.WorkerReady)
	assert.Equal(t, h.SlotsTotal, 2)
}

func TestInspectModelRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	notGGUF := filepath.Join(dir, "notes.gguf")
	assert.NilError(t, os.WriteFile(notGGUF, []byte("this is not a model at all"), 0o600))
	truncated := filepath.Join(dir, "cut.gguf")
	real, err := os.ReadFile(testenv.FindModel(t).Path)
	assert.NilError(t, err)
	assert.NilError(t, os.WriteFile(truncated, real[:len(real)/3], 0o600))

	tests := []struct {
		name, path, want string
	}{
		{name: "missing", path: filepath.Join(dir, "nope.gguf"), want: "no such file"},
		{name: "directory", path: dir, want: "not a regular file"},
		{name: "not gguf", path: notGGUF, want: "not a valid GGUF model"},
		{name: "truncated", path: truncated, want: "not a valid GGUF model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := inspectModel(tc.path)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

func TestParseDevice(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "cpu"},
		{in: "cuda:0", want: []int{0}},
		{in: "cuda:0,1", want: []int{0, 1}},
		{in: "cuda:", wantErr: true},
		{in: "cuda:x", wantErr: true},
		{in: "cuda:0,0", wantErr: true},
		{in: "cuda:-1", wantErr: true},
		{in: "gpu", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			d, err := ParseDevice(tc.in)
			if tc.wantErr {
				assert.Assert(t, err != nil)
				return
			}
			assert.NilError(t, err)
			assert.DeepEqual(t, d.CUDA, tc.want)
			assert.Equal(t, d.String(), tc.in)
		})
	}
}

func TestCUDAWithoutBackendFailsClearly(t *testing.T) {
	cfg := Config{Slots: 1, Device: Device{CUDA: []int{0}}}
	_, err := loadOptions(cfg, 128, llm.GPUs())
	if len(llm.GPUs()) > 0 {
		t.Skip("this machine has a CUDA backend and a GPU; the check is for machines without")
	}
	assert.Assert(t, errors.Is(err, ErrNoCUDA))
	assert.Assert(t, is.Contains(err.Error(), "make cuda"))

	_, err = loadOptions(Config{Slots: 1, Device: Device{CUDA: []int{3}}}, 128,
		[]llm.DeviceInfo{{Name: "CUDA0", GPU: true}})
	assert.ErrorContains(t, err, "has 1 GPU(s)")
}

func TestParseConfig(t *testing.T) {
	t.Setenv(api.EnvWorkerToken, "tok")
	cfg, err := parseConfig([]string{"--id", "w-1", "--model", "/m/stories260K.gguf", "--slots", "3"}, io.Discard)
	assert.NilError(t, err)
	assert.Equal(t, cfg.Name, "stories260K")
	assert.Equal(t, cfg.Slots, 3)

	_, err = parseConfig([]string{"--id", "w-1", "--model", "/m.gguf", "--slots", "0"}, io.Discard)
	assert.ErrorContains(t, err, "--slots")
	_, err = parseConfig([]string{"--id", "bad id!", "--model", "/m.gguf"}, io.Discard)
	assert.ErrorContains(t, err, "--id")

	t.Setenv(api.EnvWorkerToken, "")
	_, err = parseConfig([]string{"--id", "w-1", "--model", "/m.gguf"}, io.Discard)
	assert.ErrorContains(t, err, api.EnvWorkerToken)
}

func TestChatCompletion(t *testing.T) {
	srv := startWorker(t, 256)
	resp := post(t, srv, testToken, `{"messages":[{"role":"system","content":"You tell stories."},`+
		`{"role":"user","content":"Tell me about a dog."}],"max_tokens":20,"temperature":0}`)
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	var ev api.CompletionEvent
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&ev))
	assert.Assert(t, ev.Done)
	// The rendered prompt (fallback: role lines) is longer than the texts.
	assert.Assert(t, ev.PromptTokens > 10, "prompt tokens %d", ev.PromptTokens)
	assert.Assert(t, !strings.Contains(ev.Text, "\nuser:"), "ran into the next turn: %q", ev.Text)
}

func TestChatRejectsBadMessages(t *testing.T) {
	srv := startWorker(t, 256)
	tests := []struct{ name, body string }{
		{name: "unknown role", body: `{"messages":[{"role":"robot","content":"hi"}],"max_tokens":5}`},
		{name: "prompt and messages", body: `{"prompt":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":5}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, srv, testToken, tc.body)
			assert.Equal(t, resp.StatusCode, http.StatusBadRequest)
			var body api.ErrorBody
			assert.NilError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, body.Error.Param, "messages")
		})
	}
}

func TestFallbackChatRendering(t *testing.T) {
	got := fallbackChat([]llm.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}})
	assert.Equal(t, got, "system: Be brief.\nuser: Hi\nassistant:")
}

func TestChatTemplateFromLlamaCpp(t *testing.T) {
	chatml := "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + " +
		"message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
	got, err := llm.ApplyChatTemplate(chatml, []llm.Message{{Role: "user", Content: "Hi"}})
	assert.NilError(t, err)
	assert.Equal(t, got, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

	_, err = llm.ApplyChatTemplate("no template llama.cpp knows", []llm.Message{{Role: "user", Content: "Hi"}})
	assert.Assert(t, errors.Is(err, llm.ErrUnknownTemplate))
}

func TestEmbedding(t *testing.T) {
	srv := startWorker(t, 256)
	resp := postTo(t, srv, "/v1/embedding", testToken, `{"input":["Once upon a time","A dog ran."]}`)
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	var out api.EmbeddingResponse
	assert.NilError(t, json.NewDecoder(resp.Body).Decode(&out))
	assert.Equal(t, len(out.Embeddings), 2)
	assert.Assert(t, out.PromptTokens > 4)
	for _, vec := range out.Embeddings {
		assert.Assert(t, len(vec) > 0)
		var norm float64
		for _, x := range vec {
			norm += float64(x) * float64(x)
		}
		assert.Assert(t, norm > 0.99 && norm < 1.01, "not unit length: %g", norm)
	}
	assert.Assert(t, out.Embeddings[0][0] != out.Embeddings[1][0])

	resp = postTo(t, srv, "/v1/embedding", testToken, `{"input":[]}`)
	assert.Equal(t, resp.StatusCode, http.StatusBadRequest)
}

func TestDefaultThreadsIsPhysicalCores(t *testing.T) {
	n := defaultThreads()
	assert.Assert(t, n >= 1 && n <= runtime.NumCPU(), "threads %d of %d CPUs", n, runtime.NumCPU())
}
