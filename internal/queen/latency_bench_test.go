package queen

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// Load for BenchmarkQueenAddedLatency: requests in flight at once, and the
// steady rate of the paced runs (the target is set at 500 req/s).
const (
	benchConcurrency = 8
	benchRate        = 500
)

// BenchmarkQueenAddedLatency measures what the queen adds to a request:
// the same requests go straight to a stub worker (an in-process server
// that answers a fixed small stream at once) and through a real queen in
// front of it, in one run. Each b.N is one request of each kind.
//
// Two loads, each with benchConcurrency requests in flight at most:
// paced at benchRate requests/s (latency), and closed-loop as fast as it
// goes (requests/s). Added latency is the queen's percentile less the
// direct one. Run it with a fixed count, e.g. -benchtime=2000x.
func BenchmarkQueenAddedLatency(b *testing.B) {
	modes := []struct {
		name   string
		stream bool
	}{{"whole", false}, {"stream", true}}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			s, queen := newTestServer(b)
			worker := httptest.NewServer(http.HandlerFunc(stubAnswer))
			b.Cleanup(worker.Close)
			addWorker(s, "w-1", worker.URL, 4*benchConcurrency)
			client := &http.Client{
				Transport: &http.Transport{MaxIdleConnsPerHost: 4 * benchConcurrency}}
			b.Cleanup(client.CloseIdleConnections)

			streamJSON := fmt.Sprint(mode.stream)
			direct := request(client, worker.URL+"/v1/completion", "Bearer token-w-1",
				`{"prompt":"Once upon a time","max_tokens":8,"stream":true}`)
			proxied := request(client, queen.URL+"/v1/completions", "",
				`{"model":"tiny","prompt":"Once upon a time","max_tokens":8,`+
					`"stream":`+streamJSON+`}`)
			for _, send := range []func() error{direct, proxied} { // warm connections up
				for range benchConcurrency {
					if err := send(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ResetTimer()

			directPaced := load(b, direct, b.N, benchRate)
			queenPaced := load(b, proxied, b.N, benchRate)
			directFree := load(b, direct, b.N, 0)
			queenFree := load(b, proxied, b.N, 0)

			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(queenPaced.p50-directPaced.p50), "added_p50_ms")
			b.ReportMetric(ms(queenPaced.p99-directPaced.p99), "added_p99_ms")
			b.ReportMetric(ms(directPaced.p50), "direct_p50_ms")
			b.ReportMetric(ms(directPaced.p99), "direct_p99_ms")
			b.ReportMetric(ms(queenPaced.p50), "queen_p50_ms")
			b.ReportMetric(ms(queenPaced.p99), "queen_p99_ms")
			b.ReportMetric(queenPaced.rate, "queen_paced_req/s")
			b.ReportMetric(directFree.rate, "direct_max_req/s")
			b.ReportMetric(queenFree.rate, "queen_max_req/s")
			b.ReportMetric(0, "ns/op") // per-op time means nothing here
		})
	}
}

// stubAnswer is the benchmark's worker: four tokens and the final event.
func stubAnswer(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	sse := httpapi.NewSSEWriter(w)
	for _, tok := range []string{"Once", " upon", " a", " time"} {
		_ = sse.Event(api.CompletionEvent{Text: tok})
	}
	_ = sse.Event(api.CompletionEvent{Done: true, FinishReason: api.FinishLength,
		PromptTokens: 5, CompletionTokens: 4})
	_ = sse.Done()
}

// request returns a func that sends one request and reads the whole answer.
func request(client *http.Client, url, auth, body string) func() error {
	return func() error {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(data), "time") {
			return fmt.Errorf("status %d: %s", resp.StatusCode, data)
		}
		return nil
	}
}

// loadResult is what one load run measured.
type loadResult struct {
	p50, p99 time.Duration
	rate     float64 // requests/s
}

// load sends n requests with benchConcurrency in flight at most: paced at
// rate requests/s, or as fast as they go when rate is 0.
func load(b *testing.B, send func() error, n int, rate float64) loadResult {
	b.Helper()
	latencies := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				begin := time.Now()
				if rate > 0 {
					// Late because earlier requests were slow: that wait
					// counts. Early: sleep, and count from the wake-up, as
					// the timer's own lateness is not the server's.
					scheduled := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					begin = scheduled
					if wait := time.Until(scheduled); wait > 0 {
						time.Sleep(wait)
						begin = time.Now()
					}
				}
				if err := send(); err != nil {
					failed.Store(err)
					return
				}
				latencies[i] = time.Since(begin)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(latencies)
	return loadResult{p50: latencies[n/2], p99: latencies[n*99/100],
		rate: float64(n) / elapsed.Seconds()}
}
