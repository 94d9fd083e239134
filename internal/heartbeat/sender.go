package heartbeat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// Defaults and bounds for SenderConfig.
const (
	DefaultInitial    = time.Second
	DefaultMaxBackoff = 10 * time.Second
	DefaultTimeout    = 5 * time.Second

	// MinInterval and MaxInterval bound the interval a queen may ask for,
	// so a bad reply can neither flood the queen nor silence the worker.
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Minute
)

// maxErrorBody is how much of an error response Send reads.
const maxErrorBody = 64 << 10

// SenderConfig configures a Sender. Zero fields take defaults.
type SenderConfig struct {
	QueenURL string // base URL of the queen; required
	Token    string // the worker's token, sent as a bearer credential
	Client   *http.Client
	Clock    Clock
	// Initial is the interval before the queen has said otherwise, and the
	// first retry delay after a failure. Default 1s.
	Initial time.Duration
	// MaxBackoff bounds the delay between retries. Default 10s; it should
	// stay below the queen's TrackerConfig.FirstGrace.
	MaxBackoff time.Duration
	// Timeout bounds one heartbeat request. Default 5s.
	Timeout time.Duration
	Logger  *slog.Logger
	// Observe, when set, is called by Run after each beat with Send's
	// error (nil when the queen accepted it), before Run decides what to
	// do next. It runs on Run's goroutine, so it should be quick.
	Observe func(err error)
}

// withDefaults fills in the zero fields.
func (c SenderConfig) withDefaults() SenderConfig {
	if c.Client == nil {
		c.Client = http.DefaultClient
	}
	if c.Clock == nil {
		c.Clock = RealClock()
	}
	if c.Initial <= 0 {
		c.Initial = DefaultInitial
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	c.MaxBackoff = max(c.MaxBackoff, c.Initial)
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.QueenURL = strings.TrimRight(c.QueenURL, "/")
	return c
}

// ErrRetired is what Run returns when the queen answers 410 Gone: it has
// stopped this worker, which should shut down.
var ErrRetired = errors.New("the queen retired this worker")

// StatusError is the error Send wraps when the queen answers with a
// status other than 2xx.
type StatusError struct {
	StatusCode int
	Message    string // the queen's api.ErrorBody message, or the status text
	Code       string // the queen's api.ErrorBody code, when it gave one
}

// Error implements error.
func (e *StatusError) Error() string {
	return fmt.Sprintf("queen answered %d: %s", e.StatusCode, e.Message)
}

// Sender posts a worker's heartbeats to the queen until its context ends.
type Sender struct {
	cfg   SenderConfig
	state func() api.Heartbeat
	kick  chan struct{}
}

// NewSender returns a Sender that reports what state returns at each beat.
func NewSender(cfg SenderConfig, state func() api.Heartbeat) *Sender {
	return &Sender{
		cfg:   cfg.withDefaults(),
		state: state,
		kick:  make(chan struct{}, 1),
	}
}

// Kick makes Run send its next beat right away, for example when the
// worker becomes ready. It never blocks; kicks during a send are merged
// into one beat after it.
func (s *Sender) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run beats at once, then at the interval the queen returns. After a
// failure it retries with jittered exponential backoff, up to MaxBackoff.
// It returns nil when ctx is done, and ErrRetired when the queen answers
// 410 Gone. Run is not meant to be called twice at once.
//
// A refusal (for example 401, a wrong token) is retried like any other
// failure; a caller that wants to give up can check Send's *StatusError.
func (s *Sender) Run(ctx context.Context) error {
	if s.cfg.QueenURL == "" {
		return errors.New("run heartbeat: no queen URL")
	}
	log := s.cfg.Logger
	interval := s.cfg.Initial
	failures := 0

	for {
		hb := s.state()
		reply, err := s.Send(ctx, hb)
		if ctx.Err() != nil {
			return nil
		}
		if s.cfg.Observe != nil {
			s.cfg.Observe(err)
		}

		var wait time.Duration
		var status *StatusError
		switch {
		case errors.As(err, &status) && status.StatusCode == http.StatusGone:
			// The queen stopped this worker (or no longer wants it): there
			// is no point beating on, and the worker should exit.
			log.Warn("queen retired this worker", "worker_id", hb.WorkerID, "error", err)
			return ErrRetired
		case err != nil:
			failures++
			wait = backoff(s.cfg.Initial, s.cfg.MaxBackoff, failures, rand.Int64N)
			log.Warn("heartbeat failed", "worker_id", hb.WorkerID, "error", err,
				"failures", failures, "retry_in", wait)
		default:
			if failures > 0 {
				log.Info("heartbeat restored", "worker_id", hb.WorkerID, "failures", failures)
			}
			failures = 0
			interval = nextInterval(reply, interval)
			wait = interval
			log.Debug("heartbeat sent", "worker_id", hb.WorkerID, "state", hb.State,
				"next_in", wait)
		}

		if !s.sleep(ctx, wait) {
			return nil
		}
	}
}

// sleep waits for d on the Clock, or a kick, and reports false when ctx
// ends first.
func (s *Sender) sleep(ctx context.Context, d time.Duration) bool {
	due := make(chan struct{})
	t := s.cfg.Clock.AfterFunc(d, func() { close(due) })
	defer t.Stop()

	select {
	case <-due:
		return true
	case <-s.kick:
		return true
	case <-ctx.Done():
		return false
	}
}

// Send posts one heartbeat to {QueenURL}/v1/heartbeat and returns the
// queen's reply. A zero ProtocolVersion is filled in.
func (s *Sender) Send(ctx context.Context, hb api.Heartbeat) (api.HeartbeatReply, error) {
	if hb.ProtocolVersion == 0 {
		hb.ProtocolVersion = api.ProtocolVersion
	}
	body, err := json.Marshal(hb)
	if err != nil {
		return api.HeartbeatReply{}, fmt.Errorf("encode heartbeat: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	url := s.cfg.QueenURL + "/v1/heartbeat"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return api.HeartbeatReply{}, fmt.Errorf("send heartbeat: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.cfg.Token)

	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return api.HeartbeatReply{}, fmt.Errorf("send heartbeat: %w", err)
	}
	defer resp.Body.Close()
	return decodeReply(resp)
}

// decodeReply turns the queen's answer into a reply or an error.
func decodeReply(resp *http.Response) (api.HeartbeatReply, error) {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return api.HeartbeatReply{}, fmt.Errorf("send heartbeat: %w", statusError(resp))
	}
	var reply api.HeartbeatReply
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
		return api.HeartbeatReply{}, fmt.Errorf("decode heartbeat reply: %w", err)
	}
	return reply, nil
}

// statusError reads the api.ErrorBody of a failed response.
func statusError(resp *http.Response) error {
	e := &StatusError{StatusCode: resp.StatusCode}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body api.ErrorBody
	if json.Unmarshal(raw, &body) == nil && body.Error.Message != "" {
		e.Message = body.Error.Message
		e.Code = body.Error.Code
	} else {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// nextInterval returns the interval the queen asked for, within
// [MinInterval, MaxInterval], or prev when the reply names none.
func nextInterval(reply api.HeartbeatReply, prev time.Duration) time.Duration {
	if reply.NextIntervalMS <= 0 {
		return prev
	}
	ms := min(reply.NextIntervalMS, MaxInterval.Milliseconds())
	return max(time.Duration(ms)*time.Millisecond, MinInterval)
}

// backoff returns the delay before retry number failures (from 1): it
// doubles from initial up to limit, and a random half of it is taken off
// so that workers cut off together do not come back together. randN
// returns a number in [0, n).
func backoff(initial, limit time.Duration, failures int, randN func(n int64) int64) time.Duration {
	d := initial
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	half := d / 2
	if half <= 0 {
		return d
	}
	return d - time.Duration(randN(int64(half)+1))
}
