package hive

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// Bounds on what the hive reads back from a worker.
const (
	maxReadyLine = 4096      // bytes of the ready line
	logTailLines = 20        // lines of log in a failed spawn's error
	logTailBytes = 64 * 1024 // bytes of log searched for those lines
)

// spawn starts the worker of spec detached, waits up to timeout for its
// ready line, records it and prints the api.SpawnResult. A worker that does
// not get ready is killed, and the error holds the end of its log.
func spawn(ctx context.Context, a *app, st store, spec workerSpec, timeout time.Duration) error {
	log := a.log.With("worker_id", spec.id)

	logFile, err := os.OpenFile(spec.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return failedErrorf("open worker log: %w", err)
	}
	defer logFile.Close()
	// The log is appended to across restarts: mark where this start begins,
	// and take the tail for an error only from there.
	fmt.Fprintf(logFile, "--- rbee-hive: starting worker %s at %s ---\n",
		spec.id, time.Now().UTC().Format(time.RFC3339))
	logStart, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return failedErrorf("open worker log: %w", err)
	}

	log.Info("starting worker", "bin", spec.bin, "model", spec.modelPath, "device", spec.device)
	cmd, readyR, err := startDetached(spec, logFile)
	if err != nil {
		return failedErrorf("start worker %q: %w", spec.id, err)
	}
	defer readyR.Close()

	port, err := waitReady(ctx, readyR, timeout)
	var w api.HiveWorker
	if err == nil {
		w = spec.record(cmd.Process.Pid, port)
		err = st.write(w)
	}
	if err != nil {
		err = abort(cmd, spec, err)
		log.Warn("worker failed to start", "error", err)
		return &exitError{
			code:    api.HiveExitFailed,
			err:     err,
			logTail: tailLog(spec.logPath, logStart),
		}
	}

	// From here the worker is on its own: the hive exits and init adopts it.
	if err := cmd.Process.Release(); err != nil {
		log.Warn("cannot release worker process", "error", err)
	}
	log.Info("worker ready", "pid", w.PID, "port", w.Port)
	return a.printResult(api.SpawnResult{
		ID: w.ID, PID: w.PID, Port: w.Port, URL: w.URL, LogPath: w.LogPath,
	})
}

// startDetached starts the worker in its own session, so that it outlives
// the hive and the SSH session that ran it, with its output appended to
// logFile. It returns the read end of the ready pipe.
func startDetached(spec workerSpec, logFile *os.File) (*exec.Cmd, *os.File, error) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("create ready pipe: %w", err)
	}
	defer readyW.Close() // the worker holds its own copy

	cmd := &exec.Cmd{
		Path:        spec.bin,
		Args:        spec.argv(),
		Env:         spec.env(),
		Dir:         spec.dir,
		Stdin:       nil, // /dev/null
		Stdout:      logFile,
		Stderr:      logFile,
		ExtraFiles:  []*os.File{readyW}, // fd 3
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		readyR.Close()
		return nil, nil, err
	}
	return cmd, readyR, nil
}

// errNotReady reports a worker that closed its ready pipe (most often by
// exiting) without writing a ready line.
var errNotReady = errors.New("worker closed its ready pipe without writing a ready line")

// waitReady waits for the ready line on r and returns the port in it.
//
// Shortcoming: a worker that dies after handing fd 3 to a child of its own
// keeps the pipe open, so only the timeout notices; llm-worker-rbee starts
// no children.
func waitReady(ctx context.Context, r *os.File, timeout time.Duration) (int, error) {
	type result struct {
		port int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		port, err := readReadyLine(r)
		done <- result{port, err}
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case res := <-done:
		return res.port, res.err
	case <-timer.C:
		err = fmt.Errorf("worker did not report ready within %s", timeout)
	case <-ctx.Done():
		err = fmt.Errorf("interrupted while waiting for the worker: %w", ctx.Err())
	}

	// Closing the pipe ends the read; wait for the reader to return.
	r.Close()
	<-done
	return 0, err
}

// readReadyLine reads and checks one api.ReadyLine.
func readReadyLine(r io.Reader) (int, error) {
	line, err := bufio.NewReader(io.LimitReader(r, maxReadyLine)).ReadBytes('\n')
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
			return 0, fmt.Errorf("read ready pipe: %w", err)
		}
		return 0, errNotReady
	}

	var ready api.ReadyLine
	if err := json.Unmarshal(line, &ready); err != nil {
		return 0, fmt.Errorf("worker wrote a bad ready line %q: %w", line, err)
	}
	if ready.Port < 1 || ready.Port > 65535 {
		return 0, fmt.Errorf("worker wrote a bad ready line %q: port out of range", line)
	}
	return ready.Port, nil
}

// abort kills a worker that failed to start, reaps it, and returns the
// error to report, saying how it ended.
func abort(cmd *exec.Cmd, spec workerSpec, cause error) error {
	// Not reaped yet, so the pid cannot have been reused.
	killErr := killGroup(cmd.Process.Pid)
	waitErr := cmd.Wait()

	how := "killed it"
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) && !killedBySignal(exitErr, syscall.SIGKILL) {
		how = "it ended with " + exitErr.ProcessState.String()
	}
	if killErr != nil {
		how = killErr.Error()
	}
	return fmt.Errorf("worker %q did not start: %w; %s; log: %s", spec.id, cause, how, spec.logPath)
}

func killedBySignal(exitErr *exec.ExitError, sig syscall.Signal) bool {
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// tailLog returns the last lines of the log written after offset, or nil
// when it cannot be read: it only decorates an error.
func tailLog(path string, offset int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()

	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	start := max(offset, fi.Size()-logTailBytes)
	data, err := io.ReadAll(io.NewSectionReader(f, start, fi.Size()-start))
	if err != nil {
		return nil
	}

	text := strings.TrimRight(string(data), "\n")
	if text == "" {
		return nil
	}
	lines := strings.Split(text, "\n")
	if start > offset && len(lines) > 1 {
		lines = lines[1:] // the first line was cut
	}
	lines = lines[max(0, len(lines)-logTailLines):]
	for i, line := range lines {
		lines[i] = strings.TrimSuffix(line, "\r")
	}
	return lines
}
