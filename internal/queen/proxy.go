package queen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// forward sends body to path on a ready worker of model, and returns the
// worker's 200 answer with the slot it holds; the caller closes the body,
// then releases the slot.
//
// A worker that fails before it answers (unreachable, reset, or a 5xx) is
// replaced once by another ready worker of the model, if there is one.
// Once a worker has answered it is never replaced: the client may already
// hold its first tokens, and must not see them twice.
func (s *Server) forward(ctx context.Context, model, path string, body any) (
	*http.Response, *lease, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return nil, nil, fmt.Errorf("encode worker request: %w", err)
	}
	start := time.Now()
	l, err := s.router.acquire(ctx, model)
	s.metrics.queueWait.WithLabelValues(model).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, nil, err
	}
	resp, retry, err := s.callWorker(ctx, l, path, data)
	if err == nil {
		return resp, l, nil
	}
	l.release()
	if !retry || ctx.Err() != nil {
		return nil, nil, err
	}

	next, acqErr := s.router.acquireExcept(ctx, model, l.workerID)
	if acqErr != nil {
		return nil, nil, err // no other worker: the failure says the most
	}
	s.log.Warn("worker failed before answering, retrying on another", "worker_id", l.workerID,
		"retry_worker_id", next.workerID, "model", model, "error", err)
	resp, _, err = s.callWorker(ctx, next, path, data)
	if err != nil {
		next.release()
		return nil, nil, err
	}
	return resp, next, nil
}

// callWorker posts data to path on the leased worker, presenting its token.
// retry reports whether the worker failed before answering, so that another
// worker may take the request.
func (s *Server) callWorker(ctx context.Context, l *lease, path string, data []byte) (
	resp *http.Response, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url+path, bytes.NewReader(data))
	if err != nil {
		return nil, false, fmt.Errorf("worker %s request: %w", l.workerID, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.token)
	resp, err = s.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			s.router.suspect(l.workerID)
		}
		return nil, true, httpapi.Upstream(err, "worker %s did not answer", l.workerID)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, false, nil
	}
	defer resp.Body.Close()
	return nil, resp.StatusCode >= 500, workerError(l.workerID, resp)
}

// workerError passes a worker's client errors through (the request was at
// fault) and reports its server errors as a bad gateway.
func workerError(id string, resp *http.Response) error {
	var body api.ErrorBody
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, &body) != nil || body.Error.Message == "" {
		body.Error.Message = strings.TrimSpace(string(data))
	}
	status := resp.StatusCode
	if status >= 400 && status < 500 && status != http.StatusUnauthorized {
		return &httpapi.Error{Status: status, Type: body.Error.Type,
			Code: body.Error.Code, Param: body.Error.Param, Message: body.Error.Message}
	}
	return httpapi.Upstream(fmt.Errorf("worker %s: status %d", id, status),
		"worker %s failed: %s", id, body.Error.Message)
}

// answer shapes a worker's events as one kind of OpenAI response: a text
// completion or a chat completion. Each method returns the value to send
// as JSON, valid until the next call.
type answer interface {
	// opening is the chunk a stream starts with, or nil for none.
	opening() any
	// delta is a streamed chunk carrying text.
	delta(text string) any
	// finish is the streamed chunk carrying the finish reason.
	finish(reason string) any
	// usage is the streamed chunk, with no choices, carrying the counts.
	usage(u *openai.Usage) any
	// whole is the answer to a request without streaming.
	whole(text, reason string, u *openai.Usage) any
}

// relayStream turns the worker's events into chunks as they come, without
// buffering. A failure after the first chunk ends the stream with an error
// event, then [DONE].
func relayStream(w http.ResponseWriter, events *httpapi.SSEReader, a answer,
	includeUsage bool) error {
	sse := httpapi.NewSSEWriter(w)
	if first := a.opening(); first != nil {
		if err := sse.Event(first); err != nil {
			return nil // the client left; its request context stops the worker
		}
	}
	for {
		ev, err := nextEvent(events)
		if err != nil {
			return endStreamWithError(sse, err)
		}
		if ev.Error != "" {
			return endStreamWithError(sse, generationError(ev))
		}
		if ev.Text != "" {
			if err := sse.Event(a.delta(ev.Text)); err != nil {
				return nil
			}
		}
		if !ev.Done {
			continue
		}
		if err := sse.Event(a.finish(ev.FinishReason)); err != nil {
			return nil
		}
		if includeUsage {
			if err := sse.Event(a.usage(usageOf(ev))); err != nil {
				return nil
			}
		}
		return sse.Done()
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

// collect gathers the whole answer for a request without streaming.
func collect(w http.ResponseWriter, events *httpapi.SSEReader, a answer) error {
	var text strings.Builder
	for {
		ev, err := nextEvent(events)
		if err != nil {
			return err
		}
		if ev.Error != "" {
			return generationError(ev)
		}
		text.WriteString(ev.Text)
		if ev.Done {
			whole := a.whole(text.String(), ev.FinishReason, usageOf(ev))
			httpapi.WriteJSON(w, http.StatusOK, whole)
			return nil
		}
	}
}

func generationError(ev api.CompletionEvent) error {
	return httpapi.Upstream(errors.New(ev.Error), "generation failed: %s", ev.Error)
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
