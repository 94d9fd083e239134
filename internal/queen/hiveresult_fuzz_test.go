package queen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// printedResult is a Runner whose command printed stdout (on stderr too)
// and exited with code: a hive that answers anything at all.
type printedResult struct {
	stdout []byte
	code   int
}

func (p printedResult) Run(context.Context, []string, io.Reader) (sshexec.Result, error) {
	return sshexec.Result{Stdout: bytes.Clone(p.stdout), Stderr: bytes.Clone(p.stdout),
		ExitCode: p.code}, nil
}

// FuzzHiveResult feeds arbitrary output of rbee-hive, with an arbitrary
// exit code, to what the queen reads it with: each command's JSON result
// (hiveClient.run), its error result, and a download's JSON lines
// (progress events, counted in the metrics and published, then the
// model). It must return a result or an *httpapi.Error, never panic.
func FuzzHiveResult(f *testing.F) {
	seeds := []struct {
		out  string
		code int
	}{
		{`{"cpu":{"cores":2},"gpus":[],"gpu_source":"none"}`, api.HiveExitOK},
		{`{"models":[{"name":"tiny","size":1,"sha256":"aa"}]}`, api.HiveExitOK},
		{`{"id":"w-1","pid":42,"url":"http://h:1","log_path":"/x"}`, api.HiveExitOK},
		{`{"error":"does not fit","log_tail":["a","b"]}`, api.HiveExitNoFit},
		{"{\"event\":\"progress\",\"bytes\":5,\"total\":10,\"rate\":1,\"resumed\":2}\n" +
			`{"name":"tiny","size":10}`, api.HiveExitOK},
		{"{\"event\":\"progress\",\"bytes\":-5,\"resumed\":9e18}\n{\"error\":\"x\"}",
			api.HiveExitFailed},
		{"not json at all", 127},
		{"", -1},
	}
	for _, s := range seeds {
		f.Add([]byte(s.out), s.code)
	}
	s, _ := newTestServer(f)
	ctx := context.Background()
	h := registry.Hive{Name: "h1", Local: true}
	args := []string{"model", "download", "hf:o/r/f.gguf"}

	f.Fuzz(func(t *testing.T, out []byte, code int) {
		c := &hiveClient{bin: "rbee-hive", local: printedResult{stdout: out, code: code}}
		results := []any{&api.Devices{}, &api.ModelList{}, &api.SpawnResult{},
			&api.StopResult{}, &api.ModelRemoved{}}
		for _, res := range results {
			wantAPIError(t, c.run(ctx, h, []string{"x", "y"}, "", res))
		}
		_, err := c.version(ctx, h)
		wantAPIError(t, err)

		progress := s.downloadProgress(h.Name, "hf:o/r/f.gguf")
		var last []byte
		for line := range bytes.Lines(out) {
			line = bytes.TrimSuffix(line, []byte("\n"))
			if ev, ok := progressLine(line); ok {
				progress(ev)
				continue
			}
			last = line
		}
		_, err = downloadOutcome(h.Name, args, sshexec.Result{ExitCode: code}, last, nil)
		wantAPIError(t, err)
	})
}

// wantAPIError fails unless err is nil or an *httpapi.Error with a message.
func wantAPIError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var he *httpapi.Error
	if !errors.As(err, &he) || he.Message == "" {
		t.Fatalf("not an API error with a message: %#v", err)
	}
	if _, jerr := json.Marshal(httpapi.Body(he)); jerr != nil {
		t.Fatalf("the error cannot be sent: %v", jerr)
	}
}
