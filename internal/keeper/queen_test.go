package keeper

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

var testStatus = api.QueenStatus{
	Version: "v0.1.0", ProtocolVersion: 1, Addr: "127.0.0.1:7833", PID: 4242,
	StartedAt: testNow.Add(-(time.Hour + 2*time.Minute + 3*time.Second)),
	Workers:   3, ReadyWorkers: 2,
}

func TestQueenStatus(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/status": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, testStatus)
		},
	})

	t.Run("human", func(t *testing.T) {
		root, stdout, _ := testRoot(t, srv.URL, false)
		assert.NilError(t, runQueenStatus(context.Background(), &queenStatusOptions{root: root}))
		assert.Equal(t, stdout.String(), ""+
			"version: v0.1.0 (protocol 1)\n"+
			"address: 127.0.0.1:7833\n"+
			"pid:     4242\n"+
			"uptime:  1h2m3s\n"+
			"workers: 2 ready / 3 total\n")
	})
	t.Run("json", func(t *testing.T) {
		res := runKeeper(t, "", "queen", "status", "--json", "--queen-url", srv.URL)
		assert.Equal(t, res.code, exitOK, res.stderr)
		assert.Assert(t, cmp.Contains(res.stdout, `"ready_workers": 2`))
		assert.Assert(t, cmp.Contains(res.stdout, `"pid": 4242`))
	})
}

func TestQueenStop(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		var srv *httptest.Server
		srv = fakeQueen(t, map[string]http.HandlerFunc{
			"GET /health": func(w http.ResponseWriter, _ *http.Request) {
				reply(w, http.StatusOK, map[string]string{"status": "ok"})
			},
			"POST /v1/shutdown": func(w http.ResponseWriter, _ *http.Request) {
				reply(w, http.StatusAccepted, map[string]string{"status": "shutting_down"})
				go srv.Close() // waits for this handler, then stops listening
			},
		})
		res := runKeeper(t, "", "queen", "stop", "--queen-url", srv.URL)
		assert.Equal(t, res.code, exitOK, res.stderr)
		assert.Equal(t, res.stdout, "queen stopped\n")
	})

	t.Run("still answering", func(t *testing.T) {
		srv := fakeQueen(t, map[string]http.HandlerFunc{
			"GET /health": func(w http.ResponseWriter, _ *http.Request) {
				reply(w, http.StatusOK, map[string]string{"status": "ok"})
			},
			"POST /v1/shutdown": func(w http.ResponseWriter, _ *http.Request) {
				reply(w, http.StatusAccepted, map[string]string{"status": "shutting_down"})
			},
		})
		res := runKeeper(t, "", "queen", "stop", "--timeout", "300ms", "--queen-url", srv.URL)
		assert.Equal(t, res.code, exitError)
		assert.Assert(t, cmp.Contains(res.stderr, "still answers after 300ms"))
	})

	t.Run("not running", func(t *testing.T) {
		down := closedURL(t)
		res := runKeeper(t, "", "queen", "stop", "--queen-url", down)
		assert.Equal(t, res.code, exitOK, res.stderr)
		assert.Equal(t, res.stdout, "queen is not running at "+down+"\n")
	})
}

func TestQueenStartAlreadyRunning(t *testing.T) {
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /health": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, map[string]string{"status": "ok"})
		},
	})
	res := runKeeper(t, "", "queen", "start", "--queen-url", srv.URL)
	assert.Equal(t, res.code, exitOK, res.stderr)
	assert.Equal(t, res.stdout, "queen already running at "+srv.URL+"\n")
}

// writeExecutable makes an empty file at path with the given mode.
func writeExecutable(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	assert.NilError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	assert.NilError(t, os.WriteFile(path, []byte("#!/bin/sh\n"), mode))
	assert.NilError(t, os.Chmod(path, mode))
}

func TestFindQueenBinary(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, bin, onPath string) (exe string) // returns the keeper's path
		want    string                                              // "bin/" or "path/" + name
		wantErr string
	}{
		{
			name: "next to the keeper",
			setup: func(t *testing.T, bin, onPath string) string {
				writeExecutable(t, filepath.Join(bin, queenBinary), 0o755)
				writeExecutable(t, filepath.Join(onPath, queenBinary), 0o755)
				return filepath.Join(bin, "rbee")
			},
			want: "bin/" + queenBinary,
		},
		{
			name: "next to the keeper a symlink points at",
			setup: func(t *testing.T, bin, onPath string) string {
				writeExecutable(t, filepath.Join(bin, "rbee"), 0o755)
				writeExecutable(t, filepath.Join(bin, queenBinary), 0o755)
				link := filepath.Join(t.TempDir(), "rbee")
				assert.NilError(t, os.Symlink(filepath.Join(bin, "rbee"), link))
				return link
			},
			want: "bin/" + queenBinary,
		},
		{
			name: "on PATH",
			setup: func(t *testing.T, bin, onPath string) string {
				writeExecutable(t, filepath.Join(onPath, queenBinary), 0o755)
				return filepath.Join(bin, "rbee")
			},
			want: "path/" + queenBinary,
		},
		{
			name: "next to the keeper but not executable",
			setup: func(t *testing.T, bin, onPath string) string {
				writeExecutable(t, filepath.Join(bin, queenBinary), 0o644)
				writeExecutable(t, filepath.Join(onPath, queenBinary), 0o755)
				return filepath.Join(bin, "rbee")
			},
			want: "path/" + queenBinary,
		},
		{
			name: "keeper's path unknown",
			setup: func(t *testing.T, bin, onPath string) string {
				writeExecutable(t, filepath.Join(onPath, queenBinary), 0o755)
				return ""
			},
			want: "path/" + queenBinary,
		},
		{
			name: "nowhere",
			setup: func(t *testing.T, bin, onPath string) string {
				return filepath.Join(bin, "rbee")
			},
			wantErr: "queen-rbee is not in BIN nor on $PATH: build it with `make build`",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			bin, onPath := filepath.Join(root, "bin"), filepath.Join(root, "path")
			assert.NilError(t, os.MkdirAll(bin, 0o755))
			assert.NilError(t, os.MkdirAll(onPath, 0o755))
			t.Setenv("PATH", onPath)
			exe := tc.setup(t, bin, onPath)
			executable := func() (string, error) {
				if exe == "" {
					return "", errors.New("no /proc")
				}
				return exe, nil
			}

			got, err := findQueenBinary(executable, exec.LookPath)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, strings.ReplaceAll(tc.wantErr, "BIN", bin))
				return
			}
			assert.NilError(t, err)
			assert.Equal(t, got, filepath.Join(root, tc.want))
		})
	}
}

func TestLastLines(t *testing.T) {
	tests := []struct {
		name  string
		input string
		n     int
		want  []string
	}{
		{"empty", "", 3, []string{}},
		{"fewer lines than asked", "a\nb\n", 3, []string{"a", "b"}},
		{"exactly as many", "a\nb\nc\n", 3, []string{"a", "b", "c"}},
		{"more lines than asked", "a\nb\nc\nd\ne\n", 3, []string{"c", "d", "e"}},
		{"last line unfinished", "a\nb\nc", 2, []string{"b", "c"}},
		{"crlf", "a\r\nb\r\n", 5, []string{"a", "b"}},
		{"blank lines kept", "a\n\nb\n", 2, []string{"", "b"}},
		{"none asked", "a\n", 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lastLines(strings.NewReader(tc.input), tc.n)
			assert.NilError(t, err)
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestLogTail(t *testing.T) {
	before := "old run 1\nold run 2\n"
	tests := []struct {
		name  string
		added string
		n     int
		want  string
	}{
		{
			name:  "only this run's lines",
			added: "listening\nerror: address in use\n",
			n:     20,
			want:  "the last lines of its log LOG:\n    listening\n    error: address in use",
		},
		{
			name:  "at most n",
			added: "1\n2\n3\n",
			n:     2,
			want:  "the last lines of its log LOG:\n    2\n    3",
		},
		{
			name: "nothing written",
			n:    20,
			want: "it wrote nothing to its log LOG",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "queen.log")
			assert.NilError(t, os.WriteFile(path, []byte(before+tc.added), 0o600))
			got := logTail(path, int64(len(before)), tc.n)
			assert.Equal(t, got, strings.ReplaceAll(tc.want, "LOG", path))
		})
	}
}

func TestDefaultLogPath(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string
	}{
		{"xdg state home", map[string]string{"XDG_STATE_HOME": "/xdg", "HOME": "/home/me"},
			"/xdg/rbee/queen.log", ""},
		{"home", map[string]string{"HOME": "/home/me"}, "/home/me/.local/state/rbee/queen.log", ""},
		{"relative xdg ignored", map[string]string{"XDG_STATE_HOME": "xdg", "HOME": "/home/me"},
			"/home/me/.local/state/rbee/queen.log", ""},
		{"no home", map[string]string{}, "", "give the queen's log file with --log"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := defaultLogPath(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestListenAddr(t *testing.T) {
	tests := []struct {
		name     string
		base     string
		flag     string
		want     string
		wantDial string
	}{
		{"from the URL", "http://127.0.0.1:7833", "", "127.0.0.1:7833", "127.0.0.1:7833"},
		{"URL without port", "http://queen.lan", "", "queen.lan:80", "queen.lan:80"},
		{"https URL without port", "https://queen.lan", "", "queen.lan:443", "queen.lan:443"},
		{"flag", "http://127.0.0.1:7833", "127.0.0.1:9000", "127.0.0.1:9000", "127.0.0.1:9000"},
		{"wildcard", "http://127.0.0.1:7833", "0.0.0.0:9000", "0.0.0.0:9000", "127.0.0.1:9000"},
		{"empty host", "http://127.0.0.1:7833", ":9000", ":9000", "127.0.0.1:9000"},
		{"ipv6 wildcard", "http://127.0.0.1:7833", "[::]:9000", "[::]:9000", "[::1]:9000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := listenAddr(tc.base, tc.flag)
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
			assert.Equal(t, dialAddr(got), tc.wantDial)
		})
	}
}

func TestStartDetached(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH: this test starts a shell as a stand-in queen (every Unix has one)")
	}
	logPath := filepath.Join(t.TempDir(), "state", "rbee", "queen.log")
	assert.NilError(t, os.MkdirAll(filepath.Dir(logPath), 0o700))
	assert.NilError(t, os.WriteFile(logPath, []byte("earlier run\n"), 0o600))

	d, err := startDetached(sh, []string{"-c", "echo out; echo err >&2; read line; exit 3"}, logPath)
	assert.NilError(t, err)
	assert.Equal(t, d.logOffset, int64(len("earlier run\n")))

	// The child exits at once (stdin is /dev/null); processAlive must see
	// that although nobody waited for it.
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(d.pid) {
		assert.Assert(t, time.Now().Before(deadline), "pid %d still alive", d.pid)
		time.Sleep(10 * time.Millisecond)
	}
	got := logTail(logPath, d.logOffset, 20)
	assert.Equal(t, got, "the last lines of its log "+logPath+":\n    out\n    err")
}

func TestProcessAliveSelf(t *testing.T) {
	assert.Assert(t, processAlive(os.Getpid()))
}
