// Package sshtest starts real OpenSSH servers (/usr/sbin/sshd) for tests,
// each an unprivileged child process on its own loopback address and port,
// with its own host key, an authorized client key, and a HOME of its own for
// the login session. It logs in as the user running the tests.
package sshtest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHDPath is the OpenSSH server the harness runs.
const SSHDPath = "/usr/sbin/sshd"

// installHint says how to get sshd, for a machine that lacks it.
const installHint = "run scripts/install-test-deps.sh (it installs openssh-server)"

// startTimeout bounds how long a server may take to answer with its banner.
const startTimeout = 10 * time.Second

// Server is one running sshd. Its exported fields are fixed for its life,
// except HostPublicKey, which RotateHostKey replaces.
type Server struct {
	// Addr is the loopback address it listens on, e.g. 127.0.0.2.
	Addr string
	// Port is its TCP port, kept across Restart and RotateHostKey.
	Port int
	// User is the login name the tests connect as (the current user).
	User string
	// Home is HOME in every session on this server (sshd_config SetEnv).
	// The session still starts in the user's real home directory.
	Home string
	// ClientKeyPath is an unencrypted OpenSSH private key that the server
	// accepts.
	ClientKeyPath string
	// HostPublicKey is the key the server proves itself with.
	HostPublicKey ssh.PublicKey

	t           testing.TB
	env         []string // KEY=VALUE pairs added to every session's environment
	dir         string
	configPath  string
	hostKeyPath string
	logPath     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has been waited for
}

// Option changes how StartServer sets a server up.
type Option func(*Server)

// WithEnv sets KEY=VALUE pairs in the environment of every session on the
// server (sshd_config SetEnv), as a host's own configuration would: e.g.
// HF_ENDPOINT for a hive that downloads from a test server.
func WithEnv(kv ...string) Option {
	return func(s *Server) { s.env = append(s.env, kv...) }
}

// StartServer starts sshd on addr (a loopback address such as 127.0.0.2) and
// a free port, and stops it, with every session it started, when the test
// ends. The server's log is printed only if the test failed. A machine
// without sshd fails the test with a hint on how to install it.
func StartServer(t testing.TB, addr string, opts ...Option) *Server {
	t.Helper()
	version := sshdVersion(t)
	me, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: current user: %v", err)
	}
	ensurePrivsepDir(t)

	dir := t.TempDir()
	s := &Server{
		Addr:          addr,
		User:          me.Username,
		Home:          filepath.Join(dir, "home"),
		ClientKeyPath: filepath.Join(dir, "client_ed25519"),
		t:             t,
		dir:           dir,
		configPath:    filepath.Join(dir, "sshd_config"),
		hostKeyPath:   filepath.Join(dir, "ssh_host_ed25519_key"),
		logPath:       filepath.Join(dir, "sshd.log"),
	}
	for _, o := range opts {
		o(s)
	}
	if err := os.Mkdir(s.Home, 0o700); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	s.HostPublicKey = WriteKey(t, s.hostKeyPath)
	clientKey := WriteKey(t, s.ClientKeyPath)
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}

	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.printLog()
		}
	})

	// Another process may take the free port between our probe and sshd's
	// bind: try a few ports before giving up.
	for attempt := 1; ; attempt++ {
		s.Port = freePort(t, addr)
		s.writeConfig(t, authorized, version)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 3 || !strings.Contains(s.readLog(), "Address already in use") {
			t.Fatalf("sshtest: start sshd on %s: %v", s.HostPort(), err)
		}
	}
}

// HostPort is the server's address as host:port.
func (s *Server) HostPort() string {
	return net.JoinHostPort(s.Addr, strconv.Itoa(s.Port))
}

// KnownHostsLine is the server's known_hosts entry, e.g.
// "[127.0.0.2]:40123 ssh-ed25519 AAAA...".
func (s *Server) KnownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(s.HostPort())}, s.HostPublicKey)
}

// Stop kills sshd and every process it started (connections and the
// commands they run), as a crash or a power cut would. It does nothing on a
// stopped server.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}

	killTree(s.cmd.Process.Pid)
	select {
	case <-s.done:
	case <-time.After(startTimeout):
		s.t.Errorf("sshtest: sshd pid %d did not exit after SIGKILL", s.cmd.Process.Pid)
	}
	s.cmd = nil
}

// Pause freezes sshd and every process it started (SIGSTOP), as a host
// that hangs would: connections stay open, and nothing answers on them.
func (s *Server) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		freezeTree(s.cmd.Process.Pid)
	}
}

// Resume undoes Pause.
func (s *Server) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		thawTree(s.cmd.Process.Pid)
	}
}

// Start starts a stopped server again with the same host key on the same
// address and port, as a host whose sshd comes back would. It does nothing
// on a running server.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		return
	}
	if err := s.start(); err != nil {
		s.t.Fatalf("sshtest: start sshd again on %s: %v", s.HostPort(), err)
	}
}

// Restart stops the server and starts it again with the same host key on
// the same address and port.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("sshtest: restart sshd on %s: %v", s.HostPort(), err)
	}
}

// RotateHostKey restarts the server on the same address and port with a
// new host key, as a reinstalled (or impersonated) host would appear.
func (s *Server) RotateHostKey() {
	s.t.Helper()
	s.Stop()
	if err := os.Remove(s.hostKeyPath); err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
	s.HostPublicKey = WriteKey(s.t, s.hostKeyPath)
	if err := s.start(); err != nil {
		s.t.Fatalf("sshtest: restart sshd on %s: %v", s.HostPort(), err)
	}
}

// WriteKey generates an ed25519 key, writes it unencrypted in OpenSSH's
// format to path (mode 0600), and returns its public half.
func WriteKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshtest: generate key: %v", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "rbee-test")
	if err != nil {
		t.Fatalf("sshtest: marshal key: %v", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshtest: write key: %v", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatalf("sshtest: public key: %v", err)
	}
	return sshPub
}

// start runs sshd with the written config and waits until it answers.
func (s *Server) start() error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()

	// -D: stay in the foreground; -E: log to the file. Errors sshd prints
	// before it reads its config land in the same file through stderr.
	cmd := exec.Command(SSHDPath, "-D", "-f", s.configPath, "-E", s.logPath)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	if err := waitForBanner(s.HostPort(), done); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// waitForBanner polls addr until an SSH server greets, sshd exits, or
// startTimeout passes.
func waitForBanner(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errors.New("sshd exited (see its log)")
		default:
		}
		if greets(addr) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no SSH banner on %s within %s", addr, startTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// greets reports whether an SSH server answers on addr with its banner.
func greets(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-")
}

func (s *Server) writeConfig(t testing.TB, authorizedKeys string, version [2]int) {
	t.Helper()
	lines := []string{
		"ListenAddress " + s.HostPort(),
		fmt.Sprintf("HostKey %q", s.hostKeyPath),
		fmt.Sprintf("PidFile %q", filepath.Join(s.dir, "sshd.pid")),
		fmt.Sprintf("AuthorizedKeysFile %q", authorizedKeys),
		// One decoding thread per worker: tests run several CPU workers
		// on a small machine, and llama.cpp's spinning threads must not
		// outnumber its cores.
		fmt.Sprintf("SetEnv \"HOME=%s\" RBEE_WORKER_THREADS=1%s", s.Home, s.setEnvExtra()),
		"AllowUsers " + s.User,
		"UsePAM no",
		"StrictModes no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"UseDNS no",
		"PrintMotd no",
		"LogLevel DEBUG1",
	}
	// From 9.8 on, sshd shuts out a source address that failed to log in or
	// dropped a connection, which the tests do on purpose.
	if version[0] > 9 || version[0] == 9 && version[1] >= 8 {
		lines = append(lines, "PerSourcePenalties no")
	}
	data := strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(s.configPath, []byte(data), 0o600); err != nil {
		t.Fatalf("sshtest: write sshd_config: %v", err)
	}
}

// setEnvExtra is the SetEnv words for the WithEnv pairs, each quoted.
func (s *Server) setEnvExtra() string {
	var b strings.Builder
	for _, kv := range s.env {
		fmt.Fprintf(&b, " %q", kv)
	}
	return b.String()
}

func (s *Server) readLog() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

func (s *Server) printLog() {
	s.t.Logf("sshd log for %s (%s):\n%s", s.HostPort(), s.logPath, s.readLog())
}

// freePort asks the kernel for a port that is free on addr right now.
func freePort(t testing.TB, addr string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("sshtest: listen on %s: %v", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	versionOnce sync.Once
	versionNum  [2]int
	versionErr  error
)

// sshdVersion returns sshd's major and minor version, failing the test when
// sshd is missing or too old for SetEnv (8.7).
func sshdVersion(t testing.TB) [2]int {
	t.Helper()
	versionOnce.Do(func() {
		if _, err := os.Stat(SSHDPath); err != nil {
			versionErr = fmt.Errorf("%s not found: %s", SSHDPath, installHint)
			return
		}
		// -V prints the version on stderr; releases before 9.2 read it as
		// an unknown flag and print their usage, which names it too.
		out, _ := exec.Command(SSHDPath, "-V").CombinedOutput()
		m := regexp.MustCompile(`OpenSSH_(\d+)\.(\d+)`).FindSubmatch(out)
		if m == nil {
			versionErr = fmt.Errorf("cannot tell the version of %s from %q", SSHDPath, out)
			return
		}
		versionNum[0], _ = strconv.Atoi(string(m[1]))
		versionNum[1], _ = strconv.Atoi(string(m[2]))
	})
	if versionErr != nil {
		t.Fatalf("sshtest: %v", versionErr)
	}
	if v := versionNum; v[0] < 8 || v[0] == 8 && v[1] < 7 {
		t.Fatalf("sshtest: OpenSSH %d.%d is older than 8.7, which SetEnv needs", v[0], v[1])
	}
	return versionNum
}

// ensurePrivsepDir creates /run/sshd, which sshd insists on when it runs as
// root. The system's sshd service makes it at boot; a machine that never
// started that service has none.
func ensurePrivsepDir(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("sshtest: create sshd's privilege separation directory: %v", err)
	}
}
