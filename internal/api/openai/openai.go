// Package openai holds the OpenAI API shapes that rbee serves on the queen
// and that the keeper sends: text and chat completions with their streamed
// chunks, embeddings, and the model list.
// Only fields rbee reads or writes are here; unknown request fields are
// ignored, as OpenAI's clients expect.
package openai

import (
	"encoding/json"
	"strconv"
	"strings"

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
	Index        int             `json:"index"`
	Text         string          `json:"text"`
	Logprobs     json.RawMessage `json:"logprobs"` // always null
	FinishReason *string         `json:"finish_reason"`
}

// Usage counts the tokens of a request.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Model is one entry of GET /v1/models, plus rbee's fields: how many ready
// workers serve it and on which hives, sorted by name.
type Model struct {
	ID       string   `json:"id"`
	Object   string   `json:"object"`
	Created  int64    `json:"created"`
	OwnedBy  string   `json:"owned_by"`
	Replicas int      `json:"replicas"`
	Hives    []string `json:"hives"`
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

// ChatCompletionRequest is the body of POST /v1/chat/completions. It takes
// the same sampling fields as CompletionRequest; MaxCompletionTokens is
// OpenAI's newer name for MaxTokens and wins when both are set.
type ChatCompletionRequest struct {
	Model               string          `json:"model"`
	Messages            []ChatMessage   `json:"messages"`
	MaxTokens           *int            `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int            `json:"max_completion_tokens,omitempty"`
	Temperature         *float64        `json:"temperature,omitempty"`
	TopP                *float64        `json:"top_p,omitempty"`
	TopK                *int            `json:"top_k,omitempty"`
	Seed                *int64          `json:"seed,omitempty"`
	Stop                json.RawMessage `json:"stop,omitempty"`
	N                   *int            `json:"n,omitempty"`
	Stream              bool            `json:"stream"`
	StreamOptions       *StreamOptions  `json:"stream_options,omitempty"`
}

// ChatMessage is one message of a chat request. Content stays raw because
// OpenAI allows a string or a list of content parts; read it with Text.
type ChatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// ContentPart is one part of a message's content; rbee reads only parts of
// type "text".
type ContentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// TextContent is content for a ChatMessage that a client sends: s as a
// JSON string.
func TextContent(s string) json.RawMessage {
	data, _ := json.Marshal(s) // a string always encodes
	return data
}

// ContentError says what is wrong with a message's content. Part is the
// index of the offending content part, or -1 for the content as a whole;
// Problem completes a sentence whose subject is that part or content.
type ContentError struct {
	Part    int
	Problem string
}

func (e *ContentError) Error() string {
	if e.Part < 0 {
		return "content " + e.Problem
	}
	return "content part " + strconv.Itoa(e.Part) + " " + e.Problem
}

// Text returns the text of m's content: the string itself, or the text
// parts joined with newlines. Its error is a *ContentError.
func (m ChatMessage) Text() (string, error) {
	if len(m.Content) == 0 || string(m.Content) == "null" {
		return "", &ContentError{Part: -1, Problem: "is required"}
	}
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s, nil
	}
	var parts []json.RawMessage
	if json.Unmarshal(m.Content, &parts) != nil {
		return "", &ContentError{Part: -1, Problem: "must be a string or a list of content parts"}
	}
	texts := make([]string, 0, len(parts))
	for i, raw := range parts {
		var p ContentPart
		if json.Unmarshal(raw, &p) != nil {
			return "", &ContentError{Part: i, Problem: `must be {"type":"text","text":"..."}`}
		}
		if p.Type != "text" {
			return "", &ContentError{Part: i,
				Problem: "has type " + strconv.Quote(p.Type) + ": only text parts are supported"}
		}
		texts = append(texts, p.Text)
	}
	return strings.Join(texts, "\n"), nil
}

// ChatCompletion is the whole answer to a chat request without streaming.
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"` // "chat.completion"
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

// ChatChoice is the one choice of a ChatCompletion.
type ChatChoice struct {
	Index        int             `json:"index"`
	Message      ChatReply       `json:"message"`
	Logprobs     json.RawMessage `json:"logprobs"` // always null
	FinishReason string          `json:"finish_reason"`
}

// ChatReply is the assistant's message in a ChatChoice.
type ChatReply struct {
	Role    string `json:"role"` // "assistant"
	Content string `json:"content"`
}

// ChatCompletionChunk is one event of a streamed chat answer: the first
// holds the role, the next ones content, the last one finish_reason and an
// empty delta; with include_usage a final chunk with no choices carries
// Usage. A stream that fails after it started carries Error instead.
type ChatCompletionChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"` // "chat.completion.chunk"
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []ChatChunkChoice `json:"choices"`
	Usage   *Usage            `json:"usage,omitempty"`
}

// ChatChunkChoice is the one choice of a ChatCompletionChunk.
type ChatChunkChoice struct {
	Index        int             `json:"index"`
	Delta        ChatDelta       `json:"delta"`
	Logprobs     json.RawMessage `json:"logprobs"` // always null
	FinishReason *string         `json:"finish_reason"`
}

// ChatDelta is what a chunk adds to the assistant's message.
type ChatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// EmbeddingRequest is the body of POST /v1/embeddings. Input stays raw
// because OpenAI allows a string or a list of strings (and token arrays,
// which rbee refuses).
type EmbeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format,omitempty"`
	Dimensions     *int            `json:"dimensions,omitempty"`
}

// EmbeddingList is the answer to POST /v1/embeddings.
type EmbeddingList struct {
	Object string          `json:"object"` // "list"
	Data   []Embedding     `json:"data"`
	Model  string          `json:"model"`
	Usage  EmbeddingsUsage `json:"usage"`
}

// Embedding is the vector of one input, at its index in the request.
type Embedding struct {
	Object    string    `json:"object"` // "embedding"
	Index     int       `json:"index"`
	Embedding []float32 `json:"embedding"`
}

// EmbeddingsUsage counts the tokens read to make embeddings.
type EmbeddingsUsage struct {
	PromptTokens int `json:"prompt_tokens"`
	TotalTokens  int `json:"total_tokens"`
}
