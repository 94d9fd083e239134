package hive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

const (
	hfToken   = "hf_test_token"
	tinyRef   = "hf:org/repo/tiny.gguf"
	secretRef = "hf:org/private/tiny.gguf"
)

// fakeHF behaves like Hugging Face's resolve endpoint: /ORG/REPO/resolve/
// REV/FILE answers 302 to a CDN path with X-Linked-Etag (the sha256) and
// X-Linked-Size; repo "private" needs the bearer token; anything else is
// 404. The CDN path serves the bytes with Range support.
type fakeHF struct {
	srv     *httptest.Server
	content []byte
	sha     string

	mu      sync.Mutex
	ranges  []string // Range header of each CDN request ("" for none)
	sent    int      // body bytes the CDN wrote
	auth    []string // Authorization header of each CDN request
	cutAt   int      // >0: the next CDN answer stops (connection dropped) at this byte
	stallAt int      // >0: the next CDN answer stops sending at this byte
	corrupt bool     // serve one byte changed
}

func newFakeHF(t *testing.T) *fakeHF {
	t.Helper()
	content := bytes.Buffer{}
	assert.NilError(t, testmodel.Write(&content, testmodel.Tiny()))
	sum := sha256.Sum256(content.Bytes())
	f := &fakeHF{content: content.Bytes(), sha: hex.EncodeToString(sum[:])}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	t.Setenv(envHFEndpoint, f.srv.URL)
	return f
}

func (f *fakeHF) serve(w http.ResponseWriter, r *http.Request) {
	if file, ok := strings.CutPrefix(r.URL.Path, "/cdn/"); ok && file == "tiny.gguf" {
		f.serveCDN(w, r)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) != 5 || parts[2] != "resolve" || parts[4] != "tiny.gguf" || parts[3] != "main" {
		http.NotFound(w, r)
		return
	}
	switch parts[1] {
	case "repo":
	case "private":
		if r.Header.Get("Authorization") != "Bearer "+hfToken {
			http.Error(w, "Invalid credentials", http.StatusUnauthorized)
			return
		}
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("X-Linked-Etag", `"`+f.sha+`"`)
	w.Header().Set("X-Linked-Size", strconv.Itoa(len(f.content)))
	w.Header().Set("ETag", `W/"not-the-sha"`)
	http.Redirect(w, r, "/cdn/tiny.gguf", http.StatusFound)
}

func (f *fakeHF) serveCDN(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.ranges = append(f.ranges, r.Header.Get("Range"))
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	cutAt, stallAt := f.cutAt, f.stallAt
	f.cutAt, f.stallAt = 0, 0
	body := bytes.Clone(f.content)
	if f.corrupt {
		body[len(body)/2] ^= 0xff
	}
	f.mu.Unlock()

	start := 0
	if rng := r.Header.Get("Range"); rng != "" {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rng, "bytes="), "-"))
		if err != nil || n >= len(body) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(body)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start = n
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(body)-1, len(body)))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)-n))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
	}

	end := len(body)
	if cutAt > 0 {
		end = cutAt
	}
	if stallAt > 0 {
		end = stallAt
	}
	n, _ := w.Write(body[start:end])
	f.mu.Lock()
	f.sent += n
	f.mu.Unlock()
	w.(http.Flusher).Flush()
	switch {
	case cutAt > 0:
		panic(http.ErrAbortHandler) // drops the connection mid-body
	case stallAt > 0:
		<-r.Context().Done() // the client gives up
	}
}

func (f *fakeHF) seen() (ranges []string, sent int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ranges...), f.sent
}

// runDownloadCmd runs `rbee-hive model download` and returns its progress
// events and its last line.
func runDownloadCmd(t *testing.T, args ...string) (hiveRun, []api.ModelEvent, string) {
	t.Helper()
	run := runHive(t, "", append([]string{"model", "download"}, args...)...)
	var events []api.ModelEvent
	lines := strings.Split(strings.TrimSuffix(run.stdout, "\n"), "\n")
	for _, line := range lines[:len(lines)-1] {
		var ev api.ModelEvent
		assert.NilError(t, json.Unmarshal([]byte(line), &ev), "line %q", line)
		assert.Equal(t, ev.Event, "progress")
		events = append(events, ev)
	}
	return run, events, lines[len(lines)-1]
}

// lastLine is run with only its last line of stdout, for wantError.
func lastLine(run hiveRun, last string) hiveRun {
	run.stdout = last + "\n"
	return run
}

func TestDownloadWhole(t *testing.T) {
	dir, _ := newCatalogFixture(t)
	hf := newFakeHF(t)
	t.Setenv(envHFToken, hfToken)

	run, events, last := runDownloadCmd(t, tinyRef)

	assert.Equal(t, run.code, api.HiveExitOK)
	var m api.Model
	assert.NilError(t, json.Unmarshal([]byte(last), &m))
	assert.Equal(t, m.Name, "tiny")
	assert.Equal(t, m.SHA256, hf.sha)
	assert.Equal(t, m.Size, int64(len(hf.content)))
	assert.Equal(t, m.Source, tinyRef)
	assert.Equal(t, m.Revision, "main")
	assert.Assert(t, m.Architecture != "")
	assert.Equal(t, m.Path, filepath.Join(dir, "tiny", "tiny.gguf"))
	got, err := os.ReadFile(m.Path)
	assert.NilError(t, err)
	assert.Assert(t, bytes.Equal(got, hf.content))

	assert.Assert(t, len(events) >= 2)
	final := events[len(events)-1]
	assert.Equal(t, final.Bytes, int64(len(hf.content)))
	assert.Equal(t, final.Total, int64(len(hf.content)))
	// The token went to Hugging Face, not to the CDN host... which is the
	// same test server here, so only check that no partial is left.
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	assert.Equal(t, len(entries), 1, "catalog holds %v", entries)

	// A second download of a complete model fetches nothing.
	_, before := hf.seen()
	again, _, _ := runDownloadCmd(t, tinyRef)
	assert.Equal(t, again.code, api.HiveExitOK)
	_, after := hf.seen()
	assert.Equal(t, after, before)
}

func TestDownloadResumesAfterCut(t *testing.T) {
	dir, _ := newCatalogFixture(t)
	hf := newFakeHF(t)
	half := len(hf.content) / 2
	hf.cutAt = half

	first, _, last := runDownloadCmd(t, tinyRef)
	wantError(t, lastLine(first, last), api.HiveExitFailed, "run the command again to resume")
	fi, err := os.Stat(filepath.Join(dir, "tiny.partial"))
	assert.NilError(t, err)
	assert.Equal(t, fi.Size(), int64(half))
	_, err = os.Stat(filepath.Join(dir, "tiny"))
	assert.Assert(t, os.IsNotExist(err), "a half model is in the catalog")

	second, events, _ := runDownloadCmd(t, tinyRef)

	assert.Equal(t, second.code, api.HiveExitOK)
	ranges, sent := hf.seen()
	assert.DeepEqual(t, ranges, []string{"", fmt.Sprintf("bytes=%d-", half)})
	assert.Equal(t, sent, len(hf.content), "bytes were fetched twice")
	assert.Equal(t, events[0].Resumed, int64(half))
	got, err := os.ReadFile(filepath.Join(dir, "tiny", "tiny.gguf"))
	assert.NilError(t, err)
	assert.Assert(t, bytes.Equal(got, hf.content))
	_, err = os.Stat(filepath.Join(dir, "tiny.partial"))
	assert.Assert(t, os.IsNotExist(err))
}

func TestDownloadCorruptBytes(t *testing.T) {
	dir, _ := newCatalogFixture(t)
	hf := newFakeHF(t)
	hf.corrupt = true

	run, _, last := runDownloadCmd(t, tinyRef)

	wantError(t, lastLine(run, last), api.HiveExitFailed, "sha256 mismatch for "+tinyRef)
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	assert.Equal(t, len(entries), 0, "left behind: %v", entries)
}

func TestDownloadStalled(t *testing.T) {
	dir, _ := newCatalogFixture(t)
	hf := newFakeHF(t)
	hf.stallAt = 100

	run, _, last := runDownloadCmd(t, tinyRef, "--stall-timeout", "200ms")

	wantError(t, lastLine(run, last), api.HiveExitFailed,
		"stalled: no bytes for 200ms; the partial file keeps 100 bytes")
	fi, err := os.Stat(filepath.Join(dir, "tiny.partial"))
	assert.NilError(t, err)
	assert.Equal(t, fi.Size(), int64(100))
}

func TestDownloadRefused(t *testing.T) {
	newCatalogFixture(t)
	newFakeHF(t)

	tests := []struct {
		name     string
		args     []string
		token    string
		wantCode int
		wantErr  string
	}{
		{name: "no such file", args: []string{"hf:org/repo/other.gguf"},
			wantCode: api.HiveExitNotFound, wantErr: "no such file"},
		{name: "no such revision", args: []string{tinyRef, "--revision", "v9"},
			wantCode: api.HiveExitNotFound, wantErr: `no such file at revision "v9"`},
		{name: "private without token", args: []string{secretRef},
			wantCode: api.HiveExitUsage, wantErr: "private or gated: set HF_TOKEN"},
		{name: "private with wrong token", args: []string{secretRef}, token: "nope",
			wantCode: api.HiveExitUsage, wantErr: "private or gated: set HF_TOKEN"},
		{name: "dot dot", args: []string{"hf:org/repo/../../etc/x.gguf"},
			wantCode: api.HiveExitUsage, wantErr: `segment ".."`},
		{name: "absolute", args: []string{"hf:/etc/passwd.gguf"},
			wantCode: api.HiveExitUsage, wantErr: "invalid reference"},
		{name: "not hf", args: []string{"/etc/passwd"},
			wantCode: api.HiveExitUsage, wantErr: "use hf:ORG/REPO/FILE.gguf"},
		{name: "not gguf", args: []string{"hf:org/repo/x.bin"},
			wantCode: api.HiveExitUsage, wantErr: "must end in .gguf"},
		{name: "bad revision", args: []string{tinyRef, "--revision", "../main"},
			wantCode: api.HiveExitUsage, wantErr: "invalid --revision"},
		{name: "bad name", args: []string{tinyRef, "--name", "../x"},
			wantCode: api.HiveExitUsage, wantErr: "invalid model name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envHFToken, tc.token)
			run := runHive(t, "", append([]string{"model", "download"}, tc.args...)...)
			wantError(t, run, tc.wantCode, tc.wantErr)
		})
	}
}

func TestDownloadPrivateWithToken(t *testing.T) {
	newCatalogFixture(t)
	newFakeHF(t)
	t.Setenv(envHFToken, hfToken)

	run, _, _ := runDownloadCmd(t, secretRef)

	assert.Equal(t, run.code, api.HiveExitOK)
}

// TestDownloadForwardedHF: the token on stdin and --hf-endpoint (what the
// queen forwards from the user) win over the hive's own environment.
func TestDownloadForwardedHF(t *testing.T) {
	newCatalogFixture(t)
	hf := newFakeHF(t)
	t.Setenv(envHFEndpoint, "http://127.0.0.1:1") // the hive's own: wrong
	t.Setenv(envHFToken, "hive-token")            // the hive's own: refused

	run := runHive(t, hfToken+"\n", "model", "download", secretRef,
		"--hf-endpoint", hf.srv.URL+"/", "--hf-token-stdin")

	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Assert(t, !strings.Contains(run.stdout+run.stderr, hfToken), "the token was printed")
	m := decodeLast[api.Model](t, run.stdout)
	assert.Equal(t, m.Name, "tiny")
}

func TestDownloadForwardedHFRefused(t *testing.T) {
	newCatalogFixture(t)
	hf := newFakeHF(t)
	tests := []struct {
		name    string
		stdin   string
		args    []string
		wantErr string
	}{
		{name: "no token on stdin", args: []string{"--hf-token-stdin"},
			wantErr: "no Hugging Face token on stdin"},
		{name: "token with a space", stdin: "a b\n", args: []string{"--hf-token-stdin"},
			wantErr: "holds spaces or control characters"},
		{name: "wrong token", stdin: "nope\n", args: []string{"--hf-token-stdin"},
			wantErr: "private or gated"},
		{name: "endpoint not http", args: []string{"--hf-endpoint", "file:///etc"},
			wantErr: "invalid Hugging Face endpoint"},
		{name: "endpoint without host", args: []string{"--hf-endpoint", "https://"},
			wantErr: "invalid Hugging Face endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"model", "download", secretRef, "--hf-endpoint",
				hf.srv.URL}, tc.args...)
			run := runHive(t, tc.stdin, args...)
			wantError(t, lastLine(run, lastOf(run.stdout)), api.HiveExitUsage, tc.wantErr)
		})
	}
}

// lastOf is the last line of stdout.
func lastOf(stdout string) string {
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

// decodeLast decodes the last line of stdout.
func decodeLast[T any](t *testing.T, stdout string) T {
	t.Helper()
	var v T
	assert.NilError(t, json.Unmarshal([]byte(lastOf(stdout)), &v), "stdout: %q", stdout)
	return v
}

// fullDisk fails every write after limit bytes with ENOSPC.
type fullDisk struct {
	w     io.Writer
	limit int
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.limit {
		n, _ := d.w.Write(p[:d.limit])
		d.limit = 0
		return n, &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}
	}
	d.limit -= len(p)
	return d.w.Write(p)
}

func TestDownloadDiskFull(t *testing.T) {
	dir, _ := newCatalogFixture(t)
	newFakeHF(t)
	var stdout bytes.Buffer
	a := &app{stdout: &stdout, stderr: io.Discard, log: slog.New(slog.DiscardHandler)}
	opts := &downloadOptions{
		app: a, ref: tinyRef, revision: "main", stallTimeout: 10 * time.Second,
		progress:   time.Second,
		wrapWriter: func(w io.Writer) io.Writer { return &fullDisk{w: w, limit: 64} },
	}

	err := runDownload(context.Background(), opts)

	assert.ErrorContains(t, err, "disk full")
	_, err = os.Stat(filepath.Join(dir, "tiny"))
	assert.Assert(t, os.IsNotExist(err), "a half model is in the catalog")
}

func TestParseNvidiaSMI(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []api.GPUDevice
		wantErr string
	}{
		{name: "none", out: "", want: []api.GPUDevice{}},
		{name: "two GPUs",
			out: "0, NVIDIA H200, 143771, 143000, 9.0, 570.86.15\n" +
				"1, NVIDIA GeForce RTX 4090, 24564, 1024, 8.9, 570.86.15\n",
			want: []api.GPUDevice{
				{Index: 0, Device: "cuda:0", Name: "NVIDIA H200", MemoryTotal: 143771 << 20,
					MemoryFree: 143000 << 20, ComputeCapability: "9.0", Driver: "570.86.15"},
				{Index: 1, Device: "cuda:1", Name: "NVIDIA GeForce RTX 4090",
					MemoryTotal: 24564 << 20, MemoryFree: 1024 << 20, ComputeCapability: "8.9",
					Driver: "570.86.15"},
			}},
		{name: "unreadable line skipped",
			out: "0, A, [N/A], 1, 8.0, 1\n1, B, 2, 1, 8.0, 1\n",
			want: []api.GPUDevice{{Index: 1, Device: "cuda:1", Name: "B", MemoryTotal: 2 << 20,
				MemoryFree: 1 << 20, ComputeCapability: "8.0", Driver: "1"}},
			wantErr: `cannot read "0, A, [N/A], 1, 8.0, 1"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNvidiaSMI(tc.out)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
			} else {
				assert.NilError(t, err)
			}
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestDevices(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\necho '0, Fake GPU, 8192, 4096, 8.6, 550.1'\n"
	assert.NilError(t, os.WriteFile(filepath.Join(bin, "nvidia-smi"), []byte(script), 0o755))

	// NVML is skipped, so that a machine with a GPU runs the fallback too.
	t.Setenv(envNoNVML, "1")
	tests := []struct {
		name       string
		path       string
		wantGPUs   int
		wantSource string
	}{
		{name: "no nvidia-smi", path: t.TempDir(), wantGPUs: 0, wantSource: gpuSourceNone},
		{name: "with nvidia-smi", path: bin, wantGPUs: 1, wantSource: gpuSourceSMI},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			run := runHive(t, "", "devices")
			assert.Equal(t, run.code, api.HiveExitOK)
			d := decodeOne[api.Devices](t, run.stdout)
			assert.Assert(t, d.CPU.Cores > 0)
			assert.Assert(t, d.CPU.RAMTotal > 0)
			assert.Equal(t, len(d.GPUs), tc.wantGPUs)
			assert.Equal(t, d.GPUError, "")
			assert.Equal(t, d.GPUSource, tc.wantSource)
		})
	}
}
