// Package openai holds the OpenAI API shapes that rbee serves on the queen
// and that the keeper sends: text completions and their streamed chunks.
// Only fields rbee reads or writes are here; unknown request fields are
// ignored, as OpenAI's clients expect.
package openai

import (
	"encoding/json"

	"github.com/rbee-dev/rbee/internal/api"
)

// CompletionRequest is the body of POST /v1/completions. Prompt and Stop
// stay raw because OpenAI allows each as a string or a list of strings;
// the queen reads them with StringOrList. TopK is an extension that
// llama.cpp-based servers accept too.
type CompletionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens,omitempty"`
	Temperature   *float64        `json:"temperature,omitempty"`
	TopP          *float64        `json:"top_p,omitempty"`
	TopK          *int            `json:"top_k,omitempty"`
	Seed          *int64          `json:"seed,omitempty"`
	Stop          json.RawMessage `json:"stop,omitempty"`
	N             *int            `json:"n,omitempty"`
	Stream        bool            `json:"stream"`
	StreamOptions *StreamOptions  `json:"stream_options,omitempty"`
}

// StreamOptions asks for extra chunks in a stream.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// Completion is a whole answer, or one chunk of a streamed one. A stream
// that fails after it started carries Error in its last chunk.
type Completion struct {
	ID      string             `json:"id,omitempty"`
	Object  string             `json:"object,omitempty"`
	Created int64              `json:"created,omitempty"`
	Model   string             `json:"model,omitempty"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
	Error   *api.ErrorDetail   `json:"error,omitempty"`
}

// CompletionChoice is one choice; rbee always returns exactly one.
type CompletionChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	FinishReason *string `json:"finish_reason"`
}

// Usage counts the tokens of a request.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Model is one entry of GET /v1/models, plus rbee's replica count.
type Model struct {
	ID       string `json:"id"`
	Object   string `json:"object"`
	Created  int64  `json:"created"`
	OwnedBy  string `json:"owned_by"`
	Replicas int    `json:"replicas"`
}

// ModelList is the body of GET /v1/models.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}

// StringOrList reads a field that OpenAI allows as a string or a list of
// strings. ok is false when raw is neither.
func StringOrList(raw json.RawMessage) (values []string, ok bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, true
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list, true
	}
	return nil, false
}
