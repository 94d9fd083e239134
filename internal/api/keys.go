package api

import "time"

// KeyScope says what an API key may do.
type KeyScope string

// The scopes of an API key. An inference key reaches the OpenAI routes
// (completions, chat, embeddings, models); an admin key reaches every route.
const (
	KeyScopeInference KeyScope = "inference"
	KeyScopeAdmin     KeyScope = "admin"
)

// KeyRequest is the body of POST /v1/keys.
type KeyRequest struct {
	Name  string   `json:"name"`
	Scope KeyScope `json:"scope,omitempty"` // default: inference
}

// APIKey describes a key without its secret, as GET /v1/keys lists it.
type APIKey struct {
	Name  string   `json:"name"`
	Scope KeyScope `json:"scope"`
	// Prefix is the start of the key, kept to tell keys apart; not a secret.
	Prefix     string    `json:"prefix"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// CreatedKey is the answer to POST /v1/keys: the only time the key itself
// is shown. The queen keeps its hash, never the key.
type CreatedKey struct {
	Key string `json:"key"`
	APIKey
}

// APIKeyList is the body of GET /v1/keys.
type APIKeyList struct {
	Keys []APIKey `json:"keys"`
}
