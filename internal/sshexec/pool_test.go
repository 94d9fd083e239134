package sshexec

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// TestMain gives the tests a HOME of their own, so that a developer's
// ~/.ssh (keys, known_hosts) and agent play no part in them.
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "sshexec-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	os.Unsetenv("SSH_AUTH_SOCK")

	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

// serverTarget is the target that logs in to s with its client key.
func serverTarget(s *sshtest.Server) Target {
	return Target{Host: s.Addr, Port: s.Port, User: s.User, KeyPath: s.ClientKeyPath}
}

// trustingPool returns a pool whose own known_hosts holds the keys of
// servers, closed when the test ends.
func trustingPool(t *testing.T, cfg Config, servers ...*sshtest.Server) *Pool {
	t.Helper()
	if cfg.KnownHostsPath == "" {
		cfg.KnownHostsPath = filepath.Join(t.TempDir(), "known_hosts")
	}
	var lines string
	for _, s := range servers {
		lines += s.KnownHostsLine() + "\n"
	}
	assert.NilError(t, os.WriteFile(cfg.KnownHostsPath, []byte(lines), 0o600))
	return closingPool(t, cfg)
}

// closingPool returns NewPool(cfg), closed when the test ends.
func closingPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p := NewPool(cfg)
	t.Cleanup(func() { assert.Check(t, p.Close()) })
	return p
}

func TestRun(t *testing.T) {
	t.Parallel()
	servers := []*sshtest.Server{
		sshtest.StartServer(t, "127.0.0.2"),
		sshtest.StartServer(t, "127.0.0.3"),
	}
	p := trustingPool(t, Config{}, servers...)

	tests := []struct {
		name       string
		argv       []string
		stdin      string
		wantOut    string
		wantErrOut string
		wantCode   int
	}{
		{name: "echo", argv: []string{"echo", "hello"}, wantOut: "hello\n"},
		{
			name:       "stdout and stderr apart",
			argv:       []string{"sh", "-c", "echo out; echo err >&2"},
			wantOut:    "out\n",
			wantErrOut: "err\n",
		},
		{name: "exit code", argv: []string{"sh", "-c", "exit 7"}, wantCode: 7},
		{name: "false", argv: []string{"false"}, wantCode: 1},
		{name: "missing program", argv: []string{"/nonexistent/rbee-hive"}, wantCode: 127},
		{name: "stdin", argv: []string{"cat"}, stdin: "token\nsecond\n", wantOut: "token\nsecond\n"},
		{
			name:     "killed by a signal",
			argv:     []string{"sh", "-c", "kill -KILL $$"},
			wantCode: -1,
		},
	}
	for _, s := range servers {
		for _, tc := range tests {
			t.Run(s.Addr+"/"+tc.name, func(t *testing.T) {
				var stdin io.Reader
				if tc.stdin != "" {
					stdin = strings.NewReader(tc.stdin)
				}

				res, err := p.Runner(serverTarget(s)).Run(context.Background(), tc.argv, stdin)

				assert.NilError(t, err)
				assert.Equal(t, string(res.Stdout), tc.wantOut)
				if tc.wantCode != 127 {
					assert.Equal(t, string(res.Stderr), tc.wantErrOut)
				}
				assert.Equal(t, res.ExitCode, tc.wantCode)
			})
		}
	}
}

func TestRunHostileArgv(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.2")
	r := trustingPool(t, Config{}, s).Runner(serverTarget(s))

	tests := []struct {
		name string
		args []string
	}{
		{name: "quotes", args: []string{`it's`, `say "hi"`, `'\''`, `\`}},
		{name: "separators", args: []string{"a; touch /tmp/rbee-pwned", "a && b", "a | b", "a & b"}},
		{name: "substitution", args: []string{"$(id)", "`id`", "${HOME}", "$((1+1))"}},
		{name: "newlines", args: []string{"a\nb", "\n", "a\r\nb", "trailing\n"}},
		{name: "unicode", args: []string{"héllo ✓", "日本語", "\u202e", "\xff\xfe"}},
		{name: "spaces and globs", args: []string{" lead", "trail ", "a  b", "*", "?", "[a]", "~"}},
		{name: "empty and dashes", args: []string{"", "-n", "--", "-e"}},
		{name: "redirections", args: []string{"> /tmp/x", "< /etc/passwd", "2>&1", "#comment"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			argv := append([]string{"printf", `%s\0`}, tc.args...)

			res, err := r.Run(context.Background(), argv, nil)

			assert.NilError(t, err)
			assert.Equal(t, res.ExitCode, 0, "stderr: %s", res.Stderr)
			assert.Equal(t, string(res.Stdout), strings.Join(tc.args, "\x00")+"\x00")
		})
	}
}

func TestRunRejectsBadArgv(t *testing.T) {
	t.Parallel()
	p := closingPool(t, Config{})
	target := Target{Host: "127.0.0.2", Port: 1}

	tests := []struct {
		name string
		argv []string
		want error
	}{
		{name: "empty", argv: nil, want: ErrEmptyArgv},
		{name: "NUL", argv: []string{"echo", "a\x00b"}, want: ErrNUL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Run(context.Background(), target, tc.argv, nil)
			assert.ErrorIs(t, err, tc.want)
			assert.Equal(t, p.Stats().Dials, int64(0))
		})
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	const timeout = 500 * time.Millisecond

	// A listener that accepts and then says nothing: the TCP connect
	// works, the SSH handshake never starts.
	silent, err := net.Listen("tcp", "127.0.0.3:0")
	assert.NilError(t, err)
	var held sync.WaitGroup
	held.Add(1)
	go func() {
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		silent.Close()
		held.Wait()
	})

	tests := []struct {
		name string
		addr string
	}{
		{name: "nothing listens", addr: closedPort(t, "127.0.0.2")},
		{name: "no ssh handshake", addr: silent.Addr().String()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host, port, err := net.SplitHostPort(tc.addr)
			assert.NilError(t, err)
			portNum, err := strconv.Atoi(port)
			assert.NilError(t, err)
			p := closingPool(t, Config{ConnectTimeout: timeout})
			keyPath := filepath.Join(t.TempDir(), "key")
			sshtest.WriteKey(t, keyPath)

			start := time.Now()
			_, err = p.Run(context.Background(), Target{Host: host, Port: portNum, KeyPath: keyPath},
				[]string{"true"}, nil)
			elapsed := time.Since(start)

			assert.ErrorIs(t, err, ErrUnreachable)
			assert.Assert(t, elapsed < 2*timeout, "took %s", elapsed)
		})
	}
}

// closedPort returns host:port where nothing listens.
func closedPort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	assert.NilError(t, err)
	addr := l.Addr().String()
	assert.NilError(t, l.Close())
	return addr
}

func TestRunDeadline(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	const deadline = 500 * time.Millisecond
	withDeadline := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), deadline)
	}
	withoutDeadline := func() (context.Context, context.CancelFunc) {
		return context.WithCancel(context.Background())
	}

	tests := []struct {
		name    string
		cfg     Config
		ctx     func() (context.Context, context.CancelFunc)
		stream  bool
		wantErr error
	}{
		{
			name:    "ctx deadline",
			ctx:     withDeadline,
			wantErr: context.DeadlineExceeded,
		},
		{
			name:    "ctx deadline while streaming",
			ctx:     withDeadline,
			stream:  true,
			wantErr: context.DeadlineExceeded,
		},
		{
			name:    "command timeout",
			cfg:     Config{CommandTimeout: deadline},
			ctx:     withoutDeadline,
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := trustingPool(t, tc.cfg, s)
			pidFile := filepath.Join(t.TempDir(), "pid")
			argv := []string{"sh", "-c", `echo $$ > "$1"; exec sleep 30`, "sh", pidFile}
			ctx, cancel := tc.ctx()
			defer cancel()

			start := time.Now()
			var res Result
			var err error
			if tc.stream {
				res, err = p.Stream(ctx, serverTarget(s), argv, nil, func([]byte) {})
			} else {
				res, err = p.Run(ctx, serverTarget(s), argv, nil)
			}
			elapsed := time.Since(start)

			assert.ErrorIs(t, err, tc.wantErr)
			assert.Equal(t, res.ExitCode, -1)
			assert.Assert(t, elapsed < deadline+killGrace/2, "took %s", elapsed)
			waitGone(t, readPID(t, pidFile))
		})
	}
}

// readPID reads the pid a remote command wrote to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	assert.NilError(t, err, "the remote command did not start")
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	assert.NilError(t, err)
	return pid
}

// waitGone waits, boundedly, for process pid (a remote command: the test
// servers run on this machine) to be gone.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if sshtest.Alive(pid) {
			return poll.Continue("remote process %d still running", pid)
		}
		return poll.Success()
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(10*time.Millisecond))
}

func TestServerKilledMidCommand(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.2")
	p := trustingPool(t, Config{}, s)
	target := serverTarget(s)

	started := make(chan struct{})
	var once sync.Once
	result := make(chan error, 1)
	go func() {
		_, err := p.Stream(context.Background(), target,
			[]string{"sh", "-c", "echo started; exec sleep 30"}, nil,
			func([]byte) { once.Do(func() { close(started) }) })
		result <- err
	}()
	waitFor(t, started, "the remote command to start")

	s.Stop()
	err := receive(t, result)
	assert.ErrorIs(t, err, ErrDisconnected)
	assert.Check(t, is.ErrorContains(err, "before the command finished"))

	_, err = p.Run(context.Background(), target, []string{"true"}, nil)
	assert.ErrorIs(t, err, ErrUnreachable)

	s.Restart()
	res, err := p.Run(context.Background(), target, []string{"echo", "back"}, nil)
	assert.NilError(t, err)
	assert.Equal(t, string(res.Stdout), "back\n")
}

func TestRunRedialsBrokenConnection(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	p := trustingPool(t, Config{}, s)
	target := serverTarget(s)
	_, err := p.Run(context.Background(), target, []string{"true"}, nil)
	assert.NilError(t, err)

	// The pool may not have noticed yet that its connection died: the
	// next command must redial rather than fail.
	s.Restart()
	res, err := p.Run(context.Background(), target, []string{"echo", "again"}, nil)

	assert.NilError(t, err)
	assert.Equal(t, string(res.Stdout), "again\n")
	assert.Equal(t, p.Stats().Dials, int64(2))
}

func TestPoolReusesConnection(t *testing.T) {
	t.Parallel()
	servers := []*sshtest.Server{
		sshtest.StartServer(t, "127.0.0.2"),
		sshtest.StartServer(t, "127.0.0.3"),
	}
	p := trustingPool(t, Config{}, servers...)

	for i := 0; i < 5; i++ {
		for _, s := range servers {
			_, err := p.Run(context.Background(), serverTarget(s), []string{"true"}, nil)
			assert.NilError(t, err)
		}
	}

	assert.DeepEqual(t, p.Stats(), Stats{Dials: 2, Open: 2})
	assert.NilError(t, p.Close())
	assert.DeepEqual(t, p.Stats(), Stats{Dials: 2, Open: 0})
	_, err := p.Run(context.Background(), serverTarget(servers[0]), []string{"true"}, nil)
	assert.ErrorIs(t, err, ErrClosed)
}

func TestRunConcurrent(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.2")
	p := trustingPool(t, Config{}, s)
	const n = 20

	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := p.Run(context.Background(), serverTarget(s),
				[]string{"sh", "-c", `sleep 0.05; echo "$1"`, "sh", strconv.Itoa(i)}, nil)
			errs[i], outs[i] = err, string(res.Stdout)
		}()
	}
	wg.Wait()

	for i := range n {
		assert.Check(t, errs[i], "run %d", i)
		assert.Check(t, is.Equal(outs[i], strconv.Itoa(i)+"\n"))
	}
	assert.Equal(t, p.Stats().Dials, int64(1))
}

func TestStream(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	p := trustingPool(t, Config{}, s)

	// The command prints two lines, then waits for stdin, which the test
	// only sends once it has received them: Stream must deliver lines
	// while the command still runs, or this times out.
	stdinR, stdinW := io.Pipe()
	var lines []string
	onLine := func(line []byte) {
		lines = append(lines, string(line))
		if len(lines) == 2 {
			_, _ = io.WriteString(stdinW, "go\n")
			stdinW.Close()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res, err := p.Stream(ctx, serverTarget(s),
		[]string{"sh", "-c", `echo '{"progress":1}'; echo '{"progress":2}'; read x; ` +
			`echo "got $x" >&2; printf 'last'`}, stdinR, onLine)

	assert.NilError(t, err)
	assert.Equal(t, res.ExitCode, 0)
	assert.DeepEqual(t, lines, []string{`{"progress":1}`, `{"progress":2}`, "last"})
	assert.Equal(t, string(res.Stderr), "got go\n")
	assert.Equal(t, len(res.Stdout), 0)
}

func TestLineWriter(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   []string
	}{
		{name: "one line per write", writes: []string{"a\n", "b\n"}, want: []string{"a", "b"}},
		{
			name:   "lines split across writes",
			writes: []string{"ab", "c\nd", "e\n"},
			want:   []string{"abc", "de"},
		},
		{
			name:   "many lines in one write",
			writes: []string{"a\nb\n\nc\n"},
			want:   []string{"a", "b", "", "c"},
		},
		{name: "last line without newline", writes: []string{"a\nb"}, want: []string{"a", "b"}},
		{
			name:   "overlong line in pieces",
			writes: []string{strings.Repeat("x", maxLine+3) + "\n"},
			want:   []string{strings.Repeat("x", maxLine), "xxx"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			w := &lineWriter{onLine: func(b []byte) { got = append(got, string(b)) }}
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				assert.NilError(t, err)
				assert.Equal(t, n, len(s))
			}
			w.flush()
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

// waitFor waits, boundedly, for ch to close.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// receive waits, boundedly, for one error from ch.
func receive(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the command to return")
		return nil
	}
}

func TestPGIDWriter(t *testing.T) {
	tests := []struct {
		name     string
		writes   []string
		wantOut  string
		wantPGID int
	}{
		{
			name:     "marker first",
			writes:   []string{pgidMarker + "42\nerr\n"},
			wantOut:  "err\n",
			wantPGID: 42,
		},
		{
			name:     "marker split across writes",
			writes:   []string{"rbee-ssh", "exec-pgid 4", "2\nerr", "or\n"},
			wantOut:  "error\n",
			wantPGID: 42,
		},
		{
			name:     "shell noise before the marker",
			writes:   []string{"bashrc says hi\n" + pgidMarker + "7\n", "x"},
			wantOut:  "bashrc says hi\nx",
			wantPGID: 7,
		},
		{name: "no marker", writes: []string{"plain\n", "tail"}, wantOut: "plain\ntail"},
		{
			name:     "marker later in stderr is kept",
			writes:   []string{pgidMarker + "5\n" + pgidMarker + "6\n"},
			wantOut:  pgidMarker + "6\n",
			wantPGID: 5,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			w := newPGIDWriter(&out)
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				assert.NilError(t, err)
				assert.Equal(t, n, len(s))
			}
			w.flush()

			assert.Equal(t, out.String(), tc.wantOut)
			pgid := 0
			select {
			case pgid = <-w.pgid:
			default:
			}
			assert.Equal(t, pgid, tc.wantPGID)
		})
	}
}

func TestUnresponsiveServer(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	target := serverTarget(s)

	t.Run("keepalive drops the connection", func(t *testing.T) {
		p := trustingPool(t, Config{ConnectTimeout: time.Second}, s)
		p.keepAlive, p.keepAliveTimeout = 50*time.Millisecond, 200*time.Millisecond
		_, err := p.Run(context.Background(), target, []string{"true"}, nil)
		assert.NilError(t, err)

		s.Pause()
		poll.WaitOn(t, func(poll.LogT) poll.Result {
			if open := p.Stats().Open; open > 0 {
				return poll.Continue("%d connections still open", open)
			}
			return poll.Success()
		}, poll.WithTimeout(5*time.Second), poll.WithDelay(10*time.Millisecond))
		s.Resume()

		res, err := p.Run(context.Background(), target, []string{"echo", "back"}, nil)
		assert.NilError(t, err)
		assert.Equal(t, string(res.Stdout), "back\n")
		assert.Equal(t, p.Stats().Dials, int64(2))
	})

	t.Run("cancelled command on a hung connection", func(t *testing.T) {
		p := trustingPool(t, Config{}, s)
		const deadline = 500 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		started := make(chan struct{})
		var once sync.Once
		pid := 0

		start := time.Now()
		_, err := p.Stream(ctx, target, []string{"sh", "-c", "echo $$; exec sleep 30"}, nil,
			func(line []byte) {
				once.Do(func() {
					s.Pause()
					pid, _ = strconv.Atoi(string(line))
					close(started)
				})
			})
		elapsed := time.Since(start)
		s.Resume()

		waitFor(t, started, "the remote command to start")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Assert(t, elapsed < deadline+killGrace+time.Second, "took %s", elapsed)

		// Nothing could reach the command while the host hung: it outlives
		// the cancel, and the test ends it.
		assert.Assert(t, pid > 1)
		assert.Assert(t, sshtest.Alive(pid))
		assert.NilError(t, syscall.Kill(pid, syscall.SIGKILL))
		waitGone(t, pid)
	})
}
