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
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// defaultMaxTokens applies when a request does not say; OpenAI's own
// default (16) cuts most answers short.
const defaultMaxTokens = 256

// toWorkerRequest validates an OpenAI request, naming the field at fault,
// and turns it into the worker's shape.
func toWorkerRequest(c openai.CompletionRequest) (api.CompletionRequest, error) {
	out := api.CompletionRequest{MaxTokens: defaultMaxTokens, TopK: c.TopK, Stream: true}
	if c.Model == "" {
		return out, httpapi.BadRequest("model", "model is required: see GET /v1/models")
	}
	prompt, ok := openai.StringOrList(c.Prompt)
	if !ok || len(prompt) != 1 || prompt[0] == "" {
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
	out.Temperature = toFloat32(c.Temperature)
	out.TopP = toFloat32(c.TopP)
	if out.Stop, ok = openai.StringOrList(c.Stop); !ok {
		return out, httpapi.BadRequest("stop", "stop must be a string or a list of strings")
	}
	return out, nil
}

func toFloat32(f *float64) *float32 {
	if f == nil {
		return nil
	}
	v := float32(*f)
	return &v
}

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) error {
	var req openai.CompletionRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	workerReq, err := toWorkerRequest(req)
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
	out := &openai.Completion{ID: "cmpl-" + randomHex(12), Object: "text_completion",
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
func (s *Server) relayStream(w http.ResponseWriter, events *httpapi.SSEReader, out *openai.Completion, includeUsage bool) error {
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
			out.Choices = []openai.CompletionChoice{{Text: ev.Text, FinishReason: &reason}}
			if err := sse.Event(out); err != nil {
				return nil
			}
			if includeUsage {
				out.Choices = []openai.CompletionChoice{}
				out.Usage = usageOf(ev)
				if err := sse.Event(out); err != nil {
					return nil
				}
			}
			return sse.Done()
		default:
			out.Choices = []openai.CompletionChoice{{Text: ev.Text}}
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
func collect(w http.ResponseWriter, events *httpapi.SSEReader, out *openai.Completion) error {
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
			out.Choices = []openai.CompletionChoice{{Text: text.String(), FinishReason: &reason}}
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

func usageOf(ev api.CompletionEvent) *openai.Usage {
	return &openai.Usage{PromptTokens: ev.PromptTokens, CompletionTokens: ev.CompletionTokens,
		TotalTokens: ev.PromptTokens + ev.CompletionTokens}
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) error {
	workers, err := s.store.Workers(r.Context(), false)
	if err != nil {
		return err
	}
	byModel := map[string]*openai.Model{}
	for _, wk := range workers {
		if wk.State != api.WorkerReady {
			continue
		}
		e, ok := byModel[wk.Model]
		if !ok {
			e = &openai.Model{ID: wk.Model, Object: "model", Created: wk.CreatedAt.Unix(), OwnedBy: "rbee"}
			byModel[wk.Model] = e
		}
		e.Replicas++
	}
	list := make([]openai.Model, 0, len(byModel))
	for _, e := range byModel {
		list = append(list, *e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	httpapi.WriteJSON(w, http.StatusOK, openai.ModelList{Object: "list", Data: list})
	return nil
}
