package keeper

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/version"
)

// result is what one run of the keeper left behind.
type result struct {
	code           int
	stdout, stderr string
}

// runKeeper runs the keeper with args and stdin, as the binary would.
func runKeeper(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, strings.NewReader(stdin), &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// fakeQueen starts an HTTP server that plays the queen with the given
// routes (http.ServeMux patterns such as "GET /v1/workers/{id}").
func fakeQueen(t *testing.T, routes map[string]http.HandlerFunc) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.HandleFunc(pattern, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// reply writes v as a JSON answer with status.
func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// replyError writes an api.ErrorBody.
func replyError(w http.ResponseWriter, status int, msg string) {
	reply(w, status, api.ErrorBody{Error: api.ErrorDetail{
		Message: msg, Type: "invalid_request_error",
	}})
}

// closedURL returns the URL of a local port where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	assert.NilError(t, err)
	addr := ln.Addr().String()
	assert.NilError(t, ln.Close())
	return "http://" + addr
}

// testRoot returns options for calling a runX function directly, with
// stdout and stderr captured and a fixed clock.
func testRoot(t *testing.T, queenURL string,
	tty bool) (*rootOptions, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := &rootOptions{
		Stdin:     strings.NewReader(""),
		Stdout:    &stdout,
		Stderr:    &stderr,
		StdoutTTY: tty,
		QueenURL:  queenURL,
		Getenv:    func(string) string { return "" },
		Now:       func() time.Time { return testNow },
		log:       slog.New(slog.DiscardHandler),
	}
	return root, &stdout, &stderr
}

var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// firstWriteWriter is a goroutine-safe buffer that runs onFirst once, on
// its first write.
type firstWriteWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	once    sync.Once
	onFirst func()
}

func (w *firstWriteWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	n, err := w.buf.Write(p)
	w.mu.Unlock()
	w.once.Do(w.onFirst)
	return n, err
}

func (w *firstWriteWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestVersion(t *testing.T) {
	res := runKeeper(t, "", "version")
	assert.Equal(t, res.code, exitOK)
	assert.Equal(t, res.stdout, version.String()+"\n")
	assert.Equal(t, res.stderr, "")
}

func TestUsageErrors(t *testing.T) {
	down := closedURL(t)
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"unknown flag", []string{"worker", "list", "--bogus"}, "unknown flag: --bogus"},
		{"flag value not a number", []string{"worker", "spawn", "-m", "m", "--slots", "abc"},
			`invalid argument "abc" for "--slots"`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate" for "rbee"`},
		{"unknown subcommand", []string{"worker", "lst"}, `did you mean "list"?`},
		{"spawn without model", []string{"worker", "spawn"}, "--model is required"},
		{"no slots", []string{"worker", "spawn", "-m", "m", "--slots", "0"},
			"--slots must be between 1 and 64, not 0"},
		{"too many slots", []string{"worker", "spawn", "-m", "m", "--slots", "65"},
			"--slots must be between 1 and 64, not 65"},
		{"negative ctx size", []string{"worker", "spawn", "-m", "m", "--ctx-size", "-1"},
			"--ctx-size must be 0 or more"},
		{"bad restart policy", []string{"worker", "spawn", "-m", "m", "--restart", "sometimes"},
			`--restart must be always, on-failure or never, not "sometimes"`},
		{"stop without id", []string{"worker", "stop"}, "accepts 1 arg(s), received 0"},
		{"list with an argument", []string{"worker", "list", "extra"}, `unknown command "extra"`},
		{"infer without model", []string{"infer", "hello"}, "--model is required"},
		{"zero max tokens", []string{"infer", "-m", "m", "--max-tokens", "0", "hi"},
			"--max-tokens must be more than 0, not 0"},
		{"top-p above 1", []string{"infer", "-m", "m", "--top-p", "1.5", "hi"}, "--top-p must be"},
		{"negative seed", []string{"infer", "-m", "m", "--seed", "-1", "hi"}, `invalid argument "-1"`},
		{"empty prompt", []string{"infer", "-m", "m", "  "}, "the prompt is empty"},
		{"empty prompt on stdin", []string{"infer", "-m", "m", "-"}, "the prompt is empty"},
		{"bad queen URL", []string{"worker", "list", "--queen-url", "ftp://x"},
			`queen URL "ftp://x" is not valid`},
		{"bad listen address", []string{"queen", "start", "--addr", "7833"},
			`--addr must be HOST:PORT, not "7833"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !strings.Contains(strings.Join(args, " "), "--queen-url") {
				args = append(args, "--queen-url", down)
			}
			res := runKeeper(t, "", args...)
			assert.Equal(t, res.code, exitUsage, "stderr: %s", res.stderr)
			assert.Equal(t, res.stdout, "")
			assert.Assert(t, strings.HasPrefix(res.stderr, "rbee: "), res.stderr)
			assert.Assert(t, cmp.Contains(res.stderr, tc.want))
			assert.Assert(t, cmp.Contains(res.stderr, "--help`"))
		})
	}
}

func TestQueenNotRunning(t *testing.T) {
	down := closedURL(t)
	want := "rbee: queen is not running at " + down + ": start it with `rbee queen start`\n"
	tests := []struct {
		name string
		args []string
	}{
		{"worker list", []string{"worker", "list"}},
		{"worker spawn", []string{"worker", "spawn", "-m", "hf:org/repo/m.gguf"}},
		{"worker stop", []string{"worker", "stop", "w-1"}},
		{"queen status", []string{"queen", "status"}},
		{"infer", []string{"infer", "-m", "m", "hello"}},
		{"infer without streaming", []string{"infer", "--no-stream", "-m", "m", "hello"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runKeeper(t, "", append(tc.args, "--queen-url", down)...)
			assert.Equal(t, res.code, exitError)
			assert.Equal(t, res.stdout, "")
			assert.Equal(t, res.stderr, want)
		})
	}
}

func TestQueenErrorBody(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"DELETE /v1/workers/{id}": func(w http.ResponseWriter, r *http.Request) {
			replyError(w, http.StatusNotFound, "no worker "+r.PathValue("id"))
		},
		"GET /v1/workers": func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "upstream down", http.StatusBadGateway)
		},
	})
	tests := []struct {
		name       string
		args       []string
		wantStderr []string
	}{
		{
			name:       "message shown",
			args:       []string{"worker", "stop", "w-nope"},
			wantStderr: []string{"rbee: no worker w-nope\n"},
		},
		{
			name:       "status in the debug log",
			args:       []string{"worker", "stop", "w-nope", "--debug"},
			wantStderr: []string{"status=404", "rbee: no worker w-nope\n"},
		},
		{
			name:       "not the error shape",
			args:       []string{"worker", "list"},
			wantStderr: []string{"rbee: the queen answered 502 Bad Gateway: upstream down\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runKeeper(t, "", append(tc.args, "--queen-url", srv.URL)...)
			assert.Equal(t, res.code, exitError)
			assert.Equal(t, res.stdout, "")
			for _, want := range tc.wantStderr {
				assert.Assert(t, cmp.Contains(res.stderr, want))
			}
		})
	}
}

func TestAPIKeySentAsBearer(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want string
	}{
		{"key set", "sekret", "Bearer sekret"},
		{"no key", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envAPIKey, tc.key)
			var got recorder[string]
			srv := fakeQueen(t, map[string]http.HandlerFunc{
				"GET /v1/workers": func(w http.ResponseWriter, r *http.Request) {
					got.add(r.Header.Get("Authorization"))
					reply(w, http.StatusOK, api.WorkerList{})
				},
			})
			res := runKeeper(t, "", "worker", "list", "--queen-url", srv.URL)
			assert.Equal(t, res.code, exitOK, res.stderr)
			assert.DeepEqual(t, got.all(), []string{tc.want})
		})
	}
}

func TestQueenURLFromEnvironment(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/workers": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.WorkerList{Workers: []api.Worker{{ID: "w-env"}}})
		},
	})
	down := closedURL(t)
	tests := []struct {
		name     string
		env      string
		flag     string
		wantCode int
	}{
		{"environment used", srv.URL, "", exitOK},
		{"trailing slash", srv.URL + "/", "", exitOK},
		{"flag wins over environment", down, srv.URL, exitOK},
		{"environment names a dead queen", down, "", exitError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envQueenURL, tc.env)
			args := []string{"worker", "list", "--json"}
			if tc.flag != "" {
				args = append(args, "--queen-url", tc.flag)
			}
			res := runKeeper(t, "", args...)
			assert.Equal(t, res.code, tc.wantCode, res.stderr)
			if tc.wantCode == exitOK {
				assert.Assert(t, cmp.Contains(res.stdout, `"id": "w-env"`))
			} else {
				assert.Assert(t, cmp.Contains(res.stderr, "queen is not running at "+down))
			}
		})
	}
}

func TestInterruptedExits130(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			writeEvents(w, textChunk("Hel", ""))
			<-r.Context().Done() // the keeper hangs up when interrupted
		},
	})
	stdout := &firstWriteWriter{onFirst: cancel}
	var stderr bytes.Buffer
	code := run(ctx, []string{"infer", "-m", "m", "hi", "--queen-url", srv.URL},
		strings.NewReader(""), stdout, &stderr)
	assert.Equal(t, code, exitInterrupted)
	assert.Equal(t, stdout.String(), "Hel\n")
	assert.Equal(t, stderr.String(), "")
}

// recorder keeps what fake queen handlers saw, safe to read from the test.
type recorder[T any] struct {
	mu   sync.Mutex
	seen []T
}

func (r *recorder[T]) add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, v)
}

func (r *recorder[T]) all() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]T(nil), r.seen...)
}
