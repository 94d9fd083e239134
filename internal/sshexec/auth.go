package sshexec

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// defaultKeyNames are the keys in ~/.ssh tried for a target without one.
var defaultKeyNames = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// credentials are the keys offered to one server, and where they came from.
type credentials struct {
	signers []ssh.Signer
	sources []string // key paths, and "the ssh agent", for messages
	agent   net.Conn // closed once the handshake is over
}

func (c *credentials) close() {
	if c.agent != nil {
		c.agent.Close()
	}
}

// method offers every key in one publickey method: x/crypto tries each
// method name once, so separate methods for files and agent would leave
// the second unused.
func (c *credentials) method() ssh.AuthMethod {
	return ssh.PublicKeys(c.signers...)
}

// loadCredentials gathers the target's key (or the default ones) and the
// agent's keys. A target's own key that cannot be used is an error; a
// default key that cannot be (say, one with a passphrase) is skipped.
func (p *Pool) loadCredentials(t Target) (*credentials, error) {
	creds := &credentials{}
	if t.KeyPath != "" {
		signer, err := loadKey(t.KeyPath)
		var locked *ssh.PassphraseMissingError
		switch {
		case err == nil:
		case errors.As(err, &locked) && os.Getenv("SSH_AUTH_SOCK") != "":
			// The agent may hold it unlocked.
		case errors.As(err, &locked):
			return nil, fmt.Errorf("%w: %s has a passphrase, which rbee cannot ask for: "+
				"add it to your SSH agent (ssh-add %s)", ErrAuth, t.KeyPath, t.KeyPath)
		default:
			return nil, fmt.Errorf("ssh key for %s: %w", t, err)
		}
		creds.add(signer, t.KeyPath)
	} else {
		home, _ := os.UserHomeDir()
		for _, name := range defaultKeyNames {
			path := filepath.Join(home, ".ssh", name)
			signer, err := loadKey(path)
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					p.log.Debug("ssh key skipped", "path", path, "error", err)
				}
				continue
			}
			creds.add(signer, path)
		}
	}

	if err := p.addAgentKeys(creds); err != nil {
		p.log.Debug("ssh agent not used", "error", err)
	}
	if len(creds.signers) == 0 {
		creds.close()
		return nil, fmt.Errorf("%w: no key to offer to %s: no readable ~/.ssh/id_ed25519, "+
			"id_ecdsa or id_rsa and no SSH agent (SSH_AUTH_SOCK); give the hive a key",
			ErrAuth, t)
	}
	return creds, nil
}

func (c *credentials) add(signer ssh.Signer, source string) {
	if signer != nil {
		c.signers = append(c.signers, signer)
		c.sources = append(c.sources, source)
	}
}

// addAgentKeys adds the agent's keys when SSH_AUTH_SOCK is set.
func (p *Pool) addAgentKeys(creds *credentials) error {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return err
	}
	creds.agent = conn
	creds.signers = append(creds.signers, signers...)
	if len(signers) > 0 {
		creds.sources = append(creds.sources, "the ssh agent")
	}
	return nil
}

// loadKey reads an unencrypted private key.
func loadKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return signer, nil
}
