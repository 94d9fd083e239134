package queen

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// chatRoles maps the roles a chat request may use to the worker's. OpenAI's
// newer "developer" role plays the part "system" played before.
var chatRoles = map[string]string{
	"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
}

// toChatWorkerRequest validates a chat request, naming the field at fault,
// and turns it into the worker's shape: the messages, which the worker
// renders with the model's chat template.
func toChatWorkerRequest(c openai.ChatCompletionRequest) (api.CompletionRequest, error) {
	if c.Model == "" {
		return api.CompletionRequest{}, errModelRequired
	}
	messages, err := toChatMessages(c.Messages)
	if err != nil {
		return api.CompletionRequest{}, err
	}
	p := sampling{maxTokens: c.MaxTokens, maxTokensParam: "max_tokens",
		temperature: c.Temperature, topP: c.TopP, topK: c.TopK, seed: c.Seed, stop: c.Stop, n: c.N}
	if c.MaxTokens != nil && *c.MaxTokens <= 0 {
		return api.CompletionRequest{}, httpapi.BadRequest("max_tokens",
			"max_tokens must be at least 1, got %d", *c.MaxTokens)
	}
	if c.MaxCompletionTokens != nil {
		p.maxTokens, p.maxTokensParam = c.MaxCompletionTokens, "max_completion_tokens"
	}
	out, err := p.workerRequest()
	out.Messages = messages
	return out, err
}

// toChatMessages checks each message's role and content.
func toChatMessages(in []openai.ChatMessage) ([]api.ChatMessage, error) {
	if len(in) == 0 {
		return nil, httpapi.BadRequest("messages", "messages must hold at least one message")
	}
	out := make([]api.ChatMessage, len(in))
	for i, m := range in {
		role, ok := chatRoles[m.Role]
		if !ok {
			return nil, httpapi.BadRequest(fmt.Sprintf("messages[%d].role", i),
				"messages[%d].role must be system, user or assistant, not %q", i, m.Role)
		}
		text, err := m.Text()
		if err != nil {
			param, problem := fmt.Sprintf("messages[%d].content", i), err.Error()
			var ce *openai.ContentError
			if errors.As(err, &ce) {
				problem = ce.Problem
				if ce.Part >= 0 {
					param = fmt.Sprintf("%s[%d]", param, ce.Part)
				}
			}
			return nil, httpapi.BadRequest(param, "%s %s", param, problem)
		}
		out[i] = api.ChatMessage{Role: role, Content: text}
	}
	return out, nil
}

func (s *Server) handleChatCompletions(w http.ResponseWriter, r *http.Request) error {
	var req openai.ChatCompletionRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	workerReq, err := toChatWorkerRequest(req)
	if err != nil {
		return err
	}
	a := &chatAnswer{c: openai.ChatCompletionChunk{ID: "chatcmpl-" + randomHex(12),
		Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: req.Model}}
	return s.generate(w, r, req.Model, workerReq, a, req.Stream, includeUsage(req.StreamOptions))
}

// chatAnswer shapes a chat completion: chunks of object
// "chat.completion.chunk" as OpenAI streams them, or one "chat.completion".
// One difference remains: with include_usage, OpenAI also sends
// "usage": null in every chunk before the last; rbee leaves the field out,
// which OpenAI's SDKs read the same way.
type chatAnswer struct {
	c      openai.ChatCompletionChunk
	choice [1]openai.ChatChunkChoice
	text   string
	reason string
}

// opening is the chunk OpenAI starts every chat stream with: the role,
// and empty content.
func (a *chatAnswer) opening() any {
	a.text = ""
	a.choice[0] = openai.ChatChunkChoice{
		Delta: openai.ChatDelta{Role: "assistant", Content: &a.text}}
	a.c.Choices = a.choice[:]
	return &a.c
}

func (a *chatAnswer) delta(text string) any {
	a.text = text
	a.choice[0] = openai.ChatChunkChoice{Delta: openai.ChatDelta{Content: &a.text}}
	a.c.Choices = a.choice[:]
	return &a.c
}

func (a *chatAnswer) finish(reason string) any {
	a.reason = reason
	a.choice[0] = openai.ChatChunkChoice{FinishReason: &a.reason}
	a.c.Choices = a.choice[:]
	return &a.c
}

func (a *chatAnswer) usage(u *openai.Usage) any {
	a.c.Choices = a.choice[:0]
	a.c.Usage = u
	return &a.c
}

func (a *chatAnswer) whole(text, reason string, u *openai.Usage) any {
	return &openai.ChatCompletion{ID: a.c.ID, Object: "chat.completion", Created: a.c.Created,
		Model: a.c.Model, Usage: u, Choices: []openai.ChatChoice{{
			Message:      openai.ChatReply{Role: "assistant", Content: text},
			FinishReason: reason,
		}}}
}
