package queen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

const (
	// hiveCommandTimeout bounds one hive command; a spawn waits for the
	// worker to listen, which is quick, since the model loads after.
	hiveCommandTimeout = 90 * time.Second
	// versionTimeout bounds `rbee-hive version`, connecting included.
	versionTimeout = 20 * time.Second
	// exitNotFound is what sh exits with when the program it should exec
	// does not exist: rbee-hive is not installed there.
	exitNotFound = 127
)

// remoteExec runs the program at $HOME/$0 with the remaining arguments: a
// constant script, so that a hive binary under ~/ needs no shell string.
const remoteExec = `exec "$HOME/$0" "$@"`

// hiveClient runs rbee-hive commands on hives and decodes their results.
type hiveClient struct {
	// bin is the rbee-hive program on the local hive.
	bin string
	// local runs commands on the local hive; pool reaches every other one.
	local sshexec.Runner
	pool  *sshexec.Pool
	// observe, when set, records how long each command took.
	observe func(hive string, args []string, d time.Duration)

	mu sync.Mutex
	// verified holds the remote hives whose rbee-hive speaks our protocol,
	// learnt from `rbee-hive version`; forgotten on (un)install.
	verified map[string]bool
}

// target is how the pool reaches remote hive h.
func target(h registry.Hive) sshexec.Target {
	return sshexec.Target{Host: h.Host, Port: h.SSHPort, User: h.SSHUser, KeyPath: h.KeyPath,
		Alias: h.Name}
}

// runnerFor picks how to reach hive h.
func (c *hiveClient) runnerFor(h registry.Hive) (sshexec.Runner, error) {
	if h.Local {
		return c.local, nil
	}
	if c.pool == nil {
		return nil, &httpapi.Error{Status: http.StatusNotImplemented, Type: "server_error",
			Code: "hive_unsupported", Message: fmt.Sprintf(
				"hive %q is remote, and this queen has no SSH pool", h.Name)}
	}
	return c.pool.Runner(target(h)), nil
}

// argv is the command line of `rbee-hive args...` on hive h.
func (c *hiveClient) argv(h registry.Hive, args ...string) []string {
	if h.Local {
		return append([]string{c.bin}, args...)
	}
	bin := h.HiveBin
	if bin == "" {
		bin = registry.DefaultHiveBin
	}
	if rest, ok := strings.CutPrefix(bin, "~/"); ok {
		return append([]string{"sh", "-c", remoteExec, rest}, args...)
	}
	return append([]string{bin}, args...)
}

// setVerified records whether hive name speaks our protocol.
func (c *hiveClient) setVerified(name string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verified == nil {
		c.verified = map[string]bool{}
	}
	if ok {
		c.verified[name] = true
	} else {
		delete(c.verified, name)
	}
}

func (c *hiveClient) isVerified(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verified[name]
}

// run runs `rbee-hive args...` on hive h and decodes its JSON result into
// out. A failing hive command becomes an *httpapi.Error chosen by its exit
// code, carrying the hive's own message. A remote hive is asked for its
// version first (once), and refused when it speaks another protocol.
func (c *hiveClient) run(ctx context.Context, h registry.Hive, args []string, stdin string, out any) error {
	runner, err := c.runnerFor(h)
	if err != nil {
		return err
	}
	if !h.Local && !c.isVerified(h.Name) {
		v, err := c.version(ctx, h)
		if err != nil {
			return err
		}
		if err := checkProtocol(h.Name, v); err != nil {
			return err
		}
		c.setVerified(h.Name, true)
	}

	ctx, cancel := context.WithTimeout(ctx, hiveCommandTimeout)
	defer cancel()
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	res, err := c.timed(ctx, runner, h, args, in)
	if err != nil {
		return sshError(h.Name, err)
	}
	if res.ExitCode == exitNotFound && !h.Local {
		return notInstalled(h)
	}
	if res.ExitCode != api.HiveExitOK {
		return hiveFailure(h.Name, args, res)
	}
	if err := json.Unmarshal(res.Stdout, out); err != nil {
		return httpapi.Upstream(err, "hive %q printed a result rbee cannot read (is its "+
			"rbee-hive the same version as the queen? `rbee hive install %s`)", h.Name, h.Name)
	}
	return nil
}

// timed runs `rbee-hive args...` on h with runner, recording its latency.
func (c *hiveClient) timed(ctx context.Context, runner sshexec.Runner, h registry.Hive,
	args []string, stdin io.Reader) (sshexec.Result, error) {
	start := time.Now()
	res, err := runner.Run(ctx, c.argv(h, args...), stdin)
	if c.observe != nil {
		c.observe(h.Name, args, time.Since(start))
	}
	return res, err
}

// version runs `rbee-hive version` on h.
func (c *hiveClient) version(ctx context.Context, h registry.Hive) (api.HiveVersion, error) {
	var v api.HiveVersion
	runner, err := c.runnerFor(h)
	if err != nil {
		return v, err
	}
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	res, err := c.timed(ctx, runner, h, []string{"version"}, nil)
	switch {
	case err != nil:
		return v, sshError(h.Name, err)
	case res.ExitCode == exitNotFound && !h.Local:
		return v, notInstalled(h)
	case res.ExitCode != api.HiveExitOK:
		return v, hiveFailure(h.Name, []string{"version"}, res)
	}
	if err := json.Unmarshal(res.Stdout, &v); err != nil {
		return v, &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
			Code: "hive_version_mismatch", Err: err, Message: fmt.Sprintf(
				"hive %q: its rbee-hive version printed something this queen cannot read; "+
					"run `rbee hive install %s`", h.Name, h.Name)}
	}
	return v, nil
}

// checkProtocol refuses a hive whose rbee-hive speaks another protocol.
func checkProtocol(hive string, v api.HiveVersion) error {
	if v.ProtocolVersion == api.ProtocolVersion {
		return nil
	}
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: "hive_version_mismatch", Message: fmt.Sprintf(
			"hive %q runs rbee-hive %s (protocol %d), but this queen speaks protocol %d: "+
				"run `rbee hive install %s`", hive, v.Version, v.ProtocolVersion,
			api.ProtocolVersion, hive)}
}

// notInstalled is the error for a hive without rbee-hive.
func notInstalled(h registry.Hive) error {
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: "hive_not_installed", Message: fmt.Sprintf(
			"rbee-hive is not installed on hive %q (%s): run `rbee hive install %s`",
			h.Name, h.HiveBin, h.Name)}
}

// sshError turns a failure to run a command on a hive into an API error;
// sshexec's messages already say what to do.
func sshError(hive string, err error) error {
	e := &httpapi.Error{Status: http.StatusBadGateway, Type: "server_error",
		Code: "hive_unreachable", Err: err,
		Message: fmt.Sprintf("could not run rbee-hive on hive %q: %v", hive, err)}
	switch {
	case errors.Is(err, sshexec.ErrUnknownHost):
		e.Status, e.Type, e.Code = http.StatusConflict, "invalid_request_error", "unknown_host_key"
	case errors.Is(err, sshexec.ErrHostKeyChanged):
		e.Status, e.Type, e.Code = http.StatusConflict, "invalid_request_error", "host_key_changed"
	case errors.Is(err, sshexec.ErrAuth):
		e.Code = "ssh_auth_failed"
	case errors.Is(err, context.DeadlineExceeded):
		e.Status, e.Code = http.StatusGatewayTimeout, "hive_timeout"
	}
	return e
}

// hiveFailure maps a hive's exit code and error result to an API error.
func hiveFailure(hive string, args []string, res sshexec.Result) error {
	var he api.HiveError
	if json.Unmarshal(res.Stdout, &he) != nil || he.Error == "" {
		he.Error = strings.TrimSpace(lastLines(string(res.Stderr), 5))
	}
	msg := fmt.Sprintf("hive %q: %s", hive, he.Error)
	if len(he.LogTail) > 0 {
		msg += "\nlast lines of the worker's log:\n" + strings.Join(he.LogTail, "\n")
	}
	cmd := strings.Join(args[:min(2, len(args))], " ")
	switch res.ExitCode {
	case api.HiveExitNotFound:
		return &httpapi.Error{Status: http.StatusNotFound, Type: "invalid_request_error",
			Code: "not_found", Message: msg}
	case api.HiveExitUsage:
		return &httpapi.Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
			Code: "hive_rejected", Message: msg}
	case api.HiveExitNoFit:
		return &httpapi.Error{Status: http.StatusUnprocessableEntity, Type: "invalid_request_error",
			Code: "does_not_fit", Message: msg}
	}
	return &httpapi.Error{Status: http.StatusBadGateway, Type: "server_error",
		Code: "hive_failed", Message: msg,
		Err: fmt.Errorf("rbee-hive %s exited %d", cmd, res.ExitCode)}
}

// lastLines keeps the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
