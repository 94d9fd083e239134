package queen

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/registry"
)

// scrape reads the queen's /metrics into series (name{labels}) and values.
func scrape(t *testing.T, ts *httptest.Server) map[string]float64 {
	t.Helper()
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	assert.NilError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, resp.StatusCode, http.StatusOK)
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		assert.NilError(t, err, line)
		series[line[:i]] = v
	}
	assert.NilError(t, sc.Err())
	return series
}

func TestMetricsMoveAsRequestsAreServed(t *testing.T) {
	completion := `{"model":"tiny","prompt":"hi","stream":true}`
	tests := []struct {
		name string
		act  func(t *testing.T, s *Server, ts *httptest.Server)
		want map[string]float64
	}{
		{
			name: "nothing served yet",
			act:  func(*testing.T, *Server, *httptest.Server) {},
			want: map[string]float64{
				`rbee_queen_worker_slots_busy{model="tiny",worker_id="w-a"}`:  0,
				`rbee_queen_worker_slots_total{model="tiny",worker_id="w-a"}`: 2,
			},
		},
		{
			name: "two completions",
			act: func(t *testing.T, _ *Server, ts *httptest.Server) {
				for range 2 {
					status, _ := readAll(t, post(t, ts, "/v1/completions", completion))
					assert.Equal(t, status, http.StatusOK)
				}
			},
			want: map[string]float64{
				`rbee_queen_requests_total{model="tiny",status="200"}`:                  2,
				`rbee_queen_time_to_first_token_seconds_count{model="tiny"}`:            2,
				`rbee_queen_queue_wait_seconds_count{model="tiny"}`:                     2,
				`rbee_queen_worker_slots_busy{model="tiny",worker_id="w-a"}`:            0,
				`rbee_queen_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"}`: 2,
			},
		},
		{
			name: "an unknown model is counted without its name",
			act: func(t *testing.T, _ *Server, ts *httptest.Server) {
				status, _ := readAll(t, post(t, ts, "/v1/completions",
					`{"model":"no-such","prompt":"hi"}`))
				assert.Equal(t, status, http.StatusNotFound)
			},
			want: map[string]float64{`rbee_queen_requests_total{model="",status="404"}`: 1},
		},
		{
			name: "a request holding a slot",
			act: func(t *testing.T, s *Server, _ *httptest.Server) {
				l, err := s.router.acquire(context.Background(), testModel)
				assert.NilError(t, err)
				t.Cleanup(l.release)
			},
			want: map[string]float64{
				`rbee_queen_worker_slots_busy{model="tiny",worker_id="w-a"}`: 1,
			},
		},
		{
			name: "a heartbeat's figures",
			act: func(_ *testing.T, s *Server, _ *httptest.Server) {
				s.live.record(api.Heartbeat{WorkerID: "w-a", GenTokensPerSec: 42.5,
					PromptTokensPerSec: 300})
			},
			want: map[string]float64{
				`rbee_queen_worker_generation_tokens_per_second{model="tiny",worker_id="w-a"}`: 42.5,
				`rbee_queen_worker_prompt_tokens_per_second{model="tiny",worker_id="w-a"}`:     300,
			},
		},
		{
			name: "a hive command",
			act: func(t *testing.T, s *Server, _ *httptest.Server) {
				s.hives.bin = fakeHive(t)
				_, err := s.hives.version(context.Background(),
					registry.Hive{Name: "localhost", Local: true})
				assert.NilError(t, err)
			},
			want: map[string]float64{
				`rbee_queen_hive_command_seconds_count{command="version",hive="localhost"}`: 1,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			w := newStubWorker(t, "w-a", helloWorld(api.FinishStop), nil)
			addWorker(s, "w-a", w.URL, 2)

			tc.act(t, s, ts)

			got := scrape(t, ts)
			for series, want := range tc.want {
				v, ok := got[series]
				assert.Check(t, ok, "missing series %s", series)
				assert.Check(t, is.Equal(v, want), series)
			}
		})
	}
}

func TestHeartbeatAgeIsReported(t *testing.T) {
	s, ts := newTestServer(t)
	addWorker(s, "w-a", "http://127.0.0.1:1", 1)
	s.live.record(api.Heartbeat{WorkerID: "w-a"})

	got := scrape(t, ts)

	age, ok := got[`rbee_queen_worker_heartbeat_age_seconds{model="tiny",worker_id="w-a"}`]
	assert.Assert(t, ok)
	assert.Assert(t, age >= 0 && age < 60, "age %v", age)
}

// fakeHive is an rbee-hive that only answers `version`.
func fakeHive(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rbee-hive")
	script := "#!/bin/sh\necho '{\"version\":\"test\",\"protocol_version\":" +
		strconv.Itoa(api.ProtocolVersion) + "}'\n"
	assert.NilError(t, os.WriteFile(path, []byte(script), 0o755))
	return path
}
