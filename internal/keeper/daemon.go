package keeper

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// queenBinary is the name of the queen's executable.
const queenBinary = "queen-rbee"

// logTailLines is how many of the queen's last log lines a failed start shows.
const logTailLines = 20

// lookPath finds a program on $PATH; a variable so that the lookup order
// can be tested.
var lookPath = exec.LookPath

// findQueenBinary returns the queen-rbee next to the running executable,
// where `make build` and installs put it, else the one on $PATH.
func findQueenBinary(executable func() (string, error),
	lookPath func(string) (string, error)) (string, error) {
	where := "rbee"
	if exe, err := executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dir := filepath.Dir(exe)
		candidate := filepath.Join(dir, queenBinary)
		if isExecutable(candidate) {
			return candidate, nil
		}
		where = dir
	}
	if p, err := lookPath(queenBinary); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is not in %s nor on $PATH: build it with `make build`, "+
		"or install it next to rbee", queenBinary, where)
}

// isExecutable reports whether path is a regular file someone may execute.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// defaultLogPath returns $XDG_STATE_HOME/rbee/queen.log, else
// ~/.local/state/rbee/queen.log.
func defaultLogPath(getenv func(string) string) (string, error) {
	state := getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(state) {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("$HOME is not set: give the queen's log file with --log")
		}
		state = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(state, "rbee", "queen.log"), nil
}

// detached is a process started in its own session, no longer ours to wait for.
type detached struct {
	pid       int
	logPath   string
	logOffset int64 // where this run's output starts in the log
}

// startDetached starts bin in a new session, with stdin from /dev/null
// and stdout and stderr appended to logPath, and lets it go: it outlives
// the keeper and the terminal.
func startDetached(bin string, args []string, logPath string) (*detached, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, fmt.Errorf("making the log directory: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the queen's log: %w", err)
	}
	defer logFile.Close()
	offset, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("opening the queen's log: %w", err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	defer devNull.Close()

	cmd := exec.Command(bin, args...)
	cmd.Stdin = devNull
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return nil, fmt.Errorf("letting %s go: %w", bin, err)
	}
	return &detached{pid: pid, logPath: logPath, logOffset: offset}, nil
}

// processAlive reports whether the process pid still runs. A child that
// ended stays a zombie, which kill -0 still finds, until it is reaped; so a
// child of ours is asked with a non-blocking wait (which reaps it), and
// only another process with kill -0.
func processAlive(pid int) bool {
	var status syscall.WaitStatus
	wpid, err := syscall.Wait4(pid, &status, syscall.WNOHANG, nil)
	switch {
	case err == nil:
		return wpid == 0 // 0: our child runs still; pid: it ended
	case errors.Is(err, syscall.EINTR):
		return true
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// logTail describes the last n lines written to the file at path from
// offset on, for an error message.
func logTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("its log %s cannot be read: %v", path, err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("its log %s cannot be read: %v", path, err)
	}
	lines, err := lastLines(f, n)
	if err != nil {
		return fmt.Sprintf("its log %s cannot be read: %v", path, err)
	}
	if len(lines) == 0 {
		return fmt.Sprintf("it wrote nothing to its log %s", path)
	}
	return fmt.Sprintf("the last lines of its log %s:\n    %s", path, strings.Join(lines, "\n    "))
}

// lastLines returns the last n lines of r, without their line endings.
func lastLines(r io.Reader, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	ring := make([]string, 0, n)
	next := 0 // where the next line goes once ring is full
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			line = strings.TrimRight(line, "\r\n")
			if len(ring) < n {
				ring = append(ring, line)
			} else {
				ring[next] = line
				next = (next + 1) % n
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return append(ring[next:], ring[:next]...), nil
}
