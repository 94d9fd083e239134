package sshtest

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"
)

func TestServerSession(t *testing.T) {
	t.Parallel()
	servers := []*Server{StartServer(t, "127.0.0.2", WithEnv("RBEE_TEST_EXTRA=with env")),
		StartServer(t, "127.0.0.3")}
	assert.Assert(t, servers[0].Home != servers[1].Home)
	extra := map[*Server]string{servers[0]: "with env\n", servers[1]: "\n"}

	for _, s := range servers {
		tests := []struct {
			name     string
			command  string
			want     string
			wantErr  string
			wantCode int
		}{
			{name: "HOME is the server's own", command: "echo $HOME", want: s.Home + "\n"},
			{name: "logs in as the current user", command: "id -un", want: s.User + "\n"},
			{name: "WithEnv is set", command: `echo "$RBEE_TEST_EXTRA"`, want: extra[s]},
			{
				name:     "stderr and exit code",
				command:  "echo oops >&2; exit 3",
				wantErr:  "oops\n",
				wantCode: 3,
			},
		}
		for _, tc := range tests {
			t.Run(s.Addr+"/"+tc.name, func(t *testing.T) {
				out, errOut, code := run(t, s, tc.command)
				assert.Equal(t, out, tc.want)
				assert.Equal(t, errOut, tc.wantErr)
				assert.Equal(t, code, tc.wantCode)
			})
		}
	}
}

func TestServerRestart(t *testing.T) {
	t.Parallel()
	s := StartServer(t, "127.0.0.2")
	port, key := s.Port, s.HostPublicKey

	s.Restart()

	assert.Equal(t, s.Port, port)
	assert.DeepEqual(t, s.HostPublicKey.Marshal(), key.Marshal())
	out, _, _ := run(t, s, "echo back")
	assert.Equal(t, out, "back\n")
}

func TestServerStopThenStart(t *testing.T) {
	t.Parallel()
	s := StartServer(t, "127.0.0.2")

	s.Stop()
	assert.Assert(t, !greets(s.HostPort()), "a stopped server still answers")
	s.Start()
	s.Start() // a running server: nothing to do

	out, _, _ := run(t, s, "echo back")
	assert.Equal(t, out, "back\n")
}

func TestServerRotateHostKey(t *testing.T) {
	t.Parallel()
	s := StartServer(t, "127.0.0.3")
	port, key, line := s.Port, s.HostPublicKey, s.KnownHostsLine()

	s.RotateHostKey()

	assert.Equal(t, s.Port, port)
	assert.Assert(t, !bytes.Equal(s.HostPublicKey.Marshal(), key.Marshal()))
	assert.Assert(t, s.KnownHostsLine() != line)
	assert.Assert(t, is.Contains(line, "["+s.Addr+"]:"+strconv.Itoa(s.Port)+" ssh-ed25519 "))
	out, _, _ := run(t, s, "echo rotated")
	assert.Equal(t, out, "rotated\n")
}

func TestServerStopEndsSessions(t *testing.T) {
	t.Parallel()
	s := StartServer(t, "127.0.0.2")
	client := dial(t, s)
	sess, err := client.NewSession()
	assert.NilError(t, err)
	stdout, err := sess.StdoutPipe()
	assert.NilError(t, err)
	assert.NilError(t, sess.Start("echo $$; exec sleep 30"))

	var pidLine []byte
	buf := make([]byte, 1)
	for !bytes.HasSuffix(pidLine, []byte("\n")) {
		_, err := stdout.Read(buf)
		assert.NilError(t, err)
		pidLine = append(pidLine, buf[0])
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidLine)))
	assert.NilError(t, err)
	assert.Assert(t, Alive(pid))

	s.Stop()

	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if Alive(pid) {
			return poll.Continue("remote sleep (pid %d) still running", pid)
		}
		return poll.Success()
	}, poll.WithTimeout(5*time.Second), poll.WithDelay(10*time.Millisecond))
	assert.Assert(t, sess.Wait() != nil)
}

// dial connects to s as s.User with s.ClientKeyPath, trusting only its
// host key.
func dial(t *testing.T, s *Server) *ssh.Client {
	t.Helper()
	signer := loadKey(t, s.ClientKeyPath)
	client, err := ssh.Dial("tcp", s.HostPort(), &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(s.HostPublicKey),
		Timeout:         5 * time.Second,
	})
	assert.NilError(t, err)
	t.Cleanup(func() { client.Close() })
	return client
}

// run runs command on s and returns its stdout, stderr and exit code.
func run(t *testing.T, s *Server, command string) (string, string, int) {
	t.Helper()
	sess, err := dial(t, s).NewSession()
	assert.NilError(t, err)
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr

	code := 0
	var exitErr *ssh.ExitError
	switch err := sess.Run(command); {
	case errors.As(err, &exitErr):
		code = exitErr.ExitStatus()
	case err != nil:
		t.Fatalf("run %q: %v", command, err)
	}
	return stdout.String(), stderr.String(), code
}

func loadKey(t *testing.T, path string) ssh.Signer {
	t.Helper()
	data, err := os.ReadFile(path)
	assert.NilError(t, err)
	signer, err := ssh.ParsePrivateKey(data)
	assert.NilError(t, err)
	return signer
}
