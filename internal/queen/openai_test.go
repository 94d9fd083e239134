package queen

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// events reads a whole SSE answer: each event's JSON, and whether it ended
// with [DONE] (after which nothing may follow).
func events(t *testing.T, resp *http.Response) (chunks []map[string]any, sawDone bool) {
	t.Helper()
	assert.Equal(t, resp.Header.Get("Content-Type"), "text/event-stream")
	reader := httpapi.NewSSEReader(resp.Body)
	for {
		data, done, err := reader.Next()
		if done {
			_, _, err := reader.Next()
			assert.ErrorIs(t, err, io.EOF, "an event after [DONE]")
			return chunks, true
		}
		if err != nil {
			assert.ErrorIs(t, err, io.EOF)
			return chunks, false
		}
		var chunk map[string]any
		assert.NilError(t, json.Unmarshal(data, &chunk), string(data))
		chunks = append(chunks, chunk)
	}
}

// jsonObject parses a JSON object written in a test.
func jsonObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	assert.NilError(t, json.Unmarshal([]byte(s), &v), s)
	return v
}

// stripIdentity checks and removes the fields that differ per answer (id,
// created), so the rest can be compared exactly. Every chunk of one
// answer shares one id.
func stripIdentity(t *testing.T, idPrefix string, chunks ...map[string]any) {
	t.Helper()
	id, _ := chunks[0]["id"].(string)
	assert.Assert(t, strings.HasPrefix(id, idPrefix), "id %q", id)
	for _, c := range chunks {
		assert.Equal(t, c["id"], id)
		created, _ := c["created"].(float64)
		assert.Assert(t, created > 0, "created %v", c["created"])
		delete(c, "id")
		delete(c, "created")
	}
}

func TestStreamChunks(t *testing.T) {
	const (
		chatChunk  = `{"object":"chat.completion.chunk","model":"tiny","choices":[{"index":0,`
		textChunk  = `{"object":"text_completion","model":"tiny","choices":[{"index":0,`
		chatUsage  = `{"object":"chat.completion.chunk","model":"tiny","choices":[],`
		textUsage  = `{"object":"text_completion","model":"tiny","choices":[],`
		usageField = `"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`
	)
	chatBody := `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true`
	textBody := `{"model":"tiny","prompt":"hi","stream":true`
	tests := []struct {
		name     string
		path     string
		body     string
		idPrefix string
		want     []string
	}{
		{
			name: "chat", path: "/v1/chat/completions", body: chatBody + `}`, idPrefix: "chatcmpl-",
			want: []string{
				chatChunk + `"delta":{"role":"assistant","content":""},` +
					`"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{},"logprobs":null,"finish_reason":"length"}]}`,
			},
		},
		{
			name: "chat with usage", path: "/v1/chat/completions", idPrefix: "chatcmpl-",
			body: chatBody + `,"stream_options":{"include_usage":true}}`,
			want: []string{
				chatChunk + `"delta":{"role":"assistant","content":""},` +
					`"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`,
				chatChunk + `"delta":{},"logprobs":null,"finish_reason":"length"}]}`,
				chatUsage + usageField,
			},
		},
		{
			name: "completion", path: "/v1/completions", body: textBody + `}`, idPrefix: "cmpl-",
			want: []string{
				textChunk + `"text":"Hello","logprobs":null,"finish_reason":null}]}`,
				textChunk + `"text":" world","logprobs":null,"finish_reason":null}]}`,
				textChunk + `"text":"","logprobs":null,"finish_reason":"length"}]}`,
			},
		},
		{
			name: "completion with usage", path: "/v1/completions", idPrefix: "cmpl-",
			body: textBody + `,"stream_options":{"include_usage":true}}`,
			want: []string{
				textChunk + `"text":"Hello","logprobs":null,"finish_reason":null}]}`,
				textChunk + `"text":" world","logprobs":null,"finish_reason":null}]}`,
				textChunk + `"text":"","logprobs":null,"finish_reason":"length"}]}`,
				textUsage + usageField,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			w := newStubWorker(t, "w-1", helloWorld(api.FinishLength), nil)
			addWorker(s, "w-1", w.URL, 1)

			resp := post(t, ts, tc.path, tc.body)

			assert.Equal(t, resp.StatusCode, http.StatusOK)
			chunks, done := events(t, resp)
			assert.Assert(t, done, "the stream must end with [DONE]")
			assert.Equal(t, len(chunks), len(tc.want))
			stripIdentity(t, tc.idPrefix, chunks...)
			for i, want := range tc.want {
				assert.DeepEqual(t, chunks[i], jsonObject(t, want))
			}
			assert.Equal(t, s.router.busy("w-1"), 0)
		})
	}
}

func TestWholeAnswers(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		body     string
		idPrefix string
		want     string
	}{
		{
			name: "chat", path: "/v1/chat/completions", idPrefix: "chatcmpl-",
			body: `{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`,
			want: `{"object":"chat.completion","model":"tiny","choices":[{"index":0,` +
				`"message":{"role":"assistant","content":"Hello world"},"logprobs":null,` +
				`"finish_reason":"stop"}],` +
				`"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`,
		},
		{
			name: "completion", path: "/v1/completions", idPrefix: "cmpl-",
			body: `{"model":"tiny","prompt":"hi","stream":false}`,
			want: `{"object":"text_completion","model":"tiny","choices":[{"index":0,` +
				`"text":"Hello world","logprobs":null,"finish_reason":"stop"}],` +
				`"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			w := newStubWorker(t, "w-1", helloWorld(api.FinishStop), nil)
			addWorker(s, "w-1", w.URL, 1)

			status, body := readAll(t, post(t, ts, tc.path, tc.body))

			assert.Equal(t, status, http.StatusOK, string(body))
			got := jsonObject(t, string(body))
			stripIdentity(t, tc.idPrefix, got)
			assert.DeepEqual(t, got, jsonObject(t, tc.want))
		})
	}
}

func TestChatRequestReachesTheWorker(t *testing.T) {
	s, ts := newTestServer(t)
	w := newStubWorker(t, "w-1", streamTokens([]string{"ok"}, api.FinishStop), nil)
	addWorker(s, "w-1", w.URL, 1)

	status, body := readAll(t, post(t, ts, "/v1/chat/completions", `{"model":"tiny",
		"messages":[{"role":"system","content":"Be brief."},
			{"role":"user","content":[{"type":"text","text":"Hello"},
				{"type":"text","text":"there"}]},
			{"role":"assistant","content":"Hi."},{"role":"developer","content":"Rhyme."}],
		"max_tokens":99,"max_completion_tokens":7,"temperature":0,"top_p":0.5,"top_k":3,
		"seed":42,"stop":["\n\n","END"]}`))

	assert.Equal(t, status, http.StatusOK, string(body))
	temp, topP, topK, seed := float32(0), float32(0.5), 3, uint32(42)
	assert.DeepEqual(t, w.lastRequest(), api.CompletionRequest{
		Messages: []api.ChatMessage{
			{Role: "system", Content: "Be brief."},
			{Role: "user", Content: "Hello\nthere"},
			{Role: "assistant", Content: "Hi."},
			{Role: "system", Content: "Rhyme."},
		},
		MaxTokens: 7, Temperature: &temp, TopP: &topP, TopK: &topK, Seed: &seed,
		Stop: []string{"\n\n", "END"}, Stream: true,
	})
}

func TestBadRequestsNameTheField(t *testing.T) {
	const (
		chat  = "/v1/chat/completions"
		text  = "/v1/completions"
		embed = "/v1/embeddings"
	)
	// Bodies: a good chat or completion request with extra fields, a chat
	// with the messages given, an embeddings request with the fields given.
	chatWith := func(extra string) string {
		return `{"model":"tiny","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	textWith := func(extra string) string { return `{"model":"tiny","prompt":"hi"` + extra + `}` }
	chatOf := func(messages string) string { return `{"model":"tiny","messages":` + messages + `}` }
	embedOf := func(fields string) string { return `{"model":"tiny"` + fields + `}` }
	tests := []struct {
		name      string
		path      string
		body      string
		wantParam string
		wantInMsg string
	}{
		{name: "chat without model", path: chat,
			body: `{"messages":[{"role":"user","content":"hi"}]}`, wantParam: "model"},
		{name: "chat without messages", path: chat, body: `{"model":"tiny"}`,
			wantParam: "messages"},
		{name: "chat with no messages", path: chat, body: chatOf(`[]`), wantParam: "messages"},
		{name: "messages not a list", path: chat, body: chatOf(`"hi"`), wantParam: "messages"},
		{name: "unknown role", path: chat,
			body:      chatOf(`[{"role":"user","content":"a"},{"role":"tool","content":"b"}]`),
			wantParam: "messages[1].role", wantInMsg: `"tool"`},
		{name: "missing role", path: chat, body: chatOf(`[{"content":"b"}]`),
			wantParam: "messages[0].role"},
		{name: "missing content", path: chat, body: chatOf(`[{"role":"user"}]`),
			wantParam: "messages[0].content", wantInMsg: "required"},
		{name: "null content", path: chat, body: chatOf(`[{"role":"assistant","content":null}]`),
			wantParam: "messages[0].content"},
		{name: "content a number", path: chat, body: chatOf(`[{"role":"user","content":3}]`),
			wantParam: "messages[0].content"},
		{name: "image content part", path: chat,
			body: chatOf(`[{"role":"user","content":[{"type":"text","text":"a"},` +
				`{"type":"image_url","image_url":{"url":"x"}}]}]`),
			wantParam: "messages[0].content[1]", wantInMsg: "image_url"},
		{name: "malformed content part", path: chat,
			body:      chatOf(`[{"role":"user","content":["a"]}]`),
			wantParam: "messages[0].content[0]"},
		{name: "zero max_tokens", path: chat, body: chatWith(`,"max_tokens":0`),
			wantParam: "max_tokens"},
		{name: "negative max_completion_tokens", path: chat,
			body: chatWith(`,"max_completion_tokens":-1`), wantParam: "max_completion_tokens"},
		{name: "bad max_tokens beside a good max_completion_tokens", path: chat,
			body: chatWith(`,"max_tokens":0,"max_completion_tokens":5`), wantParam: "max_tokens"},
		{name: "max_tokens not a number", path: chat, body: chatWith(`,"max_tokens":"5"`),
			wantParam: "max_tokens"},
		{name: "n of two", path: chat, body: chatWith(`,"n":2`), wantParam: "n"},
		{name: "n of zero", path: text, body: textWith(`,"n":0`), wantParam: "n"},
		{name: "temperature too high", path: chat, body: chatWith(`,"temperature":2.5`),
			wantParam: "temperature"},
		{name: "negative temperature", path: text, body: textWith(`,"temperature":-1`),
			wantParam: "temperature"},
		{name: "top_p of zero", path: chat, body: chatWith(`,"top_p":0`), wantParam: "top_p"},
		{name: "negative top_k", path: chat, body: chatWith(`,"top_k":-1`), wantParam: "top_k"},
		{name: "negative seed", path: chat, body: chatWith(`,"seed":-1`), wantParam: "seed"},
		{name: "seed too large", path: text, body: textWith(`,"seed":4294967295`),
			wantParam: "seed"},
		{name: "stop a number", path: chat, body: chatWith(`,"stop":5`), wantParam: "stop"},
		{name: "empty stop string", path: text, body: textWith(`,"stop":["a",""]`),
			wantParam: "stop"},
		{name: "stream not a bool", path: chat, body: chatWith(`,"stream":"yes"`),
			wantParam: "stream"},
		{name: "completion without prompt", path: text, body: `{"model":"tiny"}`,
			wantParam: "prompt"},
		{name: "completion with prompt object", path: text, body: `{"model":"tiny","prompt":{}}`,
			wantParam: "prompt"},
		{name: "completion with zero max_tokens", path: text, body: textWith(`,"max_tokens":0`),
			wantParam: "max_tokens"},
		{name: "embeddings without model", path: embed, body: `{"input":"hi"}`, wantParam: "model"},
		{name: "embeddings without input", path: embed, body: embedOf(``), wantParam: "input"},
		{name: "embeddings with empty list", path: embed, body: embedOf(`,"input":[]`),
			wantParam: "input"},
		{name: "embeddings with empty string", path: embed, body: embedOf(`,"input":["a",""]`),
			wantParam: "input"},
		{name: "embeddings of tokens", path: embed, body: embedOf(`,"input":[1,2,3]`),
			wantParam: "input", wantInMsg: "token arrays"},
		{name: "embeddings as base64", path: embed,
			body:      embedOf(`,"input":"hi","encoding_format":"base64"`),
			wantParam: "encoding_format", wantInMsg: "base64"},
		{name: "embeddings with dimensions", path: embed,
			body:      embedOf(`,"input":"hi","dimensions":8`),
			wantParam: "dimensions"},
	}
	s, ts := newTestServer(t)
	w := newStubWorker(t, "w-1", streamTokens([]string{"ok"}, api.FinishStop),
		func(w http.ResponseWriter, _ *http.Request) {
			httpapi.WriteJSON(w, http.StatusOK, api.EmbeddingResponse{Embeddings: [][]float32{{1}}})
		})
	addWorker(s, "w-1", w.URL, 1)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := readAll(t, post(t, ts, tc.path, tc.body))

			assert.Equal(t, status, http.StatusBadRequest, string(body))
			var e api.ErrorBody
			assert.NilError(t, json.Unmarshal(body, &e))
			assert.Equal(t, e.Error.Param, tc.wantParam, e.Error.Message)
			assert.Equal(t, e.Error.Type, "invalid_request_error")
			assert.Assert(t, is.Contains(e.Error.Message, tc.wantParam))
			assert.Assert(t, is.Contains(e.Error.Message, tc.wantInMsg))
		})
	}
	assert.Equal(t, w.calls.Load(), int32(0), "a bad request must never reach a worker")
}

func TestRetryBeforeFirstByte(t *testing.T) {
	tests := []struct {
		name string
		// first returns the URL of the worker tried first (w-a), and how
		// many requests it received.
		first     func(t *testing.T) (url string, calls func() int32)
		wantCalls int32
	}{
		{
			name: "connection refused",
			first: func(t *testing.T) (string, func() int32) {
				return refusedURL(t), func() int32 { return 0 }
			},
		},
		{name: "connection reset", first: stubURL("w-a", resetBeforeAnswer), wantCalls: 1},
		{name: "internal server error", wantCalls: 1,
			first: stubURL("w-a", failWith(http.StatusInternalServerError))},
		{name: "unavailable", wantCalls: 1,
			first: stubURL("w-a", failWith(http.StatusServiceUnavailable))},
	}
	for _, tc := range tests {
		for _, stream := range []bool{false, true} {
			name := tc.name + map[bool]string{false: ", whole", true: ", streamed"}[stream]
			t.Run(name, func(t *testing.T) {
				s, ts := newTestServer(t)
				failingURL, failingCalls := tc.first(t)
				good := newStubWorker(t, "w-b", helloWorld(api.FinishStop), nil)
				addWorker(s, "w-a", failingURL, 1) // ties go to the lowest id: w-a first
				addWorker(s, "w-b", good.URL, 1)

				resp := post(t, ts, "/v1/chat/completions", `{"model":"tiny",`+
					`"messages":[{"role":"user","content":"hi"}],"stream":`+jsonBool(stream)+`}`)

				assert.Equal(t, resp.StatusCode, http.StatusOK)
				assert.Equal(t, chatText(t, resp, stream), "Hello world")
				assert.Equal(t, failingCalls(), tc.wantCalls)
				assert.Equal(t, good.calls.Load(), int32(1))
				assert.Equal(t, s.router.busy("w-a"), 0)
				assert.Equal(t, s.router.busy("w-b"), 0)
			})
		}
	}
}

// stubURL starts a stub worker for a table of first workers.
func stubURL(id string, b stubBehaviour) func(t *testing.T) (string, func() int32) {
	return func(t *testing.T) (string, func() int32) {
		w := newStubWorker(t, id, b, nil)
		return w.URL, w.calls.Load
	}
}

func jsonBool(b bool) string { return map[bool]string{false: "false", true: "true"}[b] }

// chatText is the assistant's text of a chat answer, streamed or whole.
func chatText(t *testing.T, resp *http.Response, stream bool) string {
	t.Helper()
	if !stream {
		var c struct {
			Choices []struct{ Message struct{ Content string } }
		}
		assert.NilError(t, json.NewDecoder(resp.Body).Decode(&c))
		assert.Equal(t, len(c.Choices), 1)
		return c.Choices[0].Message.Content
	}
	chunks, done := events(t, resp)
	assert.Assert(t, done)
	var text strings.Builder
	for _, c := range chunks {
		assert.Assert(t, c["error"] == nil, "error event %v", c["error"])
		for _, choice := range c["choices"].([]any) {
			delta := choice.(map[string]any)["delta"].(map[string]any)
			if s, ok := delta["content"].(string); ok {
				text.WriteString(s)
			}
		}
	}
	return text.String()
}

func TestNoRetry(t *testing.T) {
	tests := []struct {
		name       string
		first      stubBehaviour
		second     bool // a second, healthy worker exists
		wantStatus int
		wantCode   string
	}{
		{name: "the request was at fault", first: failWith(http.StatusBadRequest), second: true,
			wantStatus: http.StatusBadRequest, wantCode: "stub"},
		{name: "no other worker", first: failWith(http.StatusInternalServerError),
			wantStatus: http.StatusBadGateway, wantCode: "upstream_error"},
		{name: "no other worker, reset", first: resetBeforeAnswer,
			wantStatus: http.StatusBadGateway, wantCode: "upstream_error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			failing := newStubWorker(t, "w-a", tc.first, nil)
			addWorker(s, "w-a", failing.URL, 1)
			good := newStubWorker(t, "w-b", streamTokens([]string{"ok"}, api.FinishStop), nil)
			if tc.second {
				addWorker(s, "w-b", good.URL, 1)
			}

			resp := post(t, ts, "/v1/completions", `{"model":"tiny","prompt":"hi"}`)
			status, body := readAll(t, resp)

			assert.Equal(t, status, tc.wantStatus, string(body))
			var e api.ErrorBody
			assert.NilError(t, json.Unmarshal(body, &e))
			assert.Equal(t, e.Error.Code, tc.wantCode)
			assert.Equal(t, failing.calls.Load(), int32(1))
			assert.Equal(t, good.calls.Load(), int32(0))
			assert.Equal(t, s.router.busy("w-a"), 0)
		})
	}
}

func TestFailureAfterFirstByte(t *testing.T) {
	tests := []struct {
		name string
		path string
		body string
	}{
		{name: "chat", path: "/v1/chat/completions",
			body: `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true}`},
		{name: "completion", path: "/v1/completions",
			body: `{"model":"tiny","prompt":"hi","stream":true}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			dying := newStubWorker(t, "w-a", dieAfter("Hello", " wor"), nil)
			other := newStubWorker(t, "w-b", helloWorld(api.FinishStop), nil)
			addWorker(s, "w-a", dying.URL, 1)
			addWorker(s, "w-b", other.URL, 1)

			resp := post(t, ts, tc.path, tc.body)

			assert.Equal(t, resp.StatusCode, http.StatusOK)
			chunks, done := events(t, resp)
			assert.Assert(t, done, "the stream must still end with [DONE]")
			last := chunks[len(chunks)-1]
			errObj, ok := last["error"].(map[string]any)
			assert.Assert(t, ok, "the last event must be an error: %v", last)
			assert.Equal(t, errObj["code"], "upstream_error")
			var text strings.Builder
			for _, c := range chunks[:len(chunks)-1] {
				for _, choice := range c["choices"].([]any) {
					ch := choice.(map[string]any)
					assert.Assert(t, ch["finish_reason"] == nil,
						"a failed stream has no finish reason")
					if s, ok := ch["text"].(string); ok {
						text.WriteString(s)
					}
					if d, ok := ch["delta"].(map[string]any); ok && d["content"] != nil {
						text.WriteString(d["content"].(string))
					}
				}
			}
			assert.Equal(t, text.String(), "Hello wor", "tokens are neither lost nor repeated")
			assert.Equal(t, other.calls.Load(), int32(0), "a stream that started is never retried")
			assert.Equal(t, s.router.busy("w-a"), 0)
		})
	}
}

func TestWholeAnswerFailsMidway(t *testing.T) {
	s, ts := newTestServer(t)
	dying := newStubWorker(t, "w-a", dieAfter("Hello"), nil)
	other := newStubWorker(t, "w-b", streamTokens([]string{"Hello"}, api.FinishStop), nil)
	addWorker(s, "w-a", dying.URL, 1)
	addWorker(s, "w-b", other.URL, 1)

	status, body := readAll(t, post(t, ts, "/v1/chat/completions",
		`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`))

	assert.Equal(t, status, http.StatusBadGateway, string(body))
	assert.Equal(t, other.calls.Load(), int32(0))
}

func TestEmbeddings(t *testing.T) {
	tests := []struct {
		name   string
		input  string
		inputs []string // what the worker must be sent
		want   string
	}{
		{
			name: "one string", input: `"hello"`, inputs: []string{"hello"},
			want: `{"object":"list","model":"tiny","data":[` +
				`{"object":"embedding","index":0,"embedding":[0.5,0.25]}],` +
				`"usage":{"prompt_tokens":3,"total_tokens":3}}`,
		},
		{
			name: "a list", input: `["hello","world"]`, inputs: []string{"hello", "world"},
			want: `{"object":"list","model":"tiny","data":[` +
				`{"object":"embedding","index":0,"embedding":[0.5,0.25]},` +
				`{"object":"embedding","index":1,"embedding":[1,0]}],` +
				`"usage":{"prompt_tokens":3,"total_tokens":3}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			received := make(chan api.EmbeddingRequest, 1)
			w := newStubWorker(t, "w-1", nil, func(w http.ResponseWriter, r *http.Request) {
				var got api.EmbeddingRequest
				assert.Check(t, r.Header.Get("Authorization") == "Bearer token-w-1")
				assert.Check(t, json.NewDecoder(r.Body).Decode(&got))
				received <- got
				vecs := [][]float32{{0.5, 0.25}, {1, 0}}[:len(got.Input)]
				httpapi.WriteJSON(w, http.StatusOK,
					api.EmbeddingResponse{Embeddings: vecs, PromptTokens: 3})
			})
			addWorker(s, "w-1", w.URL, 1)

			status, body := readAll(t, post(t, ts, "/v1/embeddings",
				`{"model":"tiny","input":`+tc.input+`,"encoding_format":"float"}`))

			assert.Equal(t, status, http.StatusOK, string(body))
			assert.DeepEqual(t, jsonObject(t, string(body)), jsonObject(t, tc.want))
			assert.DeepEqual(t, (<-received).Input, tc.inputs)
			assert.Equal(t, s.router.busy("w-1"), 0)
		})
	}
}

func TestEmbeddingsUnsupported(t *testing.T) {
	s, ts := newTestServer(t)
	w := newStubWorker(t, "w-1", nil, func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteError(w, &httpapi.Error{Status: http.StatusBadRequest,
			Type: "invalid_request_error", Code: "embeddings_unsupported",
			Message: "model tiny cannot make embeddings"})
	})
	addWorker(s, "w-1", w.URL, 1)

	status, body := readAll(t, post(t, ts, "/v1/embeddings", `{"model":"tiny","input":"hi"}`))

	assert.Equal(t, status, http.StatusBadRequest, string(body))
	var e api.ErrorBody
	assert.NilError(t, json.Unmarshal(body, &e))
	assert.Equal(t, e.Error.Code, "embeddings_unsupported")
}

func TestBusyQueueAnswers(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(r *router)
		wantStatus int
		wantCode   string
	}{
		{name: "queue full", setup: func(r *router) { r.queueLimit = 0 },
			wantStatus: http.StatusTooManyRequests, wantCode: "queue_full"},
		{name: "queue wait passes", setup: func(r *router) { r.queueWait = 20 * time.Millisecond },
			wantStatus: http.StatusGatewayTimeout, wantCode: "queue_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			release := make(chan struct{})
			w := newStubWorker(t, "w-1", holdAfterFirst(release, nil), nil)
			addWorker(s, "w-1", w.URL, 1)
			tc.setup(s.router)
			held := post(t, ts, "/v1/completions", `{"model":"tiny","prompt":"hi","stream":true}`)
			_, _, err := httpapi.NewSSEReader(held.Body).Next() // the slot is taken
			assert.NilError(t, err)

			resp := post(t, ts, "/v1/chat/completions",
				`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`)

			close(release)
			status, body := readAll(t, resp)
			assert.Equal(t, status, tc.wantStatus, string(body))
			assert.Equal(t, resp.Header.Get("Retry-After"), "1")
			var e api.ErrorBody
			assert.NilError(t, json.Unmarshal(body, &e))
			assert.Equal(t, e.Error.Code, tc.wantCode)
		})
	}
}

func TestClientLeavingFreesTheSlot(t *testing.T) {
	s, ts := newTestServer(t)
	left := make(chan struct{})
	w := newStubWorker(t, "w-1", holdAfterFirst(make(chan struct{}), left), nil)
	addWorker(s, "w-1", w.URL, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"tiny","stream":true,`+
			`"messages":[{"role":"user","content":"hi"}]}`))
	assert.NilError(t, err)
	resp, err := ts.Client().Do(req)
	assert.NilError(t, err)
	defer resp.Body.Close()
	_, _, err = httpapi.NewSSEReader(resp.Body).Next()
	assert.NilError(t, err)
	assert.Equal(t, s.router.busy("w-1"), 1)

	cancel()

	select {
	case <-left:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker's request was not cancelled")
	}
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if n := s.router.busy("w-1"); n != 0 {
			return poll.Continue("%d slots busy", n)
		}
		return poll.Success()
	}, poll.WithDelay(time.Millisecond), poll.WithTimeout(10*time.Second))
}

func TestModelsList(t *testing.T) {
	s, ts := newTestServer(t)
	ctx := context.Background()
	workers := []struct {
		id, model string
		state     api.WorkerState
	}{
		{"w-1", "tiny", api.WorkerReady},
		{"w-2", "tiny", api.WorkerReady},
		{"w-3", "big", api.WorkerLoading},
		{"w-4", "small", api.WorkerReady},
		{"w-5", "small", api.WorkerLost},
	}
	for _, w := range workers {
		assert.NilError(t, s.store.CreateWorker(ctx, registry.Worker{Worker: api.Worker{
			ID: w.id, Hive: registry.LocalHive, Model: w.model, Slots: 1}}))
		assert.NilError(t, s.store.SetState(ctx, w.id, w.state, ""))
	}

	resp, err := ts.Client().Get(ts.URL + "/v1/models")
	assert.NilError(t, err)
	defer resp.Body.Close()
	status, body := readAll(t, resp)

	assert.Equal(t, status, http.StatusOK, string(body))
	got := jsonObject(t, string(body))
	data := got["data"].([]any)
	assert.Equal(t, len(data), 2)
	for _, m := range data {
		delete(m.(map[string]any), "created")
	}
	assert.DeepEqual(t, got, jsonObject(t, `{"object":"list","data":[
		{"id":"small","object":"model","owned_by":"rbee","replicas":1,"hives":["localhost"]},
		{"id":"tiny","object":"model","owned_by":"rbee","replicas":2,"hives":["localhost"]}]}`))

	tests := []struct {
		name, id   string
		wantStatus int
	}{
		{name: "ready", id: "tiny", wantStatus: http.StatusOK},
		{name: "only loading", id: "big", wantStatus: http.StatusNotFound},
		{name: "unknown", id: "nope", wantStatus: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ts.Client().Get(ts.URL + "/v1/models/" + tc.id)
			assert.NilError(t, err)
			defer resp.Body.Close()
			status, body := readAll(t, resp)

			assert.Equal(t, status, tc.wantStatus, string(body))
			if tc.wantStatus == http.StatusOK {
				m := jsonObject(t, string(body))
				assert.Equal(t, m["id"], tc.id)
				assert.Equal(t, m["replicas"], 2.0)
			}
		})
	}
}
