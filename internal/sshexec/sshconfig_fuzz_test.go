package sshexec

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzSSHConfig feeds arbitrary ssh_config text and alias to ResolveAlias
// (kevinburke/ssh_config parses it): it must return a target or an error,
// never panic.
func FuzzSSHConfig(f *testing.F) {
	seeds := []struct{ config, alias string }{
		{"Host gpu1\n  HostName 10.0.0.5\n  User rbee\n  Port 2222\n" +
			"  IdentityFile ~/.ssh/id_%r@%h\n", "gpu1"},
		{"Host *\n  User x\n", "anything"},
		{"Host a b !c\nHostName %h.example\nMatch host x\n  User y\n", "a"},
		{"Include other\nHost x\n\tPort 99999\n", "x"},
		{"Host \"quoted name\"\n  IdentityFile %q\n", "quoted name"},
		{"=\n\x00\n", ""},
	}
	for _, s := range seeds {
		f.Add(s.config, s.alias)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, config, alias string) {
		path := filepath.Join(dir, "config")
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		target, err := ResolveAlias(alias, path)
		if err != nil {
			return
		}
		if target.Port < 1 || target.Port > 65535 {
			t.Fatalf("resolved a port out of range: %+v", target)
		}
	})
}
