package queen

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// newTestServer is a real queen, built as newServer builds it, on a fresh
// registry and an in-process listener. Its routes hold no workers until a
// test registers some with addWorker.
func newTestServer(tb testing.TB) (*Server, *httptest.Server) {
	tb.Helper()
	cfg := Config{Addr: "127.0.0.1:0", DBPath: filepath.Join(tb.TempDir(), "queen.db")}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(tb, err)
	tb.Cleanup(func() { _ = s.Close() })
	ts := httptest.NewServer(s.routes())
	tb.Cleanup(ts.Close)
	return s, ts
}

// addWorker makes a ready worker of testModel at url routable.
func addWorker(s *Server, id, url string, slots int) {
	s.router.update(id, testModel, url, "token-"+id, api.WorkerReady, slots)
}

// stubWorker speaks the worker's HTTP protocol (docs/contracts.md) with
// whatever its behaviour says, and counts the requests it was sent.
type stubWorker struct {
	*httptest.Server
	calls atomic.Int32

	mu   sync.Mutex
	last api.CompletionRequest
}

// stubBehaviour answers one completion request the stub already decoded.
type stubBehaviour func(w http.ResponseWriter, r *http.Request, req api.CompletionRequest)

// newStubWorker serves POST /v1/completion with complete and, when embed
// is not nil, POST /v1/embedding with it. Requests must carry the token
// addWorker registers for id.
func newStubWorker(tb testing.TB, id string, complete stubBehaviour,
	embed http.HandlerFunc) *stubWorker {
	tb.Helper()
	sw := &stubWorker{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completion", func(w http.ResponseWriter, r *http.Request) {
		sw.calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer token-"+id {
			httpapi.WriteError(w, httpapi.Unauthorized("missing or wrong worker token"))
			return
		}
		var req api.CompletionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("", "bad body: %v", err))
			return
		}
		sw.mu.Lock()
		sw.last = req
		sw.mu.Unlock()
		complete(w, r, req)
	})
	if embed != nil {
		mux.HandleFunc("POST /v1/embedding", func(w http.ResponseWriter, r *http.Request) {
			sw.calls.Add(1)
			embed(w, r)
		})
	}
	sw.Server = httptest.NewServer(mux)
	tb.Cleanup(sw.Close)
	return sw
}

// lastRequest is the completion request the stub received last.
func (sw *stubWorker) lastRequest() api.CompletionRequest {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.last
}

// streamTokens streams tokens, then the final event, as a worker does.
func streamTokens(tokens []string, reason string) stubBehaviour {
	return func(w http.ResponseWriter, _ *http.Request, _ api.CompletionRequest) {
		sse := httpapi.NewSSEWriter(w)
		for _, tok := range tokens {
			_ = sse.Event(api.CompletionEvent{Text: tok})
		}
		_ = sse.Event(api.CompletionEvent{Done: true, FinishReason: reason,
			PromptTokens: 5, CompletionTokens: len(tokens)})
		_ = sse.Done()
	}
}

// helloWorld streams "Hello", " world", then finishes for reason.
func helloWorld(reason string) stubBehaviour {
	return streamTokens([]string{"Hello", " world"}, reason)
}

// failWith answers with an error status, before any token.
func failWith(status int) stubBehaviour {
	return func(w http.ResponseWriter, _ *http.Request, _ api.CompletionRequest) {
		httpapi.WriteError(w, &httpapi.Error{Status: status, Type: "server_error",
			Code: "stub", Param: "prompt", Message: "stub failure"})
	}
}

// resetBeforeAnswer drops the connection without a byte of answer.
func resetBeforeAnswer(http.ResponseWriter, *http.Request, api.CompletionRequest) {
	panic(http.ErrAbortHandler)
}

// dieAfter streams tokens, then drops the connection mid-stream, as a
// worker killed while generating does.
func dieAfter(tokens ...string) stubBehaviour {
	return func(w http.ResponseWriter, _ *http.Request, _ api.CompletionRequest) {
		sse := httpapi.NewSSEWriter(w)
		for _, tok := range tokens {
			_ = sse.Event(api.CompletionEvent{Text: tok})
		}
		panic(http.ErrAbortHandler)
	}
}

// holdAfterFirst streams one token, then holds the request (and so the
// slot) until release is closed or the client leaves, which it records.
func holdAfterFirst(release <-chan struct{}, left chan<- struct{}) stubBehaviour {
	return func(w http.ResponseWriter, r *http.Request, _ api.CompletionRequest) {
		sse := httpapi.NewSSEWriter(w)
		_ = sse.Event(api.CompletionEvent{Text: "first"})
		select {
		case <-release:
			_ = sse.Event(api.CompletionEvent{Done: true, FinishReason: api.FinishStop})
			_ = sse.Done()
		case <-r.Context().Done():
			if left != nil {
				close(left)
			}
		}
	}
}

// refusedURL is an address where nothing listens.
func refusedURL(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	assert.NilError(tb, err)
	url := "http://" + ln.Addr().String()
	assert.NilError(tb, ln.Close())
	return url
}

// post sends a JSON body to the queen.
func post(tb testing.TB, ts *httptest.Server, path, body string) *http.Response {
	tb.Helper()
	resp, err := ts.Client().Post(ts.URL+path, "application/json", strings.NewReader(body))
	assert.NilError(tb, err)
	tb.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// readAll returns a response's status and body.
func readAll(tb testing.TB, resp *http.Response) (int, []byte) {
	tb.Helper()
	data, err := io.ReadAll(resp.Body)
	assert.NilError(tb, err)
	return resp.StatusCode, data
}
