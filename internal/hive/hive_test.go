package hive

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/version"
)

func TestVersion(t *testing.T) {
	run := runHive(t, "", "version")

	assert.Equal(t, run.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.HiveVersion](t, run.stdout), api.HiveVersion{
		Version:         version.Version,
		ProtocolVersion: api.ProtocolVersion,
		OS:              runtime.GOOS,
		Arch:            runtime.GOARCH,
	})
	assert.Equal(t, run.stderr, "")
}

func TestCommandLineErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no command", wantErr: "missing command"},
		{name: "unknown command", args: []string{"serve"}, wantErr: `unknown command "serve"`},
		{name: "worker without command", args: []string{"worker"}, wantErr: "missing command"},
		{name: "unknown worker command", args: []string{"worker", "tail"},
			wantErr: `unknown command "tail" for "rbee-hive worker"`},
		{name: "version with an argument", args: []string{"version", "now"},
			wantErr: `unknown command "now"`},
		{name: "unknown flag", args: []string{"version", "--json"},
			wantErr: "unknown flag: --json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run := runHive(t, "", tc.args...)

			wantError(t, run, api.HiveExitUsage, tc.wantErr)
		})
	}
}

func TestHelpGoesToStderr(t *testing.T) {
	run := runHive(t, "", "worker", "spawn", "--help")

	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Equal(t, run.stdout, "")
	assert.Assert(t, strings.Contains(run.stderr, "--worker-bin"))
}

func TestStateDir(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		name     string
		stateDir string
		xdg      string
		want     string
	}{
		{name: "explicit", stateDir: "/srv/rbee", xdg: "/xdg", want: "/srv/rbee"},
		{name: "XDG", xdg: "/xdg", want: "/xdg/rbee"},
		{name: "relative XDG is ignored", xdg: "xdg",
			want: filepath.Join(home, ".local", "state", "rbee")},
		{name: "default", want: filepath.Join(home, ".local", "state", "rbee")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HOME", home)
			t.Setenv(envStateDir, tc.stateDir)
			t.Setenv(envXDGStateHome, tc.xdg)

			got, err := stateDir()

			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestTailLog(t *testing.T) {
	var lines []string
	for i := range 30 {
		lines = append(lines, strings.Repeat("x", i))
	}
	earlier := "from an earlier start\n"

	tests := []struct {
		name string
		text string
		want []string
	}{
		{name: "empty", text: "", want: nil},
		{name: "few lines", text: "a\r\nb\n", want: []string{"a", "b"}},
		{name: "no final newline", text: "a\nb", want: []string{"a", "b"}},
		{name: "last 20 lines", text: strings.Join(lines, "\n") + "\n", want: lines[10:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "w.log")
			assert.NilError(t, os.WriteFile(path, []byte(earlier+tc.text), 0o600))

			assert.DeepEqual(t, tailLog(path, int64(len(earlier))), tc.want)
		})
	}
}
