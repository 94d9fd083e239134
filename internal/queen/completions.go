package queen

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// defaultMaxTokens applies when a request does not say; OpenAI's own
// default (16) cuts most answers short.
const defaultMaxTokens = 256

// completionRequest is OpenAI's /v1/completions body, as far as rbee
// supports it. top_k is an extension that llama.cpp servers also accept.
type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	Temperature   *float32        `json:"temperature"`
	TopP          *float32        `json:"top_p"`
	TopK          *int            `json:"top_k"`
	Seed          *int64          `json:"seed"`
	Stop          json.RawMessage `json:"stop"`
	N             *int            `json:"n"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// toWorker validates the request and turns it into the worker's shape.
func (c completionRequest) toWorker() (api.CompletionRequest, error) {
	out := api.CompletionRequest{MaxTokens: defaultMaxTokens, Temperature: c.Temperature,
		TopP: c.TopP, TopK: c.TopK, Stream: true}
	if c.Model == "" {
		return out, httpapi.BadRequest("model", "model is required: see GET /v1/models")
	}
	prompt, err := stringOrList("prompt", c.Prompt)
	if err != nil {
		return out, err
	}
	if len(prompt) != 1 || prompt[0] == "" {
		return out, httpapi.BadRequest("prompt", "prompt must be one non-empty string")
	}
	out.Prompt = prompt[0]
	if c.MaxTokens != nil {
		if *c.MaxTokens <= 0 {
			return out, httpapi.BadRequest("max_tokens", "max_tokens must be at least 1, got %d", *c.MaxTokens)
		}
		out.MaxTokens = *c.MaxTokens
	}
	if c.N != nil && *c.N != 1 {
		return out, httpapi.BadRequest("n", "n must be 1: rbee returns one choice per request")
	}
	if c.Seed != nil {
		if *c.Seed < 0 || *c.Seed >= math.MaxUint32 {
			return out, httpapi.BadRequest("seed", "seed must be between 0 and %d", uint32(math.MaxUint32-1))
		}
		seed := uint32(*c.Seed)
		out.Seed = &seed
	}
	if out.Stop, err = stringOrList("stop", c.Stop); err != nil {
		return out, err
	}
	return out, nil
}

// stringOrList reads a field that OpenAI allows as a string or a list of
// strings.
func stringOrList(field string, raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, httpapi.BadRequest(field, "%s must be a string or a list of strings", field)
	}
	return list, nil
}

// OpenAI's response shapes for text completions.
type (
	completionChoice struct {
		Index        int     `json:"index"`
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
	}
	usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	completion struct {
		ID      string             `json:"id"`
		Object  string             `json:"object"`
		Created int64              `json:"created"`
		Model   string             `json:"model"`
		Choices []completionChoice `json:"choices"`
		Usage   *usage             `json:"usage,omitempty"`
	}
)

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) error {
	var req completionRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	workerReq, err := req.toWorker()
	if err != nil {
		return err
	}
	lease, err := s.router.acquire(r.Context(), req.Model)
	if err != nil {
		return err
	}
	defer lease.release()

	resp, err := s.callWorker(r, lease, workerReq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out := &completion{ID: "cmpl-" + randomHex(12), Object: "text_completion",
		Created: time.Now().Unix(), Model: req.Model}
	events := httpapi.NewSSEReader(resp.Body)
	if req.Stream {
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		return s.relayStream(w, events, out, includeUsage)
	}
	return collect(w, events, out)
}

// callWorker opens the worker's token stream, presenting its token.
func (s *Server) callWorker(r *http.Request, l *lease, req api.CompletionRequest) (*http.Response, error) {
	body, _ := json.Marshal(req)
	httpReq, err := http.NewRequestWithContext(r.Context(), http.MethodPost,
		l.url+"/v1/completion", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	httpReq.Header.Set("Content-Type", "application/json")
	httpReq.Header.Set("Authorization", "Bearer "+l.token)
	resp, err := s.client.Do(httpReq)
	if err != nil {
		return nil, httpapi.Upstream(err, "worker %s did not answer", l.workerID)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, workerError(l.workerID, resp)
}

// workerError passes a worker's client errors through (the request was at
// fault) and reports its server errors as a bad gateway.
func workerError(id string, resp *http.Response) error {
	var body api.ErrorBody
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, &body) != nil || body.Error.Message == "" {
		body.Error.Message = strings.TrimSpace(string(data))
	}
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusUnauthorized {
		return &httpapi.Error{Status: resp.StatusCode, Type: body.Error.Type,
			Code: body.Error.Code, Param: body.Error.Param, Message: body.Error.Message}
	}
	return httpapi.Upstream(fmt.Errorf("worker %s: status %d", id, resp.StatusCode),
		"worker %s failed: %s", id, body.Error.Message)
}

// relayStream turns the worker's events into OpenAI chunks as they come.
func (s *Server) relayStream(w http.ResponseWriter, events *httpapi.SSEReader, out *completion, includeUsage bool) error {
	sse := httpapi.NewSSEWriter(w)
	for {
		ev, err := nextEvent(events)
		if err != nil {
			return endStreamWithError(sse, err)
		}
		switch {
		case ev.Error != "":
			return endStreamWithError(sse, httpapi.Upstream(errors.New(ev.Error), "generation failed: %s", ev.Error))
		case ev.Done:
			reason := ev.FinishReason
			out.Choices = []completionChoice{{Text: ev.Text, FinishReason: &reason}}
			if err := sse.Event(out); err != nil {
				return nil
			}
			if includeUsage {
				out.Choices = []completionChoice{}
				out.Usage = usageOf(ev)
				if err := sse.Event(out); err != nil {
					return nil
				}
			}
			return sse.Done()
		default:
			out.Choices = []completionChoice{{Text: ev.Text}}
			if err := sse.Event(out); err != nil {
				return nil // the client left; its request context stops the worker
			}
		}
	}
}

// endStreamWithError ends a stream that broke: as an error response if
// nothing was sent yet, else as an error event then [DONE].
func endStreamWithError(sse *httpapi.SSEWriter, err error) error {
	if !sse.Started() {
		return err
	}
	_ = sse.Event(httpapi.Body(httpapi.AsError(err)))
	return sse.Done()
}

// collect gathers the whole answer for a non-streaming request.
func collect(w http.ResponseWriter, events *httpapi.SSEReader, out *completion) error {
	var text strings.Builder
	for {
		ev, err := nextEvent(events)
		if err != nil {
			return err
		}
		if ev.Error != "" {
			return httpapi.Upstream(errors.New(ev.Error), "generation failed: %s", ev.Error)
		}
		text.WriteString(ev.Text)
		if ev.Done {
			reason := ev.FinishReason
			out.Choices = []completionChoice{{Text: text.String(), FinishReason: &reason}}
			out.Usage = usageOf(ev)
			httpapi.WriteJSON(w, http.StatusOK, out)
			return nil
		}
	}
}

// nextEvent reads one worker event; a stream that ends early is an error.
func nextEvent(events *httpapi.SSEReader) (api.CompletionEvent, error) {
	var ev api.CompletionEvent
	data, done, err := events.Next()
	if done || errors.Is(err, io.EOF) {
		return ev, httpapi.Upstream(io.ErrUnexpectedEOF, "the worker ended the stream early")
	}
	if err != nil {
		return ev, httpapi.Upstream(err, "lost the worker mid-answer: %v", err)
	}
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, httpapi.Upstream(err, "the worker sent an unreadable event")
	}
	return ev, nil
}

func usageOf(ev api.CompletionEvent) *usage {
	return &usage{PromptTokens: ev.PromptTokens, CompletionTokens: ev.CompletionTokens,
		TotalTokens: ev.PromptTokens + ev.CompletionTokens}
}

// modelEntry is one entry of OpenAI's model list, plus rbee's replica count.
type modelEntry struct {
	ID       string `json:"id"`
	Object   string `json:"object"`
	Created  int64  `json:"created"`
	OwnedBy  string `json:"owned_by"`
	Replicas int    `json:"replicas"`
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) error {
	workers, err := s.store.Workers(r.Context(), false)
	if err != nil {
		return err
	}
	byModel := map[string]*modelEntry{}
	for _, wk := range workers {
		if wk.State != api.WorkerReady {
			continue
		}
		e, ok := byModel[wk.Model]
		if !ok {
			e = &modelEntry{ID: wk.Model, Object: "model", Created: wk.CreatedAt.Unix(), OwnedBy: "rbee"}
			byModel[wk.Model] = e
		}
		e.Replicas++
	}
	list := make([]modelEntry, 0, len(byModel))
	for _, e := range byModel {
		list = append(list, *e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"object": "list", "data": list})
	return nil
}
