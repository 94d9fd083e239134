package queen

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// openAIPaths are the endpoints FuzzOpenAIRequest posts to, picked by the
// input's first number.
var openAIPaths = []string{"/v1/completions", "/v1/chat/completions", "/v1/embeddings"}

// openAIStatuses are the answers an OpenAI request may get from a queen
// with one idle, healthy worker of testModel; anything else is a bug.
var openAIStatuses = map[int]bool{
	http.StatusOK:                    true, // routed, and answered
	http.StatusBadRequest:            true, // the request is wrong; the error names the field
	http.StatusNotFound:              true, // a model no worker serves (code model_not_found)
	http.StatusRequestEntityTooLarge: true,
}

// FuzzOpenAIRequest posts arbitrary bodies to the completions, chat and
// embeddings endpoints of a queen with one worker (a stub that answers
// every well-formed request): each must be refused with an OpenAI-shaped
// 4xx, or routed and answered; never a panic or a 5xx.
func FuzzOpenAIRequest(f *testing.F) {
	seeds := []struct {
		path uint8
		body string
	}{
		{0, `{"model":"tiny","prompt":"hi","max_tokens":4,"temperature":0.5,"stop":["\n"]}`},
		{0, `{"model":"tiny","prompt":["hi"],"stream":true,"stream_options":{"include_usage":true}}`},
		{0, `{"model":"tiny","prompt":"hi","seed":42,"top_p":0.9,"top_k":40,"n":1}`},
		{0, `{"model":"other","prompt":"hi"}`},
		{1, `{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`},
		{1, `{"model":"tiny","messages":[{"role":"system","content":[{"type":"text","text":"be brief"}]},` +
			`{"role":"user","content":"hi"}],"max_completion_tokens":8,"stream":true}`},
		{1, `{"model":"tiny","messages":[{"role":"tool","content":null}]}`},
		{2, `{"model":"tiny","input":"hello","encoding_format":"float"}`},
		{2, `{"model":"tiny","input":["a","b"]}`},
		{2, `{"model":"tiny","input":[1,2,3],"dimensions":8}`},
		{2, `not json`},
	}
	for _, sd := range seeds {
		f.Add(sd.path, []byte(sd.body))
	}

	s, _ := newTestServer(f)
	w := newStubWorker(f, "w-fuzz", helloWorld(api.FinishStop), embedEach)
	addWorker(s, "w-fuzz", w.URL, 4)
	routes := s.routes()
	f.Fuzz(func(t *testing.T, path uint8, body []byte) {
		req := httptest.NewRequest(http.MethodPost, openAIPaths[int(path)%len(openAIPaths)],
			bytes.NewReader(body))
		rec := httptest.NewRecorder()
		routes.ServeHTTP(rec, req)
		checkAnswer(t, rec, openAIStatuses)
		if rec.Code == http.StatusNotFound && !strings.Contains(rec.Body.String(), "model_not_found") {
			t.Fatalf("404 that is not model_not_found: %s", rec.Body.String())
		}
	})
}

// embedEach answers an embedding request as a worker does: one vector per
// input.
func embedEach(w http.ResponseWriter, r *http.Request) {
	var req api.EmbeddingRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpapi.WriteError(w, httpapi.BadRequest("", "bad body: %v", err))
		return
	}
	vecs := make([][]float32, len(req.Input))
	for i := range vecs {
		vecs[i] = []float32{0.5, 0.25}
	}
	httpapi.WriteJSON(w, http.StatusOK, api.EmbeddingResponse{Embeddings: vecs, PromptTokens: 1})
}
