package heartbeat

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// failsafe bounds how long a test waits for something that should happen
// promptly; it is never reached when the code works.
const failsafe = 10 * time.Second

// received is one request the fake queen saw.
type received struct {
	method, path, auth, contentType string
	hb                              api.Heartbeat
}

// reply is what the fake queen answers.
type reply struct {
	status int
	body   any
}

// fakeQueen is an httptest server that records heartbeats and answers
// with the replies its script gives for the nth request (from 0).
type fakeQueen struct {
	*httptest.Server
	got chan received

	mu     sync.Mutex
	n      int
	script func(n int) reply
}

func newFakeQueen(t *testing.T, script func(n int) reply) *fakeQueen {
	t.Helper()
	q := &fakeQueen{got: make(chan received, 100), script: script}
	q.Server = httptest.NewServer(http.HandlerFunc(q.handle))
	t.Cleanup(q.Close)
	return q
}

func (q *fakeQueen) handle(w http.ResponseWriter, r *http.Request) {
	var hb api.Heartbeat
	raw, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(raw, &hb)

	q.mu.Lock()
	rep := q.script(q.n)
	q.n++
	q.mu.Unlock()

	q.got <- received{r.Method, r.URL.Path, r.Header.Get("Authorization"),
		r.Header.Get("Content-Type"), hb}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_ = json.NewEncoder(w).Encode(rep.body)
}

// next returns the next heartbeat the queen received.
func (q *fakeQueen) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-q.got:
		return r
	case <-time.After(failsafe):
		t.Fatal("no heartbeat arrived")
		return received{}
	}
}

// assertQuiet checks that no heartbeat has arrived. It is only meaningful
// while the sender is known to be waiting on its clock.
func (q *fakeQueen) assertQuiet(t *testing.T) {
	t.Helper()
	select {
	case r := <-q.got:
		t.Fatalf("unexpected heartbeat: %+v", r)
	default:
	}
}

func ok(ms int64) reply {
	return reply{http.StatusOK, api.HeartbeatReply{NextIntervalMS: ms}}
}

func failure(status int, msg string) reply {
	return reply{status, api.ErrorBody{Error: api.ErrorDetail{Message: msg, Type: "server_error"}}}
}

var testBeat = api.Heartbeat{
	WorkerID: "w1", State: api.WorkerReady, URL: "http://127.0.0.1:9001",
	Model: "tinyllama", Device: "cpu", SlotsTotal: 2, SlotsBusy: 1,
}

// startSender runs a Sender against q on a FakeClock until the test ends,
// and checks that Run returns nil.
func startSender(
	t *testing.T, q *fakeQueen, cfg SenderConfig,
) (*Sender, *FakeClock, context.CancelFunc) {
	t.Helper()
	clock := NewFakeClock(epoch)
	cfg.QueenURL, cfg.Token, cfg.Clock = q.URL, "tok-w1", clock
	cfg.Logger = slog.New(slog.DiscardHandler)
	s := NewSender(cfg, func() api.Heartbeat { return testBeat })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.Check(t, err)
		case <-time.After(failsafe):
			t.Error("Run did not return after cancel")
		}
	})
	return s, clock, cancel
}

func TestSenderSendsTokenAndBody(t *testing.T) {
	q := newFakeQueen(t, func(int) reply { return ok(2000) })
	startSender(t, q, SenderConfig{})

	got := q.next(t)

	want := testBeat
	want.ProtocolVersion = api.ProtocolVersion
	assert.DeepEqual(t, got, received{
		method: http.MethodPost, path: "/v1/heartbeat", auth: "Bearer tok-w1",
		contentType: "application/json", hb: want,
	}, cmp.AllowUnexported(received{}))
}

func TestSenderFollowsNextInterval(t *testing.T) {
	intervals := []int64{5000, 0 /* none: keep 5s */, 250}
	q := newFakeQueen(t, func(n int) reply { return ok(intervals[min(n, len(intervals)-1)]) })
	_, clock, _ := startSender(t, q, SenderConfig{Initial: time.Second})

	for _, wait := range []time.Duration{5 * time.Second, 5 * time.Second, 250 * time.Millisecond} {
		q.next(t)
		clock.BlockUntil(1)
		clock.Advance(wait - time.Millisecond)
		assert.Equal(t, clock.Pending(), 1, "beat came early (want %v)", wait)
		q.assertQuiet(t)
		clock.Advance(time.Millisecond)
	}
	q.next(t)
}

func TestSenderBacksOffThenRecovers(t *testing.T) {
	const initial, maxBackoff = time.Second, 3 * time.Second
	q := newFakeQueen(t, func(n int) reply {
		if n < 4 {
			return failure(http.StatusInternalServerError, "database is locked")
		}
		return ok(2000)
	})
	_, clock, _ := startSender(t, q, SenderConfig{Initial: initial, MaxBackoff: maxBackoff})

	// Retry delays double from Initial up to MaxBackoff; jitter takes off
	// at most half, so each retry comes within [d/2, d].
	for _, d := range []time.Duration{initial, 2 * initial, maxBackoff, maxBackoff} {
		q.next(t)
		clock.BlockUntil(1)
		clock.Advance(d/2 - time.Millisecond)
		assert.Equal(t, clock.Pending(), 1, "retry came before %v", d/2)
		clock.Advance(d/2 + time.Millisecond) // the next q.next proves the retry came
	}

	// The fifth beat succeeds; the sender is back on the queen's interval.
	q.next(t)
	clock.BlockUntil(1)
	clock.Advance(2*time.Second - time.Millisecond)
	assert.Equal(t, clock.Pending(), 1)
	clock.Advance(time.Millisecond)
	q.next(t)
}

func TestSenderKickSendsAtOnce(t *testing.T) {
	q := newFakeQueen(t, func(int) reply { return ok(60_000) })
	s, clock, _ := startSender(t, q, SenderConfig{})
	q.next(t)
	clock.BlockUntil(1)

	s.Kick()

	q.next(t) // with no Advance
	clock.BlockUntil(1)
	assert.Equal(t, clock.Now(), epoch)
}

func TestSenderStopsOnCancel(t *testing.T) {
	tests := []struct {
		name   string
		script func(int) reply
	}{
		{name: "waiting for the next beat", script: func(int) reply { return ok(60_000) }},
		{name: "backing off", script: func(int) reply { return failure(500, "down") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := newFakeQueen(t, tc.script)
			_, clock, cancel := startSender(t, q, SenderConfig{})
			q.next(t)
			clock.BlockUntil(1)

			cancel() // startSender's cleanup checks that Run returns nil
		})
	}
}

func TestSenderStopsOnCancelDuringRequest(t *testing.T) {
	arrived, unblock := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-r.Context().Done():
		case <-unblock:
		}
	}))
	defer srv.Close()
	defer close(unblock)
	s := NewSender(SenderConfig{QueenURL: srv.URL, Logger: slog.New(slog.DiscardHandler)},
		func() api.Heartbeat { return testBeat })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-arrived

	cancel()

	select {
	case err := <-done:
		assert.NilError(t, err)
	case <-time.After(failsafe):
		t.Fatal("Run did not return")
	}
}

func TestSenderRequiresQueenURL(t *testing.T) {
	s := NewSender(SenderConfig{}, func() api.Heartbeat { return testBeat })

	err := s.Run(context.Background())

	assert.ErrorContains(t, err, "no queen URL")
}

func TestSend(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		want       api.HeartbeatReply
		wantErr    string
		wantStatus int
	}{
		{name: "ok", status: 200, body: `{"next_interval_ms":1500}`,
			want: api.HeartbeatReply{NextIntervalMS: 1500}},
		{name: "unauthorized with message", status: 401,
			body:    `{"error":{"message":"bad worker token","type":"invalid_request_error"}}`,
			wantErr: "queen answered 401: bad worker token", wantStatus: 401},
		{name: "error without a body", status: 502, body: `<html>bad gateway</html>`,
			wantErr: "queen answered 502: Bad Gateway", wantStatus: 502},
		{name: "garbled reply", status: 200, body: `{"next_interval_ms":`,
			wantErr: "decode heartbeat reply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			s := NewSender(SenderConfig{QueenURL: srv.URL + "/"}, nil)

			got, err := s.Send(context.Background(), testBeat)

			if tc.wantErr == "" {
				assert.NilError(t, err)
				assert.Equal(t, got, tc.want)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
			var se *StatusError
			assert.Equal(t, errors.As(err, &se), tc.wantStatus != 0)
			if se != nil {
				assert.Equal(t, se.StatusCode, tc.wantStatus)
			}
		})
	}
}

func TestSendTimeout(t *testing.T) {
	unblock := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-unblock:
		}
	}))
	defer srv.Close()
	defer close(unblock)
	s := NewSender(SenderConfig{QueenURL: srv.URL, Timeout: 50 * time.Millisecond}, nil)

	_, err := s.Send(context.Background(), testBeat)

	assert.Check(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
}

func TestSendUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	s := NewSender(SenderConfig{QueenURL: url}, nil)

	_, err := s.Send(context.Background(), testBeat)

	assert.Check(t, is.ErrorContains(err, "send heartbeat"))
}

func TestNextInterval(t *testing.T) {
	tests := []struct {
		name string
		ms   int64
		want time.Duration
	}{
		{name: "as asked", ms: 2500, want: 2500 * time.Millisecond},
		{name: "none keeps previous", ms: 0, want: 7 * time.Second},
		{name: "negative keeps previous", ms: -5, want: 7 * time.Second},
		{name: "too short", ms: 1, want: MinInterval},
		{name: "too long", ms: 3_600_000, want: MaxInterval},
		{name: "overflowing", ms: 1 << 62, want: MaxInterval},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := nextInterval(api.HeartbeatReply{NextIntervalMS: tc.ms}, 7*time.Second)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestBackoff(t *testing.T) {
	noJitter := func(int64) int64 { return 0 }
	fullJitter := func(n int64) int64 { return n - 1 }
	tests := []struct {
		name     string
		failures int
		randN    func(int64) int64
		want     time.Duration
	}{
		{name: "first retry", failures: 1, randN: noJitter, want: time.Second},
		{name: "doubles", failures: 3, randN: noJitter, want: 4 * time.Second},
		{name: "bounded", failures: 10, randN: noJitter, want: 10 * time.Second},
		{name: "many failures", failures: 1000, randN: noJitter, want: 10 * time.Second},
		{name: "jitter takes at most half", failures: 2, randN: fullJitter, want: time.Second},
		{name: "bounded with jitter", failures: 50, randN: fullJitter, want: 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := backoff(time.Second, 10*time.Second, tc.failures, tc.randN)
			assert.Equal(t, got, tc.want)
		})
	}
}

func TestSenderReturnsRetiredOnGone(t *testing.T) {
	q := newFakeQueen(t, func(int) reply { return failure(http.StatusGone, "worker w1 was stopped") })
	cfg := SenderConfig{QueenURL: q.URL, Token: "tok-w1", Clock: NewFakeClock(epoch),
		Logger: slog.New(slog.DiscardHandler)}
	s := NewSender(cfg, func() api.Heartbeat { return testBeat })

	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	q.next(t)
	select {
	case err := <-done:
		assert.Assert(t, errors.Is(err, ErrRetired), "got %v", err)
	case <-time.After(failsafe):
		t.Fatal("Run kept beating after the queen answered 410")
	}
}
