package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"
)

// followLogs runs `rbee worker logs -f` and returns its stdout lines as
// they arrive; the command is interrupted at the end of the test.
func (c *cluster) followLogs(t *testing.T, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "rbee"), append([]string{"worker", "logs"}, args...)...)
	cmd.Env = c.env
	out, err := cmd.StdoutPipe()
	assert.NilError(t, err)
	assert.NilError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// follow starts `rbee worker logs ID flag` and returns once its stream
// runs: it writes a line to log first and waits for it among the last ones.
func (c *cluster) follow(t *testing.T, log *os.File, id, flag string) (*exec.Cmd, <-chan string) {
	t.Helper()
	_, err := log.WriteString("follow starts here\n")
	assert.NilError(t, err)
	cmd, lines := c.followLogs(t, id, flag, "--tail", "5")
	waitLine(t, lines, "follow starts here")
	return cmd, lines
}

// waitLine reads lines until one equals want.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			assert.Assert(t, ok, "the log stream ended before %q", want)
			if line == want {
				return
			}
		case <-timeout:
			t.Fatalf("no line %q within 20s", want)
		}
	}
}

// hiveLogsRunning reports whether an rbee-hive `worker logs` for id runs.
func hiveLogsRunning(id string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) > 3 && strings.HasSuffix(args[0], "rbee-hive") && strings.Contains(
			strings.Join(args[1:], " "), "worker logs "+id) {
			return true
		}
	}
	return false
}

func TestWorkerLogsFollowOverSSH(t *testing.T) {
	h := startSSHHive(t, "gpu1", "127.0.0.2")
	c := newCluster(t, clusterOptions{advertise: true, heartbeatInterval: 300 * time.Millisecond})
	c.addHive(h)
	c.installHive(h.name)
	w := c.spawn("--hive", h.name)

	logPath := filepath.Join(h.server.Home, ".local", "state", "rbee", "workers", w.ID+".log")
	logFile, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	assert.NilError(t, err, "the worker's log on the remote HOME")
	defer logFile.Close()

	t.Run("tail without follow", func(t *testing.T) {
		_, err := logFile.WriteString("marker before\n")
		assert.NilError(t, err)
		out := c.mustRbee("worker", "logs", w.ID, "--tail", "1000")
		assert.Assert(t, is.Contains(out, "marker before\n"))
	})

	follower, lines := c.follow(t, logFile, w.ID, "-f")
	for _, marker := range []string{"marker 1", "marker 2", "marker 3"} {
		_, err := logFile.WriteString(marker + "\n")
		assert.NilError(t, err)
		waitLine(t, lines, marker)
	}

	// The client leaves: the queen stops the command on the hive.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if !hiveLogsRunning(w.ID) {
			return poll.Continue("rbee-hive worker logs is not running yet")
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(20*time.Millisecond))
	assert.NilError(t, follower.Process.Signal(syscall.SIGINT))
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if hiveLogsRunning(w.ID) {
			return poll.Continue("rbee-hive worker logs still runs on the hive")
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(50*time.Millisecond))

	t.Run("unknown worker", func(t *testing.T) {
		_, errOut, code := c.rbee("worker", "logs", "w-nope")
		assert.Equal(t, code, 1)
		assert.Assert(t, is.Contains(errOut, "w-nope"))
	})
}

func TestWorkerLogsLocalHive(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	w := c.spawn()
	logFile, err := os.OpenFile(filepath.Join(c.hiveDir, "workers", w.ID+".log"),
		os.O_APPEND|os.O_WRONLY, 0)
	assert.NilError(t, err)
	defer logFile.Close()

	_, lines := c.follow(t, logFile, w.ID, "--follow")
	_, err = logFile.WriteString("local marker\n")
	assert.NilError(t, err)
	waitLine(t, lines, "local marker")

	// Once the worker is stopped and its record gone, follow ends by itself.
	c.mustRbee("worker", "stop", w.ID)
	timeout := time.After(20 * time.Second)
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("follow did not end after the worker stopped")
		}
	}
}
