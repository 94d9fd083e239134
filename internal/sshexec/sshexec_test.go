package sshexec

import (
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestQuote(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want string
	}{
		{name: "plain", argv: []string{"rbee-hive", "version"}, want: "'rbee-hive' version"},
		{name: "spaces", argv: []string{"echo", "a b", " lead"}, want: "'echo' 'a b' ' lead'"},
		{name: "single quote", argv: []string{"echo", "it's"}, want: `'echo' 'it'"'"'s'`},
		{name: "double quote", argv: []string{"echo", `say "hi"`}, want: `'echo' 'say "hi"'`},
		{name: "semicolon", argv: []string{"echo", "a; rm -rf /"}, want: "'echo' 'a; rm -rf /'"},
		{name: "command substitution", argv: []string{"echo", "$(id)"}, want: "'echo' '$(id)'"},
		{name: "backticks", argv: []string{"echo", "`id`"}, want: "'echo' '`id`'"},
		{name: "variable", argv: []string{"echo", "$HOME"}, want: "'echo' '$HOME'"},
		{name: "glob", argv: []string{"echo", "*"}, want: "'echo' '*'"},
		{name: "newline", argv: []string{"echo", "a\nb"}, want: "'echo' 'a\nb'"},
		{name: "unicode", argv: []string{"echo", "héllo ✓"}, want: "'echo' 'héllo ✓'"},
		{name: "empty", argv: []string{"echo", ""}, want: "'echo' ''"},
		{name: "flag", argv: []string{"x", "--id=w-1", "-v"}, want: "'x' --id=w-1 -v"},
		{name: "assignment as program", argv: []string{"A=1", "x"}, want: "'A=1' x"},
		{name: "reserved word as program", argv: []string{"if"}, want: "'if'"},
		{name: "backslash", argv: []string{"echo", `a\b`}, want: `'echo' 'a\b'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Quote(tc.argv)
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)

			assertShellRoundTrip(t, tc.argv[1:])
		})
	}
}

func TestQuoteErrors(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want error
	}{
		{name: "nil argv", argv: nil, want: ErrEmptyArgv},
		{name: "NUL in argument", argv: []string{"echo", "a\x00b"}, want: ErrNUL},
		{name: "NUL in program", argv: []string{"\x00"}, want: ErrNUL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Quote(tc.argv)
			assert.ErrorIs(t, err, tc.want)
		})
	}
}

func FuzzQuote(f *testing.F) {
	seeds := [][3]string{
		{"", "", ""},
		{"a b", "it's", `"x"`},
		{"a; rm -rf /", "$(id)", "`id`"},
		{"a\nb", "\t", "\r\n"},
		{"héllo", "✓", "\xff\xfe"},
		{"$HOME", "${x:-y}", "*?[a]"},
		{`\`, `\\'`, `'\''`},
		{"-n", "--", "%s"},
		{"a\x00b", "", ""},
		{"!", "#", "~"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}

	f.Fuzz(func(t *testing.T, a, b, c string) {
		args := []string{a, b, c}
		if strings.ContainsRune(a+b+c, 0) {
			_, err := Quote(append([]string{"printf"}, args...))
			assert.ErrorIs(t, err, ErrNUL)
			return
		}
		assertShellRoundTrip(t, args)
	})
}

// assertShellRoundTrip checks that /bin/sh, given the quoted command line of
// printf '%s\0' args..., prints exactly args back.
func assertShellRoundTrip(t *testing.T, args []string) {
	t.Helper()
	if len(args) == 0 {
		return
	}

	line, err := Quote(append([]string{"printf", `%s\0`}, args...))
	assert.NilError(t, err)
	out, err := exec.Command("/bin/sh", "-c", line).Output()
	assert.NilError(t, err, "command line: %q", line)

	want := strings.Join(args, "\x00") + "\x00"
	assert.Equal(t, string(out), want, "command line: %q", line)
}

func TestLocalRun(t *testing.T) {
	tests := []struct {
		name       string
		local      Local
		argv       []string
		stdin      string
		wantOut    string
		wantErrOut string
		wantCode   int
	}{
		{
			name:       "success",
			argv:       []string{"sh", "-c", "echo out; echo err >&2"},
			wantOut:    "out\n",
			wantErrOut: "err\n",
		},
		{
			name:     "non-zero exit is not an error",
			argv:     []string{"sh", "-c", "echo failing; exit 3"},
			wantOut:  "failing\n",
			wantCode: 3,
		},
		{
			name:    "stdin",
			argv:    []string{"cat"},
			stdin:   "token\n",
			wantOut: "token\n",
		},
		{
			name:    "extra env",
			local:   Local{Env: []string{"RBEE_SSHEXEC_TEST=yes"}},
			argv:    []string{"sh", "-c", `printf %s "$RBEE_SSHEXEC_TEST"`},
			wantOut: "yes",
		},
		{
			name:    "no shell between argv and the program",
			argv:    []string{"printf", "%s", "$(id); `id`"},
			wantOut: "$(id); `id`",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdin io.Reader
			if tc.stdin != "" {
				stdin = strings.NewReader(tc.stdin)
			}

			res, err := tc.local.Run(context.Background(), tc.argv, stdin)

			assert.NilError(t, err)
			assert.Equal(t, string(res.Stdout), tc.wantOut)
			assert.Equal(t, string(res.Stderr), tc.wantErrOut)
			assert.Equal(t, res.ExitCode, tc.wantCode)
		})
	}
}

func TestLocalRunErrors(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	t.Cleanup(cancelShort)

	tests := []struct {
		name    string
		ctx     context.Context
		argv    []string
		wantErr string
	}{
		{name: "empty argv", ctx: context.Background(), wantErr: "empty argv"},
		{
			name:    "missing program",
			ctx:     context.Background(),
			argv:    []string{"/nonexistent/rbee-hive", "version"},
			wantErr: "no such file",
		},
		{
			name:    "cancelled before start",
			ctx:     cancelled,
			argv:    []string{"sleep", "10"},
			wantErr: "context canceled",
		},
		{
			name:    "deadline while running",
			ctx:     short,
			argv:    []string{"sleep", "10"},
			wantErr: "deadline exceeded",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Local{}.Run(tc.ctx, tc.argv, nil)
			assert.Check(t, is.ErrorContains(err, tc.wantErr))
		})
	}
}
