package keeper

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"
)

// textChunk is one streamed completion chunk holding text.
func textChunk(text, finish string) string {
	chunk := map[string]any{
		"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny",
		"choices": []map[string]any{{"index": 0, "text": text, "finish_reason": nilIfEmpty(finish)}},
	}
	b, _ := json.Marshal(chunk)
	return string(b)
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// usageChunk is the last chunk of a stream that asked for usage.
func usageChunk(prompt, completion int) string {
	return fmt.Sprintf(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny",`+
		`"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
		prompt, completion, prompt+completion)
}

// writeEvents writes each payload as one server-sent event and flushes.
func writeEvents(w http.ResponseWriter, payloads ...string) {
	for _, p := range payloads {
		fmt.Fprintf(w, "data: %s\n\n", p)
	}
	w.(http.Flusher).Flush()
}

const statsPattern = `^3 prompt \+ 4 completion tokens, [0-9.]+ tok/s, finish: stop\n$`

func TestInferStreams(t *testing.T) {
	stdout := &firstWriteWriter{}
	firstSeen := make(chan struct{})
	stdout.onFirst = func() { close(firstSeen) }

	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			writeEvents(w, textChunk("Once", ""))

			// The rest comes only once the first piece is on stdout: the
			// keeper must print as it reads, not at the end.
			select {
			case <-firstSeen:
			case <-time.After(10 * time.Second):
				writeEvents(w, `{"error":{"message":"first chunk not printed","type":"test"}}`)
				return
			}
			writeEvents(w, textChunk(" upon", ""))
			fmt.Fprint(w, ": keep-alive comment\n\n")
			writeEvents(w, textChunk(" a", ""), textChunk(" time", "stop"), usageChunk(3, 4), "[DONE]")
		},
	})

	var stderr strings.Builder
	code := Main([]string{"infer", "-m", "tiny", "--queen-url", srv.URL, "Tell", "a", "story"},
		strings.NewReader(""), stdout, &stderr)
	assert.Equal(t, code, exitOK, stderr.String())
	assert.Equal(t, stdout.String(), "Once upon a time\n")
	assert.Assert(t, cmp.Regexp(statsPattern, stderr.String()))
}

func TestInferRequest(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  map[string]any
	}{
		{
			name: "defaults",
			args: []string{"hello", "world"},
			want: map[string]any{
				"model": "tiny", "prompt": "hello world", "max_tokens": 128.0, "stream": true,
				"stream_options": map[string]any{"include_usage": true},
			},
		},
		{
			name: "sampling flags",
			args: []string{"--max-tokens", "5", "--temperature", "0", "--top-p", "0.9",
				"--top-k", "40", "--seed", "7", "--stop", "a,b", "--stop", "\n", "hi"},
			want: map[string]any{
				"model": "tiny", "prompt": "hi", "max_tokens": 5.0, "stream": true,
				"stream_options": map[string]any{"include_usage": true},
				"temperature":    0.0, "top_p": 0.9, "top_k": 40.0, "seed": 7.0,
				"stop": []any{"a,b", "\n"},
			},
		},
		{
			name:  "prompt from stdin",
			stdin: "from a pipe\n",
			want: map[string]any{
				"model": "tiny", "prompt": "from a pipe\n", "max_tokens": 128.0, "stream": true,
				"stream_options": map[string]any{"include_usage": true},
			},
		},
		{
			name:  "dash reads stdin",
			args:  []string{"-"},
			stdin: "dash",
			want: map[string]any{
				"model": "tiny", "prompt": "dash", "max_tokens": 128.0, "stream": true,
				"stream_options": map[string]any{"include_usage": true},
			},
		},
		{
			name: "no stream",
			args: []string{"--no-stream", "hi"},
			want: map[string]any{
				"model": "tiny", "prompt": "hi", "max_tokens": 128.0, "stream": false,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got recorder[map[string]any]
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
					var body map[string]any
					if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
						replyError(w, http.StatusBadRequest, err.Error())
						return
					}
					got.add(body)
					if body["stream"] == false {
						reply(w, http.StatusOK, json.RawMessage(`{"choices":[{"text":"x"}]}`))
						return
					}
					writeEvents(w, textChunk("x", "stop"), "[DONE]")
				},
			})
			args := append([]string{"infer", "-m", "tiny", "--queen-url", srv.URL}, tc.args...)
			res := runKeeper(t, tc.stdin, args...)
			assert.Equal(t, res.code, exitOK, res.stderr)
			assert.DeepEqual(t, got.all(), []map[string]any{tc.want})
		})
	}
}

func TestInferErrors(t *testing.T) {
	tests := []struct {
		name       string
		events     []string
		status     int // when set, an error answer instead of a stream
		wantStdout string
		wantStderr string
	}{
		{
			name: "error event mid-stream",
			events: []string{textChunk("Hel", ""),
				`{"error":{"message":"worker w-1 was lost","type":"server_error"}}`, "[DONE]"},
			wantStdout: "Hel\n",
			wantStderr: "rbee: worker w-1 was lost\n",
		},
		{
			name:       "stream cut short",
			events:     []string{textChunk("Hel", "")},
			wantStdout: "Hel\n",
			wantStderr: "rbee: the answer stream ended early: the queen or the worker went away\n",
		},
		{
			name:       "bad event",
			events:     []string{"{not json"},
			wantStdout: "\n",
			wantStderr: `rbee: reading the answer stream: bad event "{not json"`,
		},
		{
			name:       "no worker for the model",
			status:     http.StatusNotFound,
			wantStderr: "rbee: no ready worker serves model \"tiny\"\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"POST /v1/completions": func(w http.ResponseWriter, _ *http.Request) {
					if tc.status != 0 {
						replyError(w, tc.status, `no ready worker serves model "tiny"`)
						return
					}
					w.Header().Set("Content-Type", "text/event-stream")
					writeEvents(w, tc.events...)
				},
			})
			res := runKeeper(t, "", "infer", "-m", "tiny", "--queen-url", srv.URL, "hi")
			assert.Equal(t, res.code, exitError)
			assert.Equal(t, res.stdout, tc.wantStdout)
			assert.Assert(t, cmp.Contains(res.stderr, tc.wantStderr))
		})
	}
}

func TestInferNoStream(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, json.RawMessage(`{"id":"cmpl-1","object":"text_completion",`+
				`"choices":[{"index":0,"text":"Once upon a time","finish_reason":"stop"}],`+
				`"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`))
		},
	})
	res := runKeeper(t, "", "infer", "--no-stream", "-m", "tiny", "--queen-url", srv.URL, "hi")
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Equal(t, res.stdout, "Once upon a time\n")
	assert.Assert(t, cmp.Regexp(statsPattern, res.stderr))
}

func TestReadStream(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantText   string
		wantFinish string
		wantErr    string
	}{
		{
			name: "crlf line endings and no space after the colon",
			body: "data:" + textChunk("a", "") + "\r\n\r\n" +
				"data: " + textChunk("b", "length") + "\r\n\r\n" +
				"data: [DONE]\r\n\r\n",
			wantText:   "ab",
			wantFinish: "length",
		},
		{
			name:       "event and id lines ignored",
			body:       "event: completion\nid: 1\ndata: " + textChunk("a", "stop") + "\n\ndata: [DONE]\n\n",
			wantText:   "a",
			wantFinish: "stop",
		},
		{
			name:       "finished without done",
			body:       "data: " + textChunk("a", "stop") + "\n\n",
			wantText:   "a",
			wantFinish: "stop",
		},
		{
			name:     "event cut off by the end of the body",
			body:     "data: " + textChunk("a", "") + "\n\ndata: " + textChunk("b", "stop"),
			wantText: "a",
			wantErr:  "the answer stream ended early",
		},
		{
			name:    "empty body",
			wantErr: "the answer stream ended early",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			res, err := readStream(strings.NewReader(tc.body), &out)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
			} else {
				assert.NilError(t, err)
			}
			assert.Equal(t, out.String(), tc.wantText)
			assert.Equal(t, res.finish, tc.wantFinish)
		})
	}
}
