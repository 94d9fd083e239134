package sshexec

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
)

// Errors a Pool returns, wrapped with what it was doing; test them with
// errors.Is. Their text is for logs: the wrapping error says what to do.
var (
	// ErrUnknownHost: the host's key is in no known_hosts file, and the
	// pool was not told to accept new keys.
	ErrUnknownHost = errors.New("unknown ssh host key")
	// ErrHostKeyChanged: the host showed a key other than the one recorded
	// for it (or a revoked one). Never accepted automatically.
	ErrHostKeyChanged = errors.New("ssh host key changed")
	// ErrAuth: the server accepted none of the keys offered, or there was
	// no key to offer.
	ErrAuth = errors.New("ssh authentication failed")
	// ErrUnreachable: no SSH server answered in time (refused, timed out,
	// no route, unknown name, or a handshake that never finished).
	ErrUnreachable = errors.New("ssh host unreachable")
	// ErrDisconnected: the connection broke while a command ran, so
	// whether the command finished is unknown.
	ErrDisconnected = errors.New("ssh connection lost")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("ssh pool closed")
	// ErrChecksum: an uploaded file's sha256 on the remote side differs
	// from the bytes sent.
	ErrChecksum = errors.New("sha256 mismatch")
)

// Target is one SSH destination.
type Target struct {
	// Host is a host name or IP address.
	Host string
	// Port defaults to 22.
	Port int
	// User defaults to the local user's name.
	User string
	// KeyPath is a private key file. Empty: ~/.ssh/id_ed25519, id_ecdsa
	// and id_rsa, those that exist. The SSH agent is used in both cases
	// when SSH_AUTH_SOCK is set.
	KeyPath string
	// Alias names the target in messages, e.g. the hive name or the
	// ~/.ssh/config alias it came from. It plays no part in connecting.
	Alias string
}

// String names t for messages: its alias, else user@host:port.
func (t Target) String() string {
	if t.Alias != "" {
		return t.Alias
	}
	return t.User + "@" + t.addr()
}

// addr is host:port, with the port defaulted.
func (t Target) addr() string {
	port := t.Port
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(t.Host, strconv.Itoa(port))
}

// withDefaults fills in the user and port.
func (t Target) withDefaults() (Target, error) {
	if t.Host == "" {
		return t, errors.New("ssh target has no host")
	}
	if t.Port == 0 {
		t.Port = 22
	}
	if t.User == "" {
		name, err := localUser()
		if err != nil {
			return t, err
		}
		t.User = name
	}
	return t, nil
}

// poolKey identifies the connection t is served by.
func (t Target) poolKey() string {
	return t.User + "@" + t.addr() + " " + t.KeyPath
}

// localUser is the name of the user running this process.
func localUser() (string, error) {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username, nil
	}
	if name := os.Getenv("USER"); name != "" {
		return name, nil
	}
	return "", fmt.Errorf("cannot tell the local user name: set USER or the target's user")
}
