package queen

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

// fakeHiveScript writes a shell script standing in for rbee-hive.
func fakeHiveScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rbee-hive")
	assert.NilError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755))
	return path
}

func TestDownloadModelRelaysProgress(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   []string // event of each SSE event
		check  func(t *testing.T, last api.DownloadEvent)
	}{
		{
			name: "done",
			script: `echo '{"event":"progress","bytes":5,"total":10,"rate":1}'
echo '{"event":"progress","bytes":10,"total":10,"rate":2}'
echo '{"name":"tiny","file":"tiny.gguf","source":"'"$3"'","size":10,"sha256":"ab"}'
`,
			want: []string{"progress", "progress", "done"},
			check: func(t *testing.T, last api.DownloadEvent) {
				assert.Equal(t, last.Model.Name, "tiny")
				assert.Equal(t, last.Model.Source, "hf:org/repo/tiny.gguf")
			},
		},
		{
			name: "hive error",
			script: `echo '{"event":"progress","bytes":5,"total":10,"rate":1}'
echo '{"error":"download hf:org/repo/tiny.gguf: no such file (404)"}'
exit 3
`,
			want: []string{"progress", "error"},
			check: func(t *testing.T, last api.DownloadEvent) {
				assert.Equal(t, last.Error.Code, "not_found")
				assert.Assert(t, strings.Contains(last.Error.Message, "no such file (404)"))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, ts := newTestServer(t)
			s.hives.bin = fakeHiveScript(t, tc.script)

			resp, err := http.Post(ts.URL+"/v1/models/download", "application/json",
				strings.NewReader(`{"hive":"localhost","ref":"hf:org/repo/tiny.gguf"}`))
			assert.NilError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, resp.StatusCode, http.StatusOK)
			assert.Equal(t, resp.Header.Get("Content-Type"), "text/event-stream")

			var got []string
			var last api.DownloadEvent
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				last = api.DownloadEvent{}
				assert.NilError(t, json.Unmarshal([]byte(data), &last))
				got = append(got, last.Event)
			}
			assert.DeepEqual(t, got, tc.want)
			tc.check(t, last)
		})
	}
}

func TestDownloadModelBadRequest(t *testing.T) {
	_, ts := newTestServer(t)
	tests := []struct {
		name       string
		body       string
		wantStatus int
	}{
		{name: "no hive", body: `{"ref":"hf:a/b/c.gguf"}`, wantStatus: http.StatusBadRequest},
		{name: "no ref", body: `{"hive":"localhost"}`, wantStatus: http.StatusBadRequest},
		{name: "unknown hive", body: `{"hive":"nope","ref":"hf:a/b/c.gguf"}`,
			wantStatus: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Post(ts.URL+"/v1/models/download", "application/json",
				strings.NewReader(tc.body))
			assert.NilError(t, err)
			resp.Body.Close()
			assert.Equal(t, resp.StatusCode, tc.wantStatus)
		})
	}
}

// A download shows on the event stream (progress, then done) and counts
// only the bytes fetched in this run in the metrics.
func TestDownloadIsCountedAndPublished(t *testing.T) {
	s, ts := newTestServer(t)
	s.hives.bin = fakeHiveScript(t, `echo '{"event":"progress","bytes":4,"total":10,"rate":1,"resumed":4}'
echo '{"event":"progress","bytes":7,"total":10,"rate":1,"resumed":4}'
echo '{"event":"progress","bytes":10,"total":10,"rate":2,"resumed":4}'
echo '{"name":"tiny","file":"tiny.gguf","source":"'"$3"'","size":10,"sha256":"ab"}'
`)
	conn := subscribe(t, ts)

	resp, err := http.Post(ts.URL+"/v1/models/download", "application/json",
		strings.NewReader(`{"hive":"localhost","ref":"hf:org/repo/tiny.gguf"}`))
	assert.NilError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	assert.NilError(t, err)
	resp.Body.Close()

	first := nextWorkerEvent(t, conn)
	assert.Equal(t, first.Type, api.EventDownload)
	assert.Equal(t, first.Hive, "localhost")
	assert.Equal(t, first.Download.Status, "progress")
	assert.Equal(t, first.Download.Ref, "hf:org/repo/tiny.gguf")
	last := nextWorkerEvent(t, conn)
	assert.Equal(t, last.Download.Status, "done")
	assert.Equal(t, last.Download.Bytes, int64(10))

	// 4 bytes were on disk already: 6 were fetched.
	assert.Equal(t, scrape(t, ts)[`rbee_queen_download_bytes_total{hive="localhost"}`], 6.0)
}
