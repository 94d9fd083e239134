package queen

import (
	"encoding/json"
	"math"
	"net/http"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// defaultMaxTokens applies when a request does not say; OpenAI's own
// default (16) cuts most answers short.
const defaultMaxTokens = 256

// errModelRequired answers every inference request without a model.
var errModelRequired = httpapi.BadRequest("model", "model is required: see GET /v1/models")

// sampling is what the completion and chat endpoints share: how many
// tokens, how to sample them, and where to stop.
type sampling struct {
	maxTokens      *int
	maxTokensParam string // the field maxTokens came from
	temperature    *float64
	topP           *float64
	topK           *int
	seed           *int64
	stop           json.RawMessage
	n              *int
}

// workerRequest validates p, naming the field at fault, and returns the
// worker's request with those settings, streaming (the queen collects a
// whole answer itself).
func (p sampling) workerRequest() (api.CompletionRequest, error) {
	out := api.CompletionRequest{MaxTokens: defaultMaxTokens, TopK: p.topK, Stream: true}
	if p.maxTokens != nil {
		if *p.maxTokens <= 0 {
			return out, httpapi.BadRequest(p.maxTokensParam, "%s must be at least 1, got %d",
				p.maxTokensParam, *p.maxTokens)
		}
		out.MaxTokens = *p.maxTokens
	}
	if p.n != nil && *p.n != 1 {
		return out, httpapi.BadRequest("n", "n must be 1: rbee returns one choice per request")
	}
	if t := p.temperature; t != nil && (*t < 0 || *t > 2) {
		return out, httpapi.BadRequest("temperature",
			"temperature must be between 0 and 2, got %g", *t)
	}
	if v := p.topP; v != nil && (*v <= 0 || *v > 1) {
		return out, httpapi.BadRequest("top_p", "top_p must be above 0 and at most 1, got %g", *v)
	}
	if k := p.topK; k != nil && *k < 0 {
		return out, httpapi.BadRequest("top_k", "top_k must be 0 (off) or more, got %d", *k)
	}
	if p.seed != nil {
		if *p.seed < 0 || *p.seed >= math.MaxUint32 {
			return out, httpapi.BadRequest("seed",
				"seed must be between 0 and %d", uint32(math.MaxUint32-1))
		}
		seed := uint32(*p.seed)
		out.Seed = &seed
	}
	out.Temperature = toFloat32(p.temperature)
	out.TopP = toFloat32(p.topP)
	var ok bool
	if out.Stop, ok = openai.StringOrList(p.stop); !ok {
		return out, httpapi.BadRequest("stop", "stop must be a string or a list of strings")
	}
	for _, s := range out.Stop {
		if s == "" {
			return out, httpapi.BadRequest("stop", "stop strings must not be empty")
		}
	}
	return out, nil
}

// toWorkerRequest validates an OpenAI completions request, naming the
// field at fault, and turns it into the worker's shape.
func toWorkerRequest(c openai.CompletionRequest) (api.CompletionRequest, error) {
	if c.Model == "" {
		return api.CompletionRequest{}, errModelRequired
	}
	prompt, ok := openai.StringOrList(c.Prompt)
	if !ok || len(prompt) != 1 || prompt[0] == "" {
		return api.CompletionRequest{}, httpapi.BadRequest("prompt",
			"prompt must be one non-empty string")
	}
	out, err := sampling{maxTokens: c.MaxTokens, maxTokensParam: "max_tokens",
		temperature: c.Temperature, topP: c.TopP, topK: c.TopK, seed: c.Seed, stop: c.Stop,
		n: c.N}.workerRequest()
	out.Prompt = prompt[0]
	return out, err
}

func toFloat32(f *float64) *float32 {
	if f == nil {
		return nil
	}
	v := float32(*f)
	return &v
}

func includeUsage(o *openai.StreamOptions) bool { return o != nil && o.IncludeUsage }

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) error {
	var req openai.CompletionRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	workerReq, err := toWorkerRequest(req)
	if err != nil {
		return err
	}
	a := &completionAnswer{c: openai.Completion{ID: "cmpl-" + randomHex(12),
		Object: "text_completion", Created: time.Now().Unix(), Model: req.Model}}
	return s.generate(w, r, req.Model, workerReq, a, req.Stream, includeUsage(req.StreamOptions))
}

// generate runs one generation on a worker of model and answers in a's
// shape, streamed or whole.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, model string,
	req api.CompletionRequest, a answer, stream, includeUsage bool) (err error) {
	start := time.Now()
	defer func() { s.metrics.request(model, err) }()
	resp, l, err := s.forward(r.Context(), model, "/v1/completion", req)
	if err != nil {
		return err
	}
	defer l.release()
	defer resp.Body.Close()
	body := &firstByte{ReadCloser: resp.Body, onFirst: func() {
		s.metrics.ttft.WithLabelValues(model).Observe(time.Since(start).Seconds())
	}}
	events := httpapi.NewSSEReader(body)
	if stream {
		return relayStream(w, events, a, includeUsage)
	}
	return collect(w, events, a)
}

// completionAnswer shapes a text completion (object "text_completion").
type completionAnswer struct {
	c      openai.Completion
	choice [1]openai.CompletionChoice
	reason string
}

func (a *completionAnswer) opening() any { return nil }

func (a *completionAnswer) delta(text string) any {
	a.choice[0] = openai.CompletionChoice{Text: text}
	a.c.Choices = a.choice[:]
	return &a.c
}

func (a *completionAnswer) finish(reason string) any {
	a.reason = reason
	a.choice[0] = openai.CompletionChoice{FinishReason: &a.reason}
	a.c.Choices = a.choice[:]
	return &a.c
}

func (a *completionAnswer) usage(u *openai.Usage) any {
	a.c.Choices = a.choice[:0]
	a.c.Usage = u
	return &a.c
}

func (a *completionAnswer) whole(text, reason string, u *openai.Usage) any {
	a.reason = reason
	a.choice[0] = openai.CompletionChoice{Text: text, FinishReason: &a.reason}
	a.c.Choices = a.choice[:]
	a.c.Usage = u
	return &a.c
}
