package workerd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
)

// Exit codes of the worker.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// Main runs the worker until SIGTERM or SIGINT and returns its exit code.
func Main(args []string, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "llm-worker-rbee: %v\n", err)
		return exitUsage
	}
	log := newLogger(stderr, cfg.Verbose)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("worker failed", "worker_id", cfg.ID, "error", err)
		return exitFailed
	}
	return exitOK
}

// newLogger logs to stderr (the hive sends it to the worker's log file).
// llama.cpp's own chatter goes through slog's default logger, which stays
// at warn unless --verbose.
func newLogger(stderr io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	cppLevel := slog.LevelWarn
	if verbose {
		level, cppLevel = slog.LevelDebug, slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cppLevel})))
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listen on %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	w := &worker{cfg: cfg, log: log.With("worker_id", cfg.ID), state: api.WorkerLoading,
		url: "http://" + net.JoinHostPort(advertisedHost(cfg.Host), strconv.Itoa(port))}
	srv := &http.Server{Handler: w.routes(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	w.log.Info("listening", "url", w.url)
	if err := reportReady(cfg.ReadyFD, port); err != nil {
		w.log.Warn("ready report failed", "error", err)
	}

	beats := w.startHeartbeats(ctx)
	engineCtx, stopEngine := context.WithCancel(context.Background())
	engineDone := make(chan struct{})
	m, err := loadModel(cfg, w.log)
	if err != nil {
		w.setState(api.WorkerFailed, err.Error())
		beats.finish(w.heartbeat())
		_ = srv.Close()
		stopEngine()
		return err
	}
	defer m.model.Close()
	go func() { defer close(engineDone); m.engine.Run(engineCtx) }()
	w.mu.Lock()
	w.engine, w.chatTemplate = m.engine, m.info.ChatTemplate
	w.mu.Unlock()
	w.setState(api.WorkerReady, "")
	beats.kick()
	w.log.Info("ready", "model", cfg.Name, "slots", cfg.Slots, "device", cfg.Device.String())

	select {
	case <-ctx.Done():
	case <-beats.retired:
		w.log.Warn("the queen stopped this worker; shutting down")
	case err := <-serveErr:
		w.log.Error("server stopped", "error", err)
	}
	w.shutdown(srv, beats, stopEngine, engineDone)
	return nil
}

// shutdown drains: no new requests, in-flight ones get DrainWait to finish,
// then the rest are cancelled and the queen hears goodbye.
func (w *worker) shutdown(srv *http.Server, beats *beatLoop, stopEngine func(), engineDone <-chan struct{}) {
	w.setState(api.WorkerDraining, "")
	beats.kick()
	w.log.Info("draining", "timeout", w.cfg.DrainWait)
	drained := make(chan struct{})
	go func() { w.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(w.cfg.DrainWait):
		w.log.Warn("drain timed out, cancelling requests")
	}
	stopEngine()
	<-engineDone
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	w.setState(api.WorkerStopped, "")
	beats.finish(w.heartbeat())
	w.log.Info("stopped")
}

// advertisedHost is the host other machines use to reach a worker that
// listens on host.
func advertisedHost(host string) string {
	if host == "" || host == "0.0.0.0" || host == "::" {
		if name, err := os.Hostname(); err == nil {
			return name
		}
	}
	return host
}

// reportReady tells the hive that spawned us which port we listen on.
func reportReady(fd, port int) error {
	if fd <= 0 {
		return nil
	}
	f := os.NewFile(uintptr(fd), "ready")
	if f == nil {
		return fmt.Errorf("ready fd %d is not open", fd)
	}
	defer f.Close()
	line, _ := json.Marshal(api.ReadyLine{Port: port})
	_, err := f.Write(append(line, '\n'))
	return err
}

// beatLoop runs the heartbeat sender for the worker's lifetime.
type beatLoop struct {
	sender *heartbeat.Sender
	cancel context.CancelFunc
	done   chan struct{}
	// retired is closed when the queen says it stopped this worker (410):
	// the worker then shuts down as on SIGTERM.
	retired chan struct{}
}

func (w *worker) startHeartbeats(ctx context.Context) *beatLoop {
	if w.cfg.QueenURL == "" {
		return &beatLoop{retired: make(chan struct{})}
	}
	status := newQueenStatusFile(w.cfg.StatusFile, w.cfg.QueenURL, w.log)
	sender := heartbeat.NewSender(heartbeat.SenderConfig{
		QueenURL: w.cfg.QueenURL, Token: w.cfg.Token, Logger: w.log,
		MaxBackoff: 5 * time.Second,
		Observe:    func(err error) { status.observe(err, time.Now()) },
	}, w.heartbeat)
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b := &beatLoop{sender: sender, cancel: cancel, done: make(chan struct{}),
		retired: make(chan struct{})}
	go func() {
		defer close(b.done)
		if errors.Is(sender.Run(loopCtx), heartbeat.ErrRetired) {
			close(b.retired)
		}
	}()
	return b
}

func (b *beatLoop) kick() {
	if b.sender != nil {
		b.sender.Kick()
	}
}

// finish stops the loop and sends one last heartbeat (stopped or failed).
func (b *beatLoop) finish(last api.Heartbeat) {
	if b.sender == nil {
		return
	}
	b.cancel()
	<-b.done
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, _ = b.sender.Send(ctx, last)
}
