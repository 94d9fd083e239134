package hive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// workerArgv0 is the program name every worker is started with, whatever
// the path of its binary, so that /proc/PID/cmdline identifies it.
const workerArgv0 = "llm-worker-rbee"

// pollInterval is how often the hive checks whether a process has exited.
const pollInterval = 20 * time.Millisecond

// procRoot is where the proc filesystem is mounted.
const procRoot = "/proc"

// alive reports whether pid is a running worker started with --id id.
//
// A pid alone is not enough: after the worker exits, the kernel may give
// its pid to another process. Where /proc can be read, the process must
// also be named llm-worker-rbee and carry --id id; a zombie (exited, not
// yet reaped) has an empty command line and so is not alive. Without a
// readable /proc, only the existence of the pid is checked.
func alive(pid int, id string) bool {
	// pid 0 and -1 address groups of processes, never one worker.
	if pid <= 1 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return false // ESRCH: gone; EPERM: another user's process, not ours
	}

	cmdline, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(procRoot, "self")); statErr != nil {
			return true // no /proc on this system
		}
		return false
	}
	return isWorkerCmdline(cmdline, id)
}

// isWorkerCmdline reports whether a NUL-separated command line is that of
// the worker with the given id.
func isWorkerCmdline(cmdline []byte, id string) bool {
	args := bytes.Split(bytes.TrimSuffix(cmdline, []byte{0}), []byte{0})
	if len(args) == 0 || filepath.Base(string(args[0])) != workerArgv0 {
		return false
	}
	for i, arg := range args {
		if string(arg) == "--id="+id {
			return true
		}
		if string(arg) == "--id" && i+1 < len(args) && string(args[i+1]) == id {
			return true
		}
	}
	return false
}

// errStillRunning reports that a process outlived the time given to it.
var errStillRunning = errors.New("process still running")

// waitGone polls until the worker pid with id is no longer alive, or
// timeout passes (errStillRunning), or ctx is done.
func waitGone(ctx context.Context, pid int, id string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	for alive(pid, id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errStillRunning
		case <-tick.C:
		}
	}
	return nil
}

// killGroup sends SIGKILL to the process group of pid, which the worker
// leads since it was started in its own session, so that any child it
// started dies with it. It falls back to pid alone.
func killGroup(pid int) error {
	if pid <= 1 {
		return fmt.Errorf("refusing to kill pid %d", pid)
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err == nil {
		return nil
	}
	err := syscall.Kill(pid, syscall.SIGKILL)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill worker: %w", err)
	}
	return nil
}
