package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// sshHive is one sshtest server playing a remote hive.
type sshHive struct {
	name   string
	server *sshtest.Server
}

// startSSHHive starts sshd on addr for hive name. At the end of the test it
// kills every worker the hive recorded under the server's HOME (workers
// outlive sshd, as they would a dropped SSH connection), and prints their
// logs when the test failed. Call it before newCluster, so that the queen
// stops first.
func startSSHHive(t *testing.T, name, addr string, opts ...sshtest.Option) *sshHive {
	t.Helper()
	h := &sshHive{name: name, server: sshtest.StartServer(t, addr, opts...)}
	t.Cleanup(func() {
		dir := filepath.Join(h.server.Home, ".local", "state", "rbee", "workers")
		records, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, rec := range records {
			var w api.HiveWorker
			if data, err := os.ReadFile(rec); err == nil && json.Unmarshal(data, &w) == nil &&
				w.PID > 0 {
				_ = syscall.Kill(w.PID, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				t.Logf("worker log %s on hive %s:\n%s", filepath.Base(l), name, data)
			}
		}
	})
	return h
}

// ssh is the --ssh argument for the hive.
func (h *sshHive) ssh() string {
	return h.server.User + "@" + h.server.Addr + ":" + strconv.Itoa(h.server.Port)
}

// add runs `rbee hive add` for h, trusting its host key.
func (c *cluster) addHive(h *sshHive) api.Hive {
	c.t.Helper()
	out := c.mustRbee("hive", "add", h.name, "--ssh", h.ssh(), "-i", h.server.ClientKeyPath,
		"--accept-new-host-key", "--json")
	var hive api.Hive
	assert.NilError(c.t, json.Unmarshal([]byte(out), &hive))
	return hive
}

// installHive runs `rbee hive install` and returns its result.
func (c *cluster) installHive(name string) api.HiveInstallResult {
	c.t.Helper()
	var res api.HiveInstallResult
	assert.NilError(c.t, json.Unmarshal([]byte(c.mustRbee("hive", "install", name, "--json")), &res))
	return res
}

// complete asks the queen for a short completion of model.
func (c *cluster) complete(model string) string {
	c.t.Helper()
	status, body := c.postJSON("/v1/completions",
		`{"model":"`+model+`","prompt":"Once upon a time","max_tokens":16,"temperature":0}`)
	assert.Equal(c.t, status, http.StatusOK, string(body))
	var out struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	assert.NilError(c.t, json.Unmarshal(body, &out))
	assert.Equal(c.t, len(out.Choices), 1)
	return out.Choices[0].Text
}

func TestSSHHivesEndToEnd(t *testing.T) {
	hives := []*sshHive{startSSHHive(t, "gpu1", "127.0.0.2"), startSSHHive(t, "gpu2", "127.0.0.3")}
	c := newCluster(t, clusterOptions{advertise: true, heartbeatInterval: 300 * time.Millisecond})

	workers := map[string]api.Worker{}
	for _, h := range hives {
		added := c.addHive(h)
		assert.Equal(t, added.Host, h.server.Addr)
		assert.Equal(t, added.Port, h.server.Port)
		assert.Equal(t, added.HiveBin, "~/.local/bin/rbee-hive")

		res := c.installHive(h.name)
		assert.Equal(t, res.Hive.ProtocolVersion, api.ProtocolVersion)
		assert.Assert(t, len(res.Files) >= 2)
		for _, f := range res.Files {
			assert.Equal(t, f.Action, "uploaded", f.Path)
		}
		installed := filepath.Join(h.server.Home, ".local", "bin", "rbee-hive")
		fi, err := os.Stat(installed)
		assert.NilError(t, err)
		assert.Assert(t, fi.Mode()&0o111 != 0)

		// A second install finds the same bytes and copies nothing.
		for _, f := range c.installHive(h.name).Files {
			assert.Equal(t, f.Action, "unchanged", f.Path)
		}

		var checked api.Hive
		out := c.mustRbee("hive", "check", h.name, "--json")
		assert.NilError(t, json.Unmarshal([]byte(out), &checked))
		assert.Assert(t, checked.Reachable)
		assert.Equal(t, checked.ProtocolVersion, api.ProtocolVersion)
		assert.Assert(t, checked.OS != "" && checked.Arch != "" && checked.CheckedAt != nil)

		w := c.spawn("--hive", h.name, "--name", "m-"+h.name)
		assert.Equal(t, w.Hive, h.name)
		assert.Assert(t, is.Contains(w.URL, h.server.Addr), w.URL)
		workers[h.name] = w
	}

	list := c.mustRbee("hive", "list")
	for _, h := range hives {
		assert.Assert(t, is.Contains(list, h.name))
	}
	for _, h := range hives {
		assert.Assert(t, len(strings.TrimSpace(c.complete("m-"+h.name))) > 0)
	}

	t.Run("uninstall refused while a worker runs", func(t *testing.T) {
		_, errOut, code := c.rbee("hive", "uninstall", "gpu1")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "--force"))
	})

	for _, h := range hives {
		c.mustRbee("worker", "stop", workers[h.name].ID)
		out := c.mustRbee("hive", "uninstall", h.name)
		assert.Assert(t, is.Contains(out, "~/.local/bin/rbee-hive"))
		_, err := os.Stat(filepath.Join(h.server.Home, ".local", "bin", "rbee-hive"))
		assert.Assert(t, os.IsNotExist(err))

		_, errOut, code := c.rbee("hive", "check", h.name)
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "rbee hive install "+h.name))
		c.mustRbee("hive", "rm", h.name)
	}
}

func TestSSHHiveRefusals(t *testing.T) {
	h := startSSHHive(t, "gpu1", "127.0.0.2")
	c := newCluster(t, clusterOptions{})

	t.Run("unknown host key", func(t *testing.T) {
		_, errOut, code := c.rbee("hive", "add", "gpu1", "--ssh", h.ssh(),
			"-i", h.server.ClientKeyPath)
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "--accept-new-host-key"))
		_, _, code = c.rbee("hive", "check", "gpu1")
		assert.Equal(t, code, 1, "a refused hive is not recorded")
	})

	c.addHive(h)
	t.Run("not installed", func(t *testing.T) {
		_, errOut, code := c.rbee("hive", "check", "gpu1")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "rbee hive install gpu1"))
	})
	t.Run("another protocol version", func(t *testing.T) {
		bin := filepath.Join(h.server.Home, ".local", "bin", "rbee-hive")
		assert.NilError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
		script := "#!/bin/sh\necho '{\"version\":\"old\",\"protocol_version\":99}'\n"
		assert.NilError(t, os.WriteFile(bin, []byte(script), 0o755))
		defer os.Remove(bin)
		_, errOut, code := c.rbee("hive", "check", "gpu1")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "protocol 99"))
		assert.Assert(t, is.Contains(errOut, "run `rbee hive install gpu1`"))
	})
	t.Run("spawn without an advertised URL", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "spawn", "-m", c.model.Path, "--hive", "gpu1")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "--advertise-url"))
		assert.Assert(t, is.Contains(errOut, "ssh -R"))
	})
}

func TestSSHHiveDownKeepsWorkerServing(t *testing.T) {
	h := startSSHHive(t, "gpu1", "127.0.0.3")
	c := newCluster(t, clusterOptions{advertise: true, heartbeatInterval: 300 * time.Millisecond})
	c.addHive(h)
	c.installHive(h.name)
	w := c.spawn("--hive", h.name)

	h.server.Stop()
	start := time.Now()
	out, errOut, code := c.rbee("hive", "check", h.name, "--json")
	took := time.Since(start)
	assert.Equal(t, code, 1, errOut)
	assert.Assert(t, is.Contains(errOut, "unreachable"))
	assert.Assert(t, took < 6*time.Second, "check took %s", took)
	var checked api.Hive
	assert.NilError(t, json.Unmarshal([]byte(out), &checked))
	assert.Assert(t, !checked.Reachable)

	// The worker runs on, detached from SSH, and keeps heartbeating.
	assert.Assert(t, len(strings.TrimSpace(c.complete(w.Model))) > 0)
	assert.Equal(t, c.worker(w.ID).State, api.WorkerReady)
}
