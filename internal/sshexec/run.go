package sshexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// killGrace is how long a cancelled command has between SIGTERM and
	// SIGKILL.
	killGrace = 2 * time.Second
	// maxLine bounds the bytes Stream buffers while waiting for a newline;
	// a longer line is delivered in pieces of this size.
	maxLine = 1 << 20
)

// Run runs argv on t and returns what it printed. It has Runner.Run's
// contract: a non-zero exit is Result.ExitCode, not an error. When ctx ends
// first, the remote command is sent SIGTERM, then SIGKILL, and the session
// closed.
func (p *Pool) Run(ctx context.Context, t Target, argv []string, stdin io.Reader) (Result, error) {
	var stdout bytes.Buffer
	res, err := p.run(ctx, t, argv, stdin, &stdout)
	res.Stdout = stdout.Bytes()
	return res, err
}

// Stream runs argv on t like Run, but hands each line of stdout to onLine
// as soon as it arrives (without its newline; a last line without one is
// delivered at the end), so that the caller can relay progress. onLine is
// called from one goroutine at a time and may keep the slice. Result.Stdout
// stays empty: stdout went to onLine. Stderr is kept in Result.Stderr.
func (p *Pool) Stream(ctx context.Context, t Target, argv []string, stdin io.Reader,
	onLine func([]byte)) (Result, error) {
	w := &lineWriter{onLine: onLine}
	res, err := p.run(ctx, t, argv, stdin, w)
	w.flush()
	return res, err
}

// run runs argv on t, writing its stdout to stdout.
func (p *Pool) run(ctx context.Context, t Target, argv []string, stdin io.Reader,
	stdout io.Writer) (Result, error) {
	res := Result{ExitCode: -1}
	line, err := Quote(argv)
	if err != nil {
		return res, err
	}
	t, err = t.withDefaults()
	if err != nil {
		return res, err
	}
	if p.cfg.CommandTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.CommandTimeout)
		defer cancel()
	}
	fail := func(err error) (Result, error) {
		return res, fmt.Errorf("run %s on %s: %w", argv[0], t, err)
	}

	h, err := p.host(t)
	if err != nil {
		return fail(err)
	}
	select {
	case h.sessions <- struct{}{}:
		defer func() { <-h.sessions }()
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	c, s, err := p.session(ctx, h)
	if err != nil {
		return fail(err)
	}
	defer s.Close()

	// Sealed once run returns: a command abandoned after waitDelay may
	// still be copying output, which must then go nowhere.
	var stderr bytes.Buffer
	stdoutW, stderrW := &sealWriter{w: stdout}, &sealWriter{w: &stderr}
	cmd := &remoteCommand{client: c, session: s, stderr: newPGIDWriter(stderrW)}
	waitErr := cmd.run(ctx, line, stdin, stdoutW)
	stdoutW.seal()
	stderrW.seal()
	res.Stderr = stderr.Bytes()
	if err := commandResult(ctx, &res, waitErr); err != nil {
		return fail(err)
	}
	return res, nil
}

// commandResult sets res.ExitCode from what Wait returned, and returns the
// error Run reports: none for an exit status, ctx's error for a cancelled
// command, ErrDisconnected for a command whose end was never reported.
func commandResult(ctx context.Context, res *Result, waitErr error) error {
	var exitErr *ssh.ExitError
	switch {
	case waitErr == nil:
		res.ExitCode = 0
	case errors.As(waitErr, &exitErr):
		if exitErr.Signal() == "" {
			res.ExitCode = exitErr.ExitStatus()
		}
	}
	switch {
	case ctx.Err() != nil && waitErr != nil:
		return ctx.Err()
	case waitErr == nil || exitErr != nil:
		return nil
	default:
		return fmt.Errorf("%w before the command finished (it may or may not have run): %w",
			ErrDisconnected, waitErr)
	}
}

// remoteCommand is one command running in its session.
type remoteCommand struct {
	client  *ssh.Client
	session *ssh.Session
	stderr  *pgidWriter
	done    chan error
}

// pgidMarker starts the line the remote shell prints on stderr before it
// becomes the command: the command's process group (sshd makes the login
// shell a session leader), which a cancelled command is killed by.
const pgidMarker = "rbee-sshexec-pgid "

// run runs the quoted command line and waits for it. When ctx ends first,
// it stops the command (see stop).
func (rc *remoteCommand) run(ctx context.Context, line string, stdin io.Reader,
	stdout io.Writer) error {
	s := rc.session
	s.Stdin = stdin
	s.Stdout = stdout
	s.Stderr = rc.stderr
	// exec: the shell becomes the command, so that what signals the
	// group (or the session) reaches the command itself.
	command := `echo "` + pgidMarker + `$$" >&2; exec ` + line
	if err := s.Start(command); err != nil {
		return err
	}
	rc.done = make(chan error, 1)
	go func() {
		err := s.Wait()
		rc.stderr.flush()
		rc.done <- err
	}()

	select {
	case err := <-rc.done:
		return err
	case <-ctx.Done():
		return rc.stop(ctx)
	}
}

// stop ends a cancelled command: SIGTERM, then SIGKILL after killGrace,
// each sent both as an SSH signal request and by running kill on the
// command's process group in a second session, since sshd refuses signal
// requests in some setups (a root login, OpenSSH before 7.9). It returns
// once the command is gone, or after waitDelay more: Wait also waits for
// stdin to be copied, and a stdin reader that never returns would hold it.
func (rc *remoteCommand) stop(ctx context.Context) error {
	grace := time.NewTimer(killGrace)
	defer grace.Stop()
	_ = rc.session.Signal(ssh.SIGTERM)
	pgid := 0
	pgids := rc.stderr.pgid
	for grace != nil {
		select {
		case err := <-rc.done:
			return err
		case pgid = <-pgids:
			pgids = nil
			rc.killGroup("TERM", pgid)
		case <-grace.C:
			grace = nil
		}
	}

	_ = rc.session.Signal(ssh.SIGKILL)
	if pgid != 0 {
		rc.killGroup("KILL", pgid)
	}
	rc.session.Close()

	wait := time.NewTimer(waitDelay)
	defer wait.Stop()
	select {
	case err := <-rc.done:
		return err
	case <-wait.C:
		return ctx.Err()
	}
}

// killGroup sends sig to process group pgid from a session of its own. A
// connection that cannot do that within killGrace is not answering: it is
// closed, which also ends the cancelled command's session.
func (rc *remoteCommand) killGroup(sig string, pgid int) {
	ctx, cancel := context.WithTimeout(context.Background(), killGrace)
	defer cancel()
	s, err := openSession(ctx, rc.client)
	if err != nil {
		if ctx.Err() != nil {
			rc.client.Close()
		}
		return
	}
	defer s.Close()

	line, err := Quote([]string{"kill", "-" + sig, "--", "-" + strconv.Itoa(pgid)})
	if err != nil {
		return
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(line) }()
	select {
	case <-done:
	case <-ctx.Done():
		rc.client.Close()
		<-done
	}
}

// pgidWriter passes a command's stderr through, taking out the line that
// carries its process group id and handing that id to pgid.
type pgidWriter struct {
	w     io.Writer
	pgid  chan int
	found bool
	buf   []byte // an incomplete line, while the marker is not found yet
}

// newPGIDWriter returns a pgidWriter writing to w.
func newPGIDWriter(w io.Writer) *pgidWriter {
	return &pgidWriter{w: w, pgid: make(chan int, 1)}
}

func (p *pgidWriter) Write(b []byte) (int, error) {
	if p.found {
		return p.w.Write(b)
	}
	n := len(b)
	p.buf = append(p.buf, b...)
	for !p.found {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 && len(p.buf) > maxLine {
			p.found = true // no marker is coming: stop looking
			break
		}
		if i < 0 {
			return n, nil
		}
		line := p.buf[:i]
		if rest, ok := bytes.CutPrefix(line, []byte(pgidMarker)); ok {
			if pgid, err := strconv.Atoi(string(rest)); err == nil && pgid > 1 {
				p.found = true
				p.pgid <- pgid
				p.buf = p.buf[i+1:]
				continue
			}
		}
		// Something the login shell printed first: not ours.
		if _, err := p.w.Write(p.buf[:i+1]); err != nil {
			return n, err
		}
		p.buf = p.buf[i+1:]
	}
	_, err := p.w.Write(p.buf)
	p.buf = nil
	return n, err
}

// flush passes on an incomplete line held while looking for the marker.
func (p *pgidWriter) flush() {
	if len(p.buf) > 0 {
		_, _ = p.w.Write(p.buf)
		p.buf = nil
	}
}

// lineWriter hands complete lines to onLine.
type lineWriter struct {
	onLine func([]byte)
	buf    []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			w.buf = append(w.buf, b...)
			b = nil
		} else {
			w.buf = append(w.buf, b[:i]...)
			b = b[i+1:]
		}
		for len(w.buf) > maxLine {
			w.emit(w.buf[:maxLine])
			w.buf = w.buf[maxLine:]
		}
		if i >= 0 {
			w.emit(w.buf)
			w.buf = w.buf[:0]
		}
	}
	return n, nil
}

// flush delivers a last line that had no newline.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

func (w *lineWriter) emit(line []byte) {
	w.onLine(bytes.Clone(line))
}

// sealWriter passes writes to w until sealed, and drops them after.
type sealWriter struct {
	mu     sync.Mutex
	w      io.Writer
	sealed bool
}

func (s *sealWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sealed {
		return len(b), nil
	}
	return s.w.Write(b)
}

func (s *sealWriter) seal() {
	s.mu.Lock()
	s.sealed = true
	s.mu.Unlock()
}
