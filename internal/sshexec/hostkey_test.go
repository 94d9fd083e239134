package sshexec

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

func TestUnknownHostKey(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.2")
	known := filepath.Join(t.TempDir(), "rbee", "known_hosts")
	target := serverTarget(s)
	echo := []string{"echo", "ok"}
	ctx := context.Background()

	// Refused, and nothing recorded.
	_, err := closingPool(t, Config{KnownHostsPath: known}).Run(ctx, target, echo, nil)
	assert.ErrorIs(t, err, ErrUnknownHost)
	assert.Check(t, is.ErrorContains(err, "--accept-new-host-key"))
	assert.Check(t, is.ErrorContains(err, ssh.FingerprintSHA256(s.HostPublicKey)))
	_, statErr := os.Stat(known)
	assert.Check(t, os.IsNotExist(statErr))

	// Accepted when asked, and recorded in rbee's own file.
	accepting := closingPool(t, Config{KnownHostsPath: known, AcceptNewHostKey: true})
	res, err := accepting.Run(ctx, target, echo, nil)
	assert.NilError(t, err)
	assert.Equal(t, string(res.Stdout), "ok\n")
	data, err := os.ReadFile(known)
	assert.NilError(t, err)
	assert.Equal(t, string(data), s.KnownHostsLine()+"\n")
	assertMode(t, known, 0o600)
	assertMode(t, filepath.Dir(known), 0o700|os.ModeDir)

	// Known from now on, without asking.
	_, err = closingPool(t, Config{KnownHostsPath: known}).Run(ctx, target, echo, nil)
	assert.NilError(t, err)
}

func TestChangedHostKey(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	known := filepath.Join(t.TempDir(), "known_hosts")
	oldLine := s.KnownHostsLine() + "\n"
	assert.NilError(t, os.WriteFile(known, []byte(oldLine), 0o600))
	target := serverTarget(s)
	p := closingPool(t, Config{KnownHostsPath: known, AcceptNewHostKey: true})
	_, err := p.Run(context.Background(), target, []string{"true"}, nil)
	assert.NilError(t, err)

	s.RotateHostKey()

	tests := []struct {
		name string
		pool *Pool
	}{
		{name: "pooled", pool: p},
		{
			name: "fresh, even with accept-new",
			pool: closingPool(t, Config{KnownHostsPath: known, AcceptNewHostKey: true}),
		},
		{name: "fresh", pool: closingPool(t, Config{KnownHostsPath: known})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.pool.Run(context.Background(), target, []string{"true"}, nil)

			assert.ErrorIs(t, err, ErrHostKeyChanged)
			assert.Check(t, is.ErrorContains(err, "HAS CHANGED"))
			assert.Check(t, is.ErrorContains(err, known+":1"))
			data, err := os.ReadFile(known)
			assert.NilError(t, err)
			assert.Equal(t, string(data), oldLine, "the file must be left alone")
		})
	}
}

func TestHostKeyFromUserKnownHosts(t *testing.T) {
	// Not parallel: it writes the test HOME's ~/.ssh/known_hosts.
	s := sshtest.StartServer(t, "127.0.0.2")
	path := userKnownHostsPath()
	assert.NilError(t, os.MkdirAll(filepath.Dir(path), 0o700))
	// A file edited by hand may lack its last newline.
	assert.NilError(t, os.WriteFile(path, []byte(s.KnownHostsLine()), 0o600))
	t.Cleanup(func() { os.Remove(path) })
	own := filepath.Join(t.TempDir(), "known_hosts")
	p := closingPool(t, Config{KnownHostsPath: own})

	res, err := p.Run(context.Background(), serverTarget(s), []string{"echo", "ok"}, nil)

	assert.NilError(t, err)
	assert.Equal(t, string(res.Stdout), "ok\n")
	_, statErr := os.Stat(own)
	assert.Check(t, os.IsNotExist(statErr), "rbee's file is only written for a new key")
}

func TestAppendKnownHostStartsNewLine(t *testing.T) {
	tests := []struct {
		name    string
		initial string
		want    string
	}{
		{name: "new file", want: "b\n"},
		{name: "ends with newline", initial: "a\n", want: "a\nb\n"},
		{name: "ends mid-line", initial: "a", want: "a\nb\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dir", "known_hosts")
			if tc.initial != "" {
				assert.NilError(t, os.MkdirAll(filepath.Dir(path), 0o700))
				assert.NilError(t, os.WriteFile(path, []byte(tc.initial), 0o600))
			}
			p := closingPool(t, Config{KnownHostsPath: path})

			assert.NilError(t, p.appendKnownHost("b"))

			data, err := os.ReadFile(path)
			assert.NilError(t, err)
			assert.Equal(t, string(data), tc.want)
		})
	}
}

func TestHostKeyAlgorithms(t *testing.T) {
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	assert.NilError(t, err)
	edKey, err := ssh.NewPublicKey(edPub)
	assert.NilError(t, err)
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	assert.NilError(t, err)
	ecKey, err := ssh.NewPublicKey(&ecPriv.PublicKey)
	assert.NilError(t, err)
	host := "gpu1.example:2222"
	line := func(k ssh.PublicKey) string {
		return knownhosts.Line([]string{knownhosts.Normalize(host)}, k) + "\n"
	}

	tests := []struct {
		name  string
		known string
		want  []string
	}{
		{name: "unknown host: any algorithm", known: "", want: nil},
		{name: "only ecdsa on record", known: line(ecKey), want: []string{ssh.KeyAlgoECDSA256}},
		{
			name:  "both on record",
			known: line(ecKey) + line(edKey),
			want:  []string{ssh.KeyAlgoECDSA256, ssh.KeyAlgoED25519},
		},
		{
			name:  "another host's key does not count",
			known: knownhosts.Line([]string{"other"}, ecKey) + "\n",
			want:  nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "known_hosts")
			assert.NilError(t, os.WriteFile(path, []byte(tc.known), 0o600))
			p := closingPool(t, Config{KnownHostsPath: path})
			hk, err := p.newHostKeys(Target{Host: "gpu1.example", Port: 2222})
			assert.NilError(t, err)

			got := hk.algorithms(host, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 2222})

			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	s := sshtest.StartServer(t, "127.0.0.3")
	p := trustingPool(t, Config{}, s)
	wrongKey := filepath.Join(t.TempDir(), "wrong")
	sshtest.WriteKey(t, wrongKey)

	tests := []struct {
		name    string
		keyPath string
		wantIs  error
		wantErr string
	}{
		{
			name:    "wrong key",
			keyPath: wrongKey,
			wantIs:  ErrAuth,
			wantErr: "accepted none of " + wrongKey,
		},
		{
			name:    "missing key file",
			keyPath: filepath.Join(t.TempDir(), "none"),
			wantIs:  os.ErrNotExist,
			wantErr: "ssh key for",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := serverTarget(s)
			target.KeyPath = tc.keyPath

			_, err := p.Run(context.Background(), target, []string{"true"}, nil)

			assert.Check(t, is.ErrorIs(err, tc.wantIs))
			assert.Check(t, is.ErrorContains(err, tc.wantErr))
		})
	}
}

func TestAuthDefaultKeysAndAgent(t *testing.T) {
	// Not parallel: it writes the test HOME's ~/.ssh and sets SSH_AUTH_SOCK.
	s := sshtest.StartServer(t, "127.0.0.2")
	target := serverTarget(s)
	target.KeyPath = ""
	run := func() error {
		t.Helper()
		_, err := trustingPool(t, Config{}, s).Run(context.Background(), target, []string{"true"}, nil)
		return err
	}

	// No key anywhere.
	err := run()
	assert.ErrorIs(t, err, ErrAuth)
	assert.Check(t, is.ErrorContains(err, "no key to offer"))

	// The server's key as ~/.ssh/id_ed25519.
	defaultKey := filepath.Join(os.Getenv("HOME"), ".ssh", "id_ed25519")
	assert.NilError(t, os.MkdirAll(filepath.Dir(defaultKey), 0o700))
	data, err := os.ReadFile(s.ClientKeyPath)
	assert.NilError(t, err)
	assert.NilError(t, os.WriteFile(defaultKey, data, 0o600))
	assert.NilError(t, run())
	assert.NilError(t, os.Remove(defaultKey))

	// The server's key in an agent, beside a wrong key of the target.
	t.Setenv("SSH_AUTH_SOCK", startAgent(t, s.ClientKeyPath))
	target.KeyPath = filepath.Join(t.TempDir(), "wrong")
	sshtest.WriteKey(t, target.KeyPath)
	assert.NilError(t, run())
}

// startAgent serves an in-process SSH agent holding the key at keyPath and
// returns its socket.
func startAgent(t *testing.T, keyPath string) string {
	t.Helper()
	data, err := os.ReadFile(keyPath)
	assert.NilError(t, err)
	key, err := ssh.ParseRawPrivateKey(data)
	assert.NilError(t, err)
	keyring := agent.NewKeyring()
	assert.NilError(t, keyring.Add(agent.AddedKey{PrivateKey: key}))

	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	assert.NilError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			_ = agent.ServeAgent(keyring, conn)
			conn.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return sock
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	assert.NilError(t, err)
	assert.Equal(t, info.Mode(), want, "mode of %s", path)
}
