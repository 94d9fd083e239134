package api

// CompletionRequest is the body of the worker's POST /v1/completion.
// Pointer fields distinguish "not set" (use the default) from zero.
// Exactly one of Prompt and Messages is set: with Messages, the worker
// renders them through the model's own chat template (from its GGUF), or a
// plain fallback for models without one (see ChatFallbackTemplate).
type CompletionRequest struct {
	Prompt      string        `json:"prompt,omitempty"`
	Messages    []ChatMessage `json:"messages,omitempty"`
	MaxTokens   int           `json:"max_tokens"`
	Temperature *float32      `json:"temperature,omitempty"`
	TopP        *float32      `json:"top_p,omitempty"`
	TopK        *int          `json:"top_k,omitempty"`
	Seed        *uint32       `json:"seed,omitempty"`
	Stop        []string      `json:"stop,omitempty"`
	Stream      bool          `json:"stream"`
}

// Finish reasons, as OpenAI names them.
const (
	FinishStop   = "stop"   // end of sequence or a stop string
	FinishLength = "length" // max_tokens or the context limit
)

// CompletionEvent is one Server-Sent Event of a streaming completion: a
// token (Text set), or the final event (Done set, with counts and timing).
// A non-streaming completion answers with one final event holding all text.
type CompletionEvent struct {
	Text             string  `json:"text,omitempty"`
	Done             bool    `json:"done,omitempty"`
	FinishReason     string  `json:"finish_reason,omitempty"`
	PromptTokens     int     `json:"prompt_tokens,omitempty"`
	CompletionTokens int     `json:"completion_tokens,omitempty"`
	PromptMS         float64 `json:"prompt_ms,omitempty"`
	GenerationMS     float64 `json:"generation_ms,omitempty"`
	// Error ends a stream that failed after it started.
	Error string `json:"error,omitempty"`
}

// WorkerHealth is the body of the worker's GET /health.
type WorkerHealth struct {
	Status     WorkerState `json:"status"`
	Model      string      `json:"model"`
	SlotsTotal int         `json:"slots_total"`
	SlotsBusy  int         `json:"slots_busy"`
	// Requests that ended, well or not (cancelled by the client, failed).
	RequestsServed int64  `json:"requests_served"`
	RequestsFailed int64  `json:"requests_failed"`
	Error          string `json:"error,omitempty"`
}

// ChatMessage is one turn of a chat.
type ChatMessage struct {
	Role    string `json:"role"` // system, user or assistant
	Content string `json:"content"`
}

// ChatFallbackTemplate describes how a worker renders messages for a model
// whose GGUF has no chat template: each message as "role: content" on its
// own line, then "assistant:" for the model to continue.
const ChatFallbackTemplate = "role: content lines, then \"assistant:\""

// EmbeddingRequest is the body of the worker's POST /v1/embedding.
type EmbeddingRequest struct {
	Input []string `json:"input"`
}

// EmbeddingResponse holds one vector per input, in order.
type EmbeddingResponse struct {
	Embeddings   [][]float32 `json:"embeddings"`
	PromptTokens int         `json:"prompt_tokens"`
}
