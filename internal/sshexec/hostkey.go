package sshexec

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultKnownHostsPath is rbee's own known_hosts file:
// $XDG_CONFIG_HOME/rbee/known_hosts, else ~/.config/rbee/known_hosts.
func DefaultKnownHostsPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find rbee's known_hosts: %w", err)
	}
	return filepath.Join(dir, "rbee", "known_hosts"), nil
}

// userKnownHostsPath is OpenSSH's per-user file, read but never written.
func userKnownHostsPath() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".ssh", "known_hosts")
}

// hostKeys checks the host key of one connection attempt against rbee's
// known_hosts and the user's, and records a new key when allowed.
type hostKeys struct {
	pool   *Pool
	target Target
	files  []string // the known_hosts files that exist, read afresh per dial
	check  ssh.HostKeyCallback

	// verified reports whether the host key was accepted: past that
	// point a failed handshake is about authentication.
	verified bool
	// err is the host key error, kept to return it without the
	// handshake's wrapping.
	err error
}

// newHostKeys reads the known_hosts files for one dial.
func (p *Pool) newHostKeys(t Target) (*hostKeys, error) {
	hk := &hostKeys{pool: p, target: t}
	for _, path := range []string{p.knownHostsPath, userKnownHostsPath()} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err == nil {
			hk.files = append(hk.files, path)
		}
	}
	if len(hk.files) > 0 {
		check, err := knownhosts.New(hk.files...)
		if err != nil {
			return nil, fmt.Errorf("read known_hosts: %w", err)
		}
		hk.check = check
	}
	return hk, nil
}

// callback implements ssh.HostKeyCallback.
func (hk *hostKeys) callback(hostport string, remote net.Addr, key ssh.PublicKey) error {
	hk.err = hk.verify(hostport, remote, key)
	hk.verified = hk.err == nil
	return hk.err
}

func (hk *hostKeys) verify(hostport string, remote net.Addr, key ssh.PublicKey) error {
	var err error = errUnknownKey
	if hk.check != nil {
		err = hk.check(hostport, remote, key)
	}
	if err == nil {
		return nil
	}

	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		return hk.changed(key, keyErr.Want[0])
	case errors.As(err, &revoked):
		return hk.changed(key, revoked.Revoked)
	case errors.As(err, &keyErr):
		return hk.unknown(hostport, key)
	default:
		return fmt.Errorf("check host key of %s: %w", hk.target, err)
	}
}

// errUnknownKey stands for the answer of an empty known_hosts database.
var errUnknownKey = &knownhosts.KeyError{}

func (hk *hostKeys) unknown(hostport string, key ssh.PublicKey) error {
	p := hk.pool
	if !p.cfg.AcceptNewHostKey {
		return fmt.Errorf("%w: the host key of %s (%s %s) is not in %s; "+
			"if this is the right host, connect again with --accept-new-host-key",
			ErrUnknownHost, hk.target, key.Type(), ssh.FingerprintSHA256(key),
			strings.Join(hk.knownHostsNames(), " or "))
	}

	line := knownhosts.Line([]string{knownhosts.Normalize(hostport)}, key)
	if err := p.appendKnownHost(line); err != nil {
		return fmt.Errorf("record host key of %s: %w", hk.target, err)
	}
	p.log.Info("ssh host key accepted", "host", hk.target.String(),
		"fingerprint", ssh.FingerprintSHA256(key), "file", p.knownHostsPath)
	return nil
}

func (hk *hostKeys) changed(key ssh.PublicKey, known knownhosts.KnownKey) error {
	hk.pool.log.Warn("ssh host key changed", "host", hk.target.String(),
		"fingerprint", ssh.FingerprintSHA256(key), "file", known.Filename, "line", known.Line)
	return fmt.Errorf("%w: WARNING: THE HOST KEY OF %s HAS CHANGED. "+
		"Someone may be impersonating it (a man-in-the-middle attack), or the host "+
		"was reinstalled. It now shows %s %s, but %s:%d records %s %s. rbee refuses "+
		"to connect. If you know why the key changed, delete line %d of %s and add "+
		"the host again with --accept-new-host-key",
		ErrHostKeyChanged, hk.target, key.Type(), ssh.FingerprintSHA256(key),
		known.Filename, known.Line, known.Key.Type(), ssh.FingerprintSHA256(known.Key),
		known.Line, known.Filename)
}

// knownHostsNames lists the files searched, for messages.
func (hk *hostKeys) knownHostsNames() []string {
	var names []string
	if own := hk.pool.knownHostsPath; own != "" {
		names = append(names, own)
	}
	if user := userKnownHostsPath(); user != "" {
		names = append(names, user)
	}
	return names
}

// algorithms returns the host key algorithms matching the keys already
// known for hostport, so that a host with, say, only its ecdsa key on
// record is asked for that key and not reported as changed for showing
// its ed25519 one. Nil (any algorithm) for an unknown host.
func (hk *hostKeys) algorithms(hostport string, remote net.Addr) []string {
	if hk.check == nil {
		return nil
	}
	// A key nobody holds: the database answers with every key on record.
	var keyErr *knownhosts.KeyError
	if err := hk.check(hostport, remote, probeKey); !errors.As(err, &keyErr) {
		return nil
	}

	var algos []string
	seen := map[string]bool{}
	for _, known := range keyErr.Want {
		for _, algo := range algorithmsFor(known.Key.Type()) {
			if !seen[algo] {
				seen[algo] = true
				algos = append(algos, algo)
			}
		}
	}
	return algos
}

// algorithmsFor maps a key type to the host key algorithms that prove it.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

var probeKey = func() ssh.PublicKey {
	key, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		panic(err)
	}
	return key
}()

// appendKnownHost adds one line to rbee's known_hosts, creating the file
// (0600) and its directory (0700) when missing.
func (p *Pool) appendKnownHost(line string) error {
	p.knownHostsMu.Lock()
	defer p.knownHostsMu.Unlock()

	if err := os.MkdirAll(filepath.Dir(p.knownHostsPath), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p.knownHostsPath, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if endsMidLine(f) {
		line = "\n" + line
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// endsMidLine reports whether f is not empty and lacks a final newline (a
// file edited by hand), so that an appended line must start a new one.
func endsMidLine(f *os.File) bool {
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		return false
	}
	last := make([]byte, 1)
	_, err = f.ReadAt(last, info.Size()-1)
	return err == nil && last[0] != '\n'
}
