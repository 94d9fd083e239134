package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

func TestHandle(t *testing.T) {
	const secret = "dial tcp 10.0.0.7:5432: password authentication failed"
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantBody   api.ErrorDetail
		wantRetry  string // "" means no Retry-After header
		wantLevel  string // level of the log line, "" means no log line
	}{
		{
			name:       "bad request names the field",
			err:        httpapi.BadRequest("max_tokens", "max_tokens must be positive"),
			wantStatus: http.StatusBadRequest,
			wantBody: api.ErrorDetail{Message: "max_tokens must be positive",
				Type: "invalid_request_error", Param: "max_tokens"},
			wantLevel: "DEBUG",
		},
		{
			name:       "not found",
			err:        httpapi.NotFound("model_not_found", "no model %q", "tiny"),
			wantStatus: http.StatusNotFound,
			wantBody: api.ErrorDetail{Message: `no model "tiny"`,
				Type: "invalid_request_error", Code: "model_not_found"},
			wantLevel: "DEBUG",
		},
		{
			name:       "unauthorized",
			err:        httpapi.Unauthorized("missing bearer token"),
			wantStatus: http.StatusUnauthorized,
			wantBody: api.ErrorDetail{Message: "missing bearer token",
				Type: "authentication_error", Code: "invalid_api_key"},
			wantLevel: "DEBUG",
		},
		{
			name:       "unavailable rounds retry-after up",
			err:        httpapi.Unavailable(1500*time.Millisecond, "no ready worker"),
			wantStatus: http.StatusServiceUnavailable,
			wantBody: api.ErrorDetail{Message: "no ready worker",
				Type: "server_error", Code: "unavailable"},
			wantRetry: "2",
			wantLevel: "ERROR",
		},
		{
			name:       "unavailable rounds retry-after down",
			err:        httpapi.Unavailable(3400*time.Millisecond, "no ready worker"),
			wantStatus: http.StatusServiceUnavailable,
			wantBody: api.ErrorDetail{Message: "no ready worker",
				Type: "server_error", Code: "unavailable"},
			wantRetry: "3",
			wantLevel: "ERROR",
		},
		{
			name:       "unavailable retry-after is at least one second",
			err:        httpapi.Unavailable(100*time.Millisecond, "no ready worker"),
			wantStatus: http.StatusServiceUnavailable,
			wantBody: api.ErrorDetail{Message: "no ready worker",
				Type: "server_error", Code: "unavailable"},
			wantRetry: "1",
			wantLevel: "ERROR",
		},
		{
			name:       "upstream hides its cause",
			err:        httpapi.Upstream(errors.New(secret), "worker w-1 failed"),
			wantStatus: http.StatusBadGateway,
			wantBody: api.ErrorDetail{Message: "worker w-1 failed",
				Type: "server_error", Code: "upstream_error"},
			wantLevel: "ERROR",
		},
		{
			name: "wrapped api error keeps its status",
			err: fmt.Errorf("handle completions: %w",
				httpapi.BadRequest("model", "model is required")),
			wantStatus: http.StatusBadRequest,
			wantBody: api.ErrorDetail{Message: "model is required",
				Type: "invalid_request_error", Param: "model"},
			wantLevel: "DEBUG",
		},
		{
			name:       "opaque error becomes an internal error",
			err:        errors.New(secret),
			wantStatus: http.StatusInternalServerError,
			wantBody: api.ErrorDetail{Message: "internal error",
				Type: "server_error", Code: "internal_error"},
			wantLevel: "ERROR",
		},
		{
			name:       "nil error writes nothing more",
			err:        nil,
			wantStatus: http.StatusOK,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			h := httpapi.Handle(log, func(w http.ResponseWriter, r *http.Request) error {
				return tc.err
			})

			rec := httptest.NewRecorder()
			h(rec, httptest.NewRequest(http.MethodPost, "/v1/completions", nil))

			assert.Equal(t, rec.Code, tc.wantStatus)
			assert.Equal(t, rec.Header().Get("Retry-After"), tc.wantRetry)
			if tc.err == nil {
				assert.Equal(t, rec.Body.Len(), 0)
				assert.Equal(t, logs.Len(), 0)
				return
			}
			assert.Equal(t, rec.Header().Get("Content-Type"), "application/json")
			var body api.ErrorBody
			assert.NilError(t, json.Unmarshal(rec.Body.Bytes(), &body))
			assert.DeepEqual(t, body.Error, tc.wantBody)
			assert.Assert(t, !strings.Contains(rec.Body.String(), "10.0.0.7"),
				"body leaks internal detail: %s", rec.Body.String())

			// The detail the client does not see is what the log is for.
			assert.Assert(t, is.Contains(logs.String(), "level="+tc.wantLevel))
			assert.Assert(t, is.Contains(logs.String(), "status="+fmt.Sprint(tc.wantStatus)))
			assert.Assert(t, is.Contains(logs.String(), "path=/v1/completions"))
			if strings.Contains(tc.err.Error(), secret) {
				assert.Assert(t, is.Contains(logs.String(), "10.0.0.7"))
			}
		})
	}
}

func TestErrorUnwrap(t *testing.T) {
	cause := errors.New("connection refused")
	err := httpapi.Upstream(cause, "worker w-1 did not answer")

	assert.ErrorIs(t, err, cause)
	assert.Equal(t, err.Error(), "worker w-1 did not answer: connection refused")
	assert.Equal(t, httpapi.NotFound("x", "no such model").Error(), "no such model")
}

type decodeTarget struct {
	Model     string `json:"model"`
	MaxTokens int    `json:"max_tokens"`
	Sampling  struct {
		Seed int `json:"seed"`
	} `json:"sampling"`
}

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name        string
		body        io.Reader
		wantParam   string
		wantMessage string // substring of the 400's message; "" means success
	}{
		{
			name: "valid object",
			body: strings.NewReader(`{"model":"tiny","max_tokens":8,"sampling":{"seed":3}}`),
		},
		{
			name: "trailing whitespace is fine",
			body: strings.NewReader("{\"model\":\"tiny\"}\n\n\t "),
		},
		{
			name:        "empty body",
			body:        strings.NewReader(""),
			wantMessage: "request body is empty",
		},
		{
			name:        "only whitespace",
			body:        strings.NewReader(" \n\t"),
			wantMessage: "request body is empty",
		},
		{
			name:        "malformed",
			body:        strings.NewReader(`{"model": tiny}`),
			wantMessage: "request body is not valid JSON",
		},
		{
			name:        "truncated",
			body:        strings.NewReader(`{"model": "tiny"`),
			wantMessage: "request body is not valid JSON",
		},
		{
			name:        "wrong field type",
			body:        strings.NewReader(`{"model":"tiny","max_tokens":"eight"}`),
			wantParam:   "max_tokens",
			wantMessage: `field "max_tokens" must be int, not string`,
		},
		{
			name:        "wrong nested field type",
			body:        strings.NewReader(`{"sampling":{"seed":1.5}}`),
			wantParam:   "sampling.seed",
			wantMessage: `field "sampling.seed" must be int`,
		},
		{
			name:        "two values",
			body:        strings.NewReader(`{"model":"a"} {"model":"b"}`),
			wantMessage: "data after the JSON value",
		},
		{
			name:        "stray closing brace",
			body:        strings.NewReader(`{"model":"a"}}`),
			wantMessage: "data after the JSON value",
		},
		{
			name:        "over-size",
			body:        oversizeBody(),
			wantMessage: fmt.Sprintf("request body is over %d bytes", httpapi.MaxBodyBytes),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/v1/completions", tc.body)
			var v decodeTarget

			err := httpapi.DecodeJSON(r, &v)

			if tc.wantMessage == "" {
				assert.NilError(t, err)
				assert.Equal(t, v.Model, "tiny")
				return
			}
			var apiErr *httpapi.Error
			assert.Assert(t, errors.As(err, &apiErr), "got %T: %v", err, err)
			assert.Equal(t, apiErr.Status, http.StatusBadRequest)
			assert.Equal(t, apiErr.Type, "invalid_request_error")
			assert.Equal(t, apiErr.Param, tc.wantParam)
			assert.Assert(t, is.Contains(apiErr.Message, tc.wantMessage))
		})
	}
}

// oversizeBody is a JSON string value one byte longer than the limit,
// generated as it is read rather than held in memory.
func oversizeBody() io.Reader {
	return io.MultiReader(
		strings.NewReader(`{"model":"`),
		io.LimitReader(repeatByte('a'), httpapi.MaxBodyBytes+1),
		strings.NewReader(`"}`),
	)
}

// repeatByte is an endless reader of one byte.
type repeatByte byte

func (b repeatByte) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// flushRecorder notes what had been written at each flush.
type flushRecorder struct {
	*httptest.ResponseRecorder
	atFlush []string
}

func (f *flushRecorder) Flush() {
	f.ResponseRecorder.Flush()
	f.atFlush = append(f.atFlush, f.Body.String())
}

func TestSSEWriter(t *testing.T) {
	rec := &flushRecorder{ResponseRecorder: httptest.NewRecorder()}
	sse := httpapi.NewSSEWriter(rec)
	assert.Assert(t, !sse.Started())

	assert.NilError(t, sse.Event(map[string]string{"text": "hi"}))
	assert.Assert(t, sse.Started())
	assert.Assert(t, rec.Flushed)
	assert.Equal(t, rec.Code, http.StatusOK)
	assert.Equal(t, rec.Header().Get("Content-Type"), "text/event-stream")
	assert.Equal(t, rec.Header().Get("Cache-Control"), "no-cache")

	assert.NilError(t, sse.Raw([]byte(`{"text":" there"}`)))
	assert.NilError(t, sse.Done())

	const first = "data: {\"text\":\"hi\"}\n\n"
	const second = first + "data: {\"text\":\" there\"}\n\n"
	const third = second + "data: [DONE]\n\n"
	assert.DeepEqual(t, rec.atFlush, []string{first, second, third})
}

func TestSSEWriterEncodeError(t *testing.T) {
	rec := httptest.NewRecorder()
	sse := httpapi.NewSSEWriter(rec)

	err := sse.Event(func() {})

	assert.ErrorContains(t, err, "encode event")
	assert.Assert(t, !sse.Started())
	assert.Equal(t, rec.Body.Len(), 0)
	assert.Equal(t, rec.Header().Get("Content-Type"), "")
}

// plainWriter is a ResponseWriter that cannot flush.
type plainWriter struct {
	header http.Header
	body   bytes.Buffer
}

func (p *plainWriter) Header() http.Header         { return p.header }
func (p *plainWriter) Write(b []byte) (int, error) { return p.body.Write(b) }
func (p *plainWriter) WriteHeader(int)             {}

func TestSSEWriterWithoutFlusher(t *testing.T) {
	w := &plainWriter{header: http.Header{}}
	sse := httpapi.NewSSEWriter(w)

	assert.NilError(t, sse.Event(1))
	assert.NilError(t, sse.Done())

	assert.Equal(t, w.body.String(), "data: 1\n\ndata: [DONE]\n\n")
}

func TestSSEReader(t *testing.T) {
	tests := []struct {
		name     string
		stream   string
		want     []string
		wantDone bool // false means the stream ends in io.EOF
	}{
		{
			name:   "empty stream",
			stream: "",
		},
		{
			name:   "single-line events",
			stream: "data: one\n\ndata: two\n\n",
			want:   []string{"one", "two"},
		},
		{
			name:   "multi-line data joined with newlines",
			stream: "data: one\ndata: two\ndata: three\n\ndata: four\n\n",
			want:   []string{"one\ntwo\nthree", "four"},
		},
		{
			name:   "CRLF lines",
			stream: "data: one\r\ndata: two\r\n\r\ndata: three\r\n\r\n",
			want:   []string{"one\ntwo", "three"},
		},
		{
			name:   "data without a space",
			stream: "data:one\n\ndata:  two\n\n",
			want:   []string{"one", " two"},
		},
		{
			name:   "empty data line is an empty event",
			stream: "data:\n\n",
			want:   []string{""},
		},
		{
			name: "other fields and comments skipped",
			stream: ": keep-alive\n\nevent: token\nid: 7\nretry: 100\n: note\n" +
				"data: one\n\n",
			want: []string{"one"},
		},
		{
			name:   "extra blank lines between events",
			stream: "\n\n\ndata: one\n\n\n\ndata: two\n\n",
			want:   []string{"one", "two"},
		},
		{
			name:     "done",
			stream:   "data: one\n\ndata: [DONE]\n\ndata: after\n\n",
			want:     []string{"one"},
			wantDone: true,
		},
		{
			name:     "done without a space",
			stream:   "data:[DONE]\r\n\r\n",
			wantDone: true,
		},
		{
			name:   "done as one line of several is data",
			stream: "data: [DONE]\ndata: more\n\n",
			want:   []string{"[DONE]\nmore"},
		},
		{
			name:   "event cut off by EOF is dropped",
			stream: "data: one\n\ndata: two\ndata: thr",
			want:   []string{"one"},
		},
		{
			name:   "event without its blank line is dropped",
			stream: "data: one\n\ndata: two\n",
			want:   []string{"one"},
		},
		{
			name:   "done cut off by EOF is dropped",
			stream: "data: one\n\ndata: [DONE]\n",
			want:   []string{"one"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, done, err := readAll(t, httpapi.NewSSEReader(strings.NewReader(tc.stream)))

			assert.DeepEqual(t, got, tc.want)
			assert.Equal(t, done, tc.wantDone)
			if !tc.wantDone {
				assert.Equal(t, err, io.EOF)
			}
		})
	}
}

// readAll reads events until [DONE] or an error, copying each one since
// Next reuses its buffer.
func readAll(t *testing.T, r *httpapi.SSEReader) (events []string, done bool, err error) {
	t.Helper()
	for {
		data, done, err := r.Next()
		if err != nil || done {
			return events, done, err
		}
		events = append(events, string(data))
	}
}

func TestSSEReaderLineTooLong(t *testing.T) {
	stream := io.MultiReader(
		strings.NewReader("data: one\n\ndata: "),
		io.LimitReader(repeatByte('x'), httpapi.MaxBodyBytes+1),
		strings.NewReader("\n\ndata: never\n\n"),
	)
	r := httpapi.NewSSEReader(stream)

	data, done, err := r.Next()
	assert.NilError(t, err)
	assert.Assert(t, !done)
	assert.Equal(t, string(data), "one")

	_, done, err = r.Next()
	assert.ErrorIs(t, err, bufio.ErrTooLong)
	assert.Assert(t, !done)
}

func TestSSERoundTrip(t *testing.T) {
	type chunk struct {
		Text  string `json:"text"`
		Index int    `json:"index"`
	}
	sent := []chunk{
		{Text: "Hello", Index: 0},
		{Text: ",\nworld", Index: 1},
		{Text: "data: [DONE]\r\n\r\n", Index: 2},
		{Text: "", Index: 3},
	}
	rec := httptest.NewRecorder()
	sse := httpapi.NewSSEWriter(rec)
	for _, c := range sent {
		assert.NilError(t, sse.Event(c))
	}
	assert.NilError(t, sse.Done())

	r := httpapi.NewSSEReader(rec.Body)
	var got []chunk
	for {
		data, done, err := r.Next()
		assert.NilError(t, err)
		if done {
			break
		}
		var c chunk
		assert.NilError(t, json.Unmarshal(data, &c))
		got = append(got, c)
	}
	assert.DeepEqual(t, got, sent)

	_, _, err := r.Next()
	assert.Equal(t, err, io.EOF)
}
