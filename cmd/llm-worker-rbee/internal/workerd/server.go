package workerd

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine"
	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// Sampling defaults, as llama.cpp's own server uses them.
const (
	defaultTemperature = 0.8
	defaultTopK        = 40
	defaultTopP        = 0.95
	maxStopStrings     = 8
)

// worker is the running daemon's shared state.
type worker struct {
	cfg Config
	log *slog.Logger
	url string

	mu           sync.Mutex
	state        api.WorkerState
	err          string
	engine       *engine.Engine
	chatTemplate string

	inflight sync.WaitGroup
	rates    rateMeter
	metrics  *workerMetrics // made by routes
}

func (w *worker) setState(state api.WorkerState, errText string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state, w.err = state, errText
}

func (w *worker) snapshot() (api.WorkerState, string, *engine.Engine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state, w.err, w.engine
}

func (w *worker) routes() http.Handler {
	w.metrics = newWorkerMetrics(w)
	m := w.metrics
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", httpapi.Handle(w.log, w.handleHealth))
	mux.HandleFunc("POST /v1/completion", httpapi.Handle(w.log,
		w.requireToken(m.count("completion", w.handleCompletion))))
	mux.HandleFunc("POST /v1/embedding", httpapi.Handle(w.log,
		w.requireToken(m.count("embedding", w.handleEmbedding))))
	// Metrics need the token too: a worker port reached directly is not
	// an open door, and the queen's /metrics is the fleet-wide view.
	mux.Handle("GET /metrics", httpapi.Handle(w.log, w.requireToken(
		func(rw http.ResponseWriter, r *http.Request) error {
			m.handler().ServeHTTP(rw, r)
			return nil
		})))
	mux.HandleFunc("/", httpapi.Handle(w.log, func(http.ResponseWriter, *http.Request) error {
		return httpapi.NotFound("not_found", "no such route; see docs/contracts.md")
	}))
	return mux
}

func (w *worker) handleHealth(rw http.ResponseWriter, _ *http.Request) error {
	state, errText, eng := w.snapshot()
	health := api.WorkerHealth{Status: state, Model: w.cfg.Name, Error: errText,
		SlotsTotal: w.cfg.Slots}
	if eng != nil {
		stats := eng.Stats()
		health.SlotsBusy = stats.SlotsBusy
		health.RequestsServed = stats.RequestsServed
		health.RequestsFailed = stats.RequestsFailed
	}
	httpapi.WriteJSON(rw, http.StatusOK, health)
	return nil
}

// requireToken lets a request through only with the worker's own token, so
// a worker port reached directly is not an open door.
func (w *worker) requireToken(next httpapi.HandlerFunc) httpapi.HandlerFunc {
	want := []byte("Bearer " + w.cfg.Token)
	return func(rw http.ResponseWriter, r *http.Request) error {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			return httpapi.Unauthorized("missing or wrong worker token")
		}
		return next(rw, r)
	}
}

// readyEngine is the engine when the worker takes requests, else the
// error that says why not.
func (w *worker) readyEngine() (*engine.Engine, error) {
	state, errText, eng := w.snapshot()
	switch state {
	case api.WorkerReady:
		return eng, nil
	case api.WorkerLoading:
		return nil, httpapi.Unavailable(time.Second, "the model is still loading")
	case api.WorkerFailed:
		return nil, httpapi.Unavailable(0, "the worker failed: %s", errText)
	}
	return nil, httpapi.Unavailable(time.Second, "the worker is %s and takes no new requests", state)
}

func (w *worker) handleCompletion(rw http.ResponseWriter, r *http.Request) error {
	first := &firstText{start: time.Now(), h: w.metrics.ttft}
	eng, err := w.readyEngine()
	if err != nil {
		return err
	}
	var req api.CompletionRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.Messages) > 0 {
		if req.Prompt != "" {
			return httpapi.BadRequest("messages", "send prompt or messages, not both")
		}
		if req.Prompt, req.Stop, err = w.renderChat(req.Messages, req.Stop); err != nil {
			return err
		}
	}
	engReq, err := toEngineRequest(req)
	if err != nil {
		return err
	}
	engReq.Special = len(req.Messages) > 0

	w.inflight.Add(1)
	defer w.inflight.Done()
	stream, err := eng.Submit(r.Context(), engReq)
	if err != nil {
		return submitError(err)
	}
	if req.Stream {
		return w.streamCompletion(rw, r.Context(), stream, first)
	}
	return collectCompletion(rw, r.Context(), stream, first)
}

// toEngineRequest validates a request, naming the field at fault.
func toEngineRequest(req api.CompletionRequest) (engine.Request, error) {
	out := engine.Request{Prompt: req.Prompt, MaxTokens: req.MaxTokens, Stop: req.Stop}
	out.Sampling = llm.SamplingParams{
		Temperature: defaultTemperature, TopK: defaultTopK, TopP: defaultTopP,
		Seed: 0xFFFFFFFF, // llama.cpp: a random seed
	}
	switch {
	case strings.TrimSpace(req.Prompt) == "":
		return out, httpapi.BadRequest("prompt", "prompt is empty")
	case req.MaxTokens <= 0:
		return out, httpapi.BadRequest("max_tokens", "max_tokens must be at least 1, got %d", req.MaxTokens)
	case len(req.Stop) > maxStopStrings:
		return out, httpapi.BadRequest("stop", "at most %d stop strings, got %d", maxStopStrings, len(req.Stop))
	}
	for _, s := range req.Stop {
		if s == "" {
			return out, httpapi.BadRequest("stop", "stop strings must not be empty")
		}
	}
	if t := req.Temperature; t != nil {
		if *t < 0 || *t > 2 {
			return out, httpapi.BadRequest("temperature", "temperature must be between 0 and 2, got %g", *t)
		}
		out.Sampling.Temperature = *t
	}
	if p := req.TopP; p != nil {
		if *p <= 0 || *p > 1 {
			return out, httpapi.BadRequest("top_p", "top_p must be in (0, 1], got %g", *p)
		}
		out.Sampling.TopP = *p
	}
	if k := req.TopK; k != nil {
		if *k < 0 {
			return out, httpapi.BadRequest("top_k", "top_k must be 0 (off) or more, got %d", *k)
		}
		out.Sampling.TopK = *k
	}
	if req.Seed != nil {
		out.Sampling.Seed = *req.Seed
	}
	return out, nil
}

func submitError(err error) error {
	switch {
	case errors.Is(err, engine.ErrInvalid):
		return httpapi.BadRequest("prompt", "%s", err.Error())
	case errors.Is(err, engine.ErrPromptTooLong):
		return &httpapi.Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
			Code: "context_length_exceeded", Param: "prompt", Message: err.Error()}
	case errors.Is(err, engine.ErrClosed):
		return httpapi.Unavailable(time.Second, "the worker is shutting down")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return httpapi.Unavailable(time.Second, "request ended while waiting for a slot")
	}
	return err
}

func (w *worker) streamCompletion(rw http.ResponseWriter, ctx context.Context,
	stream *engine.Stream, first *firstText) error {
	sse := httpapi.NewSSEWriter(rw)
	for {
		text, result, err := stream.Next(ctx)
		if err != nil {
			return nil // the client left; the engine frees the slot at its next step
		}
		if text != "" {
			first.seen()
			if err := sse.Event(api.CompletionEvent{Text: text}); err != nil {
				return nil
			}
		}
		if result != nil {
			if err := sse.Event(finalEvent(result, "")); err != nil {
				return nil
			}
			return sse.Done()
		}
	}
}

func collectCompletion(rw http.ResponseWriter, ctx context.Context, stream *engine.Stream,
	first *firstText) error {
	var all strings.Builder
	for {
		text, result, err := stream.Next(ctx)
		if err != nil {
			return nil
		}
		if text != "" {
			first.seen()
		}
		all.WriteString(text)
		if result != nil {
			if result.Err != nil {
				return httpapi.Upstream(result.Err, "generation failed: %v", result.Err)
			}
			httpapi.WriteJSON(rw, http.StatusOK, finalEvent(result, all.String()))
			return nil
		}
	}
}

func finalEvent(r *engine.Result, text string) api.CompletionEvent {
	ev := api.CompletionEvent{
		Text:             text,
		Done:             true,
		FinishReason:     r.FinishReason,
		PromptTokens:     r.PromptTokens,
		CompletionTokens: r.CompletionTokens,
		PromptMS:         float64(r.PromptTime.Microseconds()) / 1000,
		GenerationMS:     float64(r.GenerationTime.Microseconds()) / 1000,
	}
	if r.Err != nil {
		ev.Error = r.Err.Error()
	}
	return ev
}
