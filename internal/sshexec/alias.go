package sshexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kevinburke/ssh_config"
)

// ErrUnknownAlias: no Host entry of the ssh config names the alias.
var ErrUnknownAlias = errors.New("ssh alias not found")

// ResolveAlias reads host, user, port and key for alias from an OpenSSH
// client config (default ~/.ssh/config), as `ssh alias` would: HostName
// (default: the alias itself; %h is the alias), User (left empty when not
// set: the local user), Port (default 22) and the first IdentityFile, with ~
// and %d (home), %u (local user), %r (remote user), %h and %% expanded. Match
// blocks and other keywords are not read. An alias that only a bare
// `Host *` matches is ErrUnknownAlias.
func ResolveAlias(alias, sshConfigPath string) (Target, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return Target{}, fmt.Errorf("resolve ssh alias %s: %w", alias, err)
	}
	if sshConfigPath == "" {
		sshConfigPath = filepath.Join(home, ".ssh", "config")
	}
	fail := func(err error) (Target, error) {
		return Target{}, fmt.Errorf("resolve ssh alias %s from %s: %w", alias, sshConfigPath, err)
	}

	f, err := os.Open(sshConfigPath)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return fail(err)
	}
	if !declares(cfg, alias) {
		return fail(fmt.Errorf("%w: no Host entry names it", ErrUnknownAlias))
	}

	values := map[string]string{}
	for _, key := range []string{"HostName", "User", "Port", "IdentityFile"} {
		v, err := cfg.Get(alias, key)
		if err != nil {
			return fail(err)
		}
		values[key] = v
	}

	t := Target{Host: alias, User: values["User"], Alias: alias}
	if v := values["HostName"]; v != "" {
		t.Host = strings.ReplaceAll(v, "%h", alias)
	}
	if v := values["Port"]; v != "" {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return fail(fmt.Errorf("bad Port %q", v))
		}
		t.Port = port
	} else {
		t.Port = 22
	}
	if v := values["IdentityFile"]; v != "" {
		path, err := expandIdentity(v, home, t)
		if err != nil {
			return fail(err)
		}
		t.KeyPath = path
	}
	return t, nil
}

// declares reports whether some Host line other than a bare "*" matches
// alias.
func declares(cfg *ssh_config.Config, alias string) bool {
	for _, h := range cfg.Hosts {
		if !h.Matches(alias) {
			continue
		}
		for _, pattern := range h.Patterns {
			if s := pattern.String(); s != "*" && !strings.HasPrefix(s, "!") {
				return true
			}
		}
	}
	return false
}

// expandIdentity expands ~ and the tokens ssh_config allows in an
// IdentityFile.
func expandIdentity(path, home string, t Target) (string, error) {
	if path == "~" || strings.HasPrefix(path, "~/") {
		path = home + path[1:]
	}
	local, err := localUser()
	if err != nil {
		return "", err
	}
	remote := t.User
	if remote == "" {
		remote = local
	}
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		if path[i] != '%' || i+1 == len(path) {
			b.WriteByte(path[i])
			continue
		}
		i++
		switch path[i] {
		case '%':
			b.WriteByte('%')
		case 'd':
			b.WriteString(home)
		case 'u':
			b.WriteString(local)
		case 'r':
			b.WriteString(remote)
		case 'h':
			b.WriteString(t.Host)
		default:
			return "", fmt.Errorf("IdentityFile %q: token %%%c is not supported", path, path[i])
		}
	}
	return b.String(), nil
}
