package workerd

import (
	"errors"
	"net/http"
	"strings"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine"
	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// Limits on what one request may carry.
const (
	maxMessages        = 256
	maxEmbeddingInputs = 64
)

var chatRoles = map[string]bool{"system": true, "user": true, "assistant": true}

// renderChat turns chat messages into a prompt with the model's template,
// or with the plain fallback (api.ChatFallbackTemplate) when the model has
// none that llama.cpp knows. The fallback adds stop strings so that the
// model does not go on to write the user's next turn.
func (w *worker) renderChat(messages []api.ChatMessage, stop []string) (string, []string, error) {
	if len(messages) > maxMessages {
		return "", nil, httpapi.BadRequest("messages", "at most %d messages, got %d", maxMessages, len(messages))
	}
	msgs := make([]llm.Message, len(messages))
	for i, m := range messages {
		if !chatRoles[m.Role] {
			return "", nil, httpapi.BadRequest("messages",
				"messages[%d].role must be system, user or assistant, not %q", i, m.Role)
		}
		msgs[i] = llm.Message{Role: m.Role, Content: m.Content}
	}
	w.mu.Lock()
	template := w.chatTemplate
	w.mu.Unlock()
	prompt, err := llm.ApplyChatTemplate(template, msgs)
	if err == nil {
		return prompt, stop, nil
	}
	return fallbackChat(msgs), append(stop, "\nuser:", "\nsystem:"), nil
}

// fallbackChat renders messages as "role: content" lines, then the cue for
// the assistant.
func fallbackChat(msgs []llm.Message) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString(m.Role)
		b.WriteString(": ")
		b.WriteString(m.Content)
		b.WriteString("\n")
	}
	b.WriteString("assistant:")
	return b.String()
}

func (w *worker) handleEmbedding(rw http.ResponseWriter, r *http.Request) error {
	eng, err := w.readyEngine()
	if err != nil {
		return err
	}
	var req api.EmbeddingRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	switch {
	case len(req.Input) == 0:
		return httpapi.BadRequest("input", "input is empty: send one or more strings")
	case len(req.Input) > maxEmbeddingInputs:
		return httpapi.BadRequest("input", "at most %d inputs per request, got %d",
			maxEmbeddingInputs, len(req.Input))
	}
	w.inflight.Add(1)
	defer w.inflight.Done()
	resp := api.EmbeddingResponse{Embeddings: make([][]float32, len(req.Input))}
	for i, text := range req.Input {
		vec, tokens, err := eng.Embed(r.Context(), text)
		if errors.Is(err, engine.ErrNoEmbeddings) {
			return &httpapi.Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
				Code: "embeddings_unsupported", Message: "model " + w.cfg.Name + " produces no embeddings"}
		}
		if err != nil {
			return submitError(err)
		}
		resp.Embeddings[i] = vec
		resp.PromptTokens += tokens
	}
	httpapi.WriteJSON(rw, http.StatusOK, resp)
	return nil
}
