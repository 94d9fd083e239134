package queen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// hiveCommandTimeout bounds one hive command; a spawn waits for the worker
// to listen, which is quick, since the model loads after.
const hiveCommandTimeout = 90 * time.Second

// hiveClient runs rbee-hive commands on hives and decodes their results.
type hiveClient struct {
	// bin is the rbee-hive program on the local hive.
	bin string
	// runner runs a command on a hive. Only the local hive exists until
	// SSH hives land; every hive command goes through runnerFor so that
	// remote hives slot in without touching the callers.
	local sshexec.Runner
}

// runnerFor picks how to reach hive h.
func (c *hiveClient) runnerFor(h registry.Hive) (sshexec.Runner, error) {
	if h.Local {
		return c.local, nil
	}
	return nil, &httpapi.Error{Status: http.StatusNotImplemented, Type: "invalid_request_error",
		Code: "hive_unsupported", Message: fmt.Sprintf(
			"hive %q is remote, and this queen drives only the local hive so far", h.Name)}
}

// run runs `rbee-hive args...` on hive h and decodes its JSON result into
// out. A failing hive command becomes an *httpapi.Error chosen by its exit
// code, carrying the hive's own message.
func (c *hiveClient) run(ctx context.Context, h registry.Hive, args []string, stdin string, out any) error {
	runner, err := c.runnerFor(h)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, hiveCommandTimeout)
	defer cancel()
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	argv := append([]string{c.bin}, args...)
	res, err := runner.Run(ctx, argv, in)
	if err != nil {
		return httpapi.Upstream(err, "could not run rbee-hive on hive %q: %v", h.Name, err)
	}
	if res.ExitCode != api.HiveExitOK {
		return hiveFailure(h.Name, args, res)
	}
	if err := json.Unmarshal(res.Stdout, out); err != nil {
		return httpapi.Upstream(err, "hive %q printed a result rbee cannot read (is its "+
			"rbee-hive the same version as the queen?)", h.Name)
	}
	return nil
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
