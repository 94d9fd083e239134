package workerd

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// scrapeWorker reads the worker's /metrics, with token, into series values.
func scrapeWorker(t *testing.T, srv *httptest.Server, token string) (int, map[string]float64) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	assert.NilError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	assert.NilError(t, err)
	defer resp.Body.Close()
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") || resp.StatusCode != http.StatusOK {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		assert.NilError(t, err, line)
		series[line[:i]] = v
	}
	return resp.StatusCode, series
}

func TestMetricsNeedTheToken(t *testing.T) {
	srv := startWorker(t, 128)
	tests := []struct {
		name, token string
		want        int
	}{
		{name: "no token", want: http.StatusUnauthorized},
		{name: "wrong token", token: "nope", want: http.StatusUnauthorized},
		{name: "worker token", token: testToken, want: http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := scrapeWorker(t, srv, tc.token)
			assert.Equal(t, status, tc.want)
		})
	}
}

func TestMetricsMoveAsRequestsAreServed(t *testing.T) {
	tests := []struct {
		name   string
		bodies []string
		check  func(t *testing.T, m map[string]float64)
	}{
		{
			name: "idle",
			check: func(t *testing.T, m map[string]float64) {
				assert.Check(t, is.Equal(m["rbee_worker_generated_tokens_total"], 0.0))
				assert.Check(t, is.Equal(m["rbee_worker_slots_busy"], 0.0))
				assert.Check(t, is.Equal(m["rbee_worker_slots_total"], 2.0))
				assert.Check(t, is.Equal(m["rbee_worker_ready"], 1.0))
			},
		},
		{
			name: "a streamed and a whole completion, and a bad request",
			bodies: []string{
				`{"prompt":"Once upon a time","max_tokens":5,"temperature":0,"stream":true}`,
				`{"prompt":"Once upon a time","max_tokens":3,"temperature":0}`,
				`{"prompt":"","max_tokens":3}`,
			},
			check: func(t *testing.T, m map[string]float64) {
				assert.Check(t, is.Equal(m["rbee_worker_generated_tokens_total"], 8.0))
				assert.Check(t, m["rbee_worker_prompt_tokens_total"] > 0)
				assert.Check(t, is.Equal(
					m[`rbee_worker_requests_total{route="completion",status="200"}`], 2.0))
				assert.Check(t, is.Equal(
					m[`rbee_worker_requests_total{route="completion",status="400"}`], 1.0))
				assert.Check(t, is.Equal(m["rbee_worker_time_to_first_token_seconds_count"], 2.0))
				assert.Check(t, is.Equal(m["rbee_worker_slots_busy"], 0.0))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startWorker(t, 128)
			for _, body := range tc.bodies {
				resp := post(t, srv, testToken, body)
				_, _ = io.Copy(io.Discard, resp.Body)
			}

			status, m := scrapeWorker(t, srv, testToken)
			assert.Equal(t, status, http.StatusOK)
			tc.check(t, m)
		})
	}
}
