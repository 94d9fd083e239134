package queen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/heartbeat"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// The heartbeat load test: simulated workers (goroutines, not llama.cpp
// processes) beat against one in-process queen over real HTTP, each at the
// interval the queen hands back. make test runs a small fleet for a few
// seconds; the figure is
//
//	RBEE_HBLOAD_WORKERS=10000 RBEE_HBLOAD_DURATION=60s \
//	    go test -count=1 -run TestHeartbeatLoad -v ./internal/queen/
//
// RBEE_HBLOAD_RATE sets the queen's ceiling (heartbeats/s, default
// heartbeat.DefaultMaxBeatsPerSecond); a high one, such as 1000000, keeps
// the base interval and so measures what the queen sustains.
func TestHeartbeatLoad(t *testing.T) {
	cfg := hbLoadConfig{
		workers:  testenv.Int(t, "RBEE_HBLOAD_WORKERS", 2000),
		duration: testenv.Duration(t, "RBEE_HBLOAD_DURATION", 5*time.Second),
		maxRate:  float64(testenv.Int(t, "RBEE_HBLOAD_RATE", 0)),
	}
	if testing.Short() {
		cfg.workers, cfg.duration = 200, 2*time.Second
	}
	res := hbRunLoad(t, cfg)
	t.Logf("%d workers for %s, ceiling %.0f/s: %d heartbeats, %.0f/s handled, %d failed",
		cfg.workers, cfg.duration, res.ceiling, res.beats, res.perSecond(), res.failed)
	t.Logf("interval handed out: %s to %s", res.minNext, res.maxNext)
	t.Logf("handling time in the queen's handler: p50 %s, p99 %s, max %s",
		res.server.pct(50), res.server.pct(99), res.server.pct(100))
	t.Logf("client round trip (connection wait included): p50 %s, p99 %s, max %s",
		res.client.pct(50), res.client.pct(99), res.client.pct(100))
	t.Logf("workers lost: %d (every simulated worker beat as asked: each is a false loss)",
		res.lost)
	assert.Equal(t, res.lost, int64(0), "workers falsely lost")
	assert.Equal(t, res.failed, int64(0), "heartbeats refused or failed")
}

type hbLoadConfig struct {
	workers  int
	duration time.Duration
	maxRate  float64 // 0: the default ceiling
}

type hbLoadResult struct {
	ceiling          float64
	elapsed          time.Duration
	beats, failed    int64
	lost             int64
	minNext, maxNext time.Duration
	server, client   hbLatencies
}

func (r *hbLoadResult) perSecond() float64 { return float64(r.beats) / r.elapsed.Seconds() }

// hbLatencies collects durations for percentiles.
type hbLatencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *hbLatencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// pct returns the p-th percentile (100: the maximum).
func (l *hbLatencies) pct(p int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	i := min(len(l.d)-1, len(l.d)*p/100)
	return l.d[i].Round(time.Microsecond)
}

// runHeartbeatLoad seeds a registry with cfg.workers ready workers, starts
// a queen on it (as after a queen restart: every worker known, none heard
// from), and has every worker beat until cfg.duration has passed.
func hbRunLoad(t *testing.T, cfg hbLoadConfig) *hbLoadResult {
	dbPath := filepath.Join(t.TempDir(), "queen.db")
	start := time.Now()
	hbSeedFleet(t, dbPath, cfg.workers)
	t.Logf("seeded %d workers in %s", cfg.workers, time.Since(start).Round(time.Millisecond))

	s, err := newServer(Config{Addr: "127.0.0.1:0", DBPath: dbPath, HeartbeatMaxRate: cfg.maxRate},
		slog.New(slog.DiscardHandler), "http://127.0.0.1:0")
	assert.NilError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	res := &hbLoadResult{ceiling: s.tracker.Config().MaxBeatsPerSecond, minNext: time.Hour}
	hbCountLost(t, s, &res.lost)

	routes := s.routes()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		begin := time.Now()
		routes.ServeHTTP(w, r)
		res.server.add(time.Since(begin))
	}))
	t.Cleanup(ts.Close)
	// Workers share connections, as many workers of one hive would not, so
	// that 10,000 of them need no 10,000 file descriptors.
	transport := &http.Transport{MaxConnsPerHost: 256, MaxIdleConnsPerHost: 256}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	// The queen before this one told the fleet the scaled interval: first
	// beats come spread over it.
	spread := hbFleetInterval(s.tracker.Config(), cfg.workers)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.duration)
	defer cancel()
	var mu sync.Mutex // guards minNext, maxNext
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range cfg.workers {
		id := hbLoadWorkerID(i)
		first := time.Duration(rand.Int64N(int64(spread)))
		wg.Go(func() {
			hbSimulateWorker(ctx, client, ts.URL, id, first, res, &mu)
		})
	}
	wg.Wait()
	res.elapsed = time.Since(begin)
	return res
}

// fleetInterval is about the interval the queen hands n workers.
func hbFleetInterval(c heartbeat.TrackerConfig, n int) time.Duration {
	scaled := time.Duration(float64(n) / c.MaxBeatsPerSecond * float64(time.Second))
	return min(max(c.Interval, scaled), heartbeat.MaxInterval)
}

// simulateWorker beats as a worker's heartbeat.Sender does, at the
// interval each reply asks for, until ctx ends.
func hbSimulateWorker(ctx context.Context, client *http.Client, url, id string,
	first time.Duration, res *hbLoadResult, mu *sync.Mutex) {
	body, _ := json.Marshal(api.Heartbeat{WorkerID: id, ProtocolVersion: api.ProtocolVersion,
		State: api.WorkerReady, URL: "http://" + id, SlotsBusy: 0})
	wait := time.NewTimer(first)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wait.C:
		}
		next, ok := hbPostBeat(ctx, client, url, id, body, res)
		if ctx.Err() != nil {
			return
		}
		if !ok {
			atomic.AddInt64(&res.failed, 1)
			next = time.Second
		} else {
			atomic.AddInt64(&res.beats, 1)
			mu.Lock()
			res.minNext, res.maxNext = min(res.minNext, next), max(res.maxNext, next)
			mu.Unlock()
		}
		wait.Reset(next)
	}
}

// postBeat sends one heartbeat and returns the interval asked for.
func hbPostBeat(ctx context.Context, client *http.Client, url, id string, body []byte,
	res *hbLoadResult) (time.Duration, bool) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/heartbeat",
		bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer token-"+id)
	req.Header.Set("Content-Type", "application/json")
	begin := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var reply api.HeartbeatReply
	err = json.NewDecoder(resp.Body).Decode(&reply)
	_, _ = io.Copy(io.Discard, resp.Body)
	res.client.add(time.Since(begin))
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	return time.Duration(reply.NextIntervalMS) * time.Millisecond, true
}

func hbLoadWorkerID(i int) string { return fmt.Sprintf("w-load%05d", i) }

// seedFleet records n ready workers, as a queen that ran them leaves its
// registry.
func hbSeedFleet(t *testing.T, dbPath string, n int) {
	store, err := registry.Open(dbPath)
	assert.NilError(t, err)
	defer store.Close()
	for i := range n {
		hbSeed(t, store, hbLoadWorkerID(i), api.WorkerReady)
	}
}

// countLost counts the workers the queen marks lost, from its events.
func hbCountLost(t *testing.T, s *Server, lost *int64) {
	sub := s.events.subscribe(1 << 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev := <-sub.events:
				if ev.Type == api.EventWorker && ev.State == api.WorkerLost {
					atomic.AddInt64(lost, 1)
				}
			case <-sub.gone:
				return
			}
		}
	}()
	t.Cleanup(func() { s.events.unsubscribe(sub); <-done })
}
