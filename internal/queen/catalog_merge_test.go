package queen

import (
	"io"
	"net/http"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

func TestMergeCatalog(t *testing.T) {
	tiny := api.Model{Name: "tiny", SHA256: "aa", Size: 10, Path: "/h1/tiny.gguf"}
	tinyElsewhere := tiny
	tinyElsewhere.Path = "/h2/tiny.gguf"
	otherTiny := api.Model{Name: "tiny", SHA256: "bb", Size: 20}
	big := api.Model{Name: "big", SHA256: "cc", Size: 30}
	down := &httpapi.Error{Status: http.StatusBadGateway, Message: `could not run rbee-hive ` +
		`on hive "h4": dial`}

	got := mergeCatalog([]hiveModels{
		{hive: "h2", models: []api.Model{tinyElsewhere, big}},
		{hive: "h1", models: []api.Model{tiny}},
		{hive: "h3", models: []api.Model{otherTiny}},
		{hive: "h4", err: down},
		{hive: "h5"},
	})

	assert.DeepEqual(t, got, api.Catalog{
		Models: []api.CatalogModel{
			{Model: api.Model{Name: "big", SHA256: "cc", Size: 30}, Hives: []string{"h2"}},
			{Model: api.Model{Name: "tiny", SHA256: "aa", Size: 10}, Hives: []string{"h1", "h2"},
				NameConflict: true},
			{Model: api.Model{Name: "tiny", SHA256: "bb", Size: 20}, Hives: []string{"h3"}, NameConflict: true},
		},
		Unreachable: []api.CatalogHiveError{{Hive: "h4", Error: down.Message}},
	})
}

func TestDownloadArgs(t *testing.T) {
	tests := []struct {
		name      string
		req       api.ModelDownloadRequest
		wantArgs  []string
		wantStdin string
		wantErr   string
	}{
		{name: "plain", req: api.ModelDownloadRequest{Ref: "hf:o/r/f.gguf"},
			wantArgs: []string{"model", "download", "hf:o/r/f.gguf"}},
		{name: "token over stdin, endpoint in argv",
			req: api.ModelDownloadRequest{Ref: "hf:o/r/f.gguf", Revision: "v1", Name: "f",
				HFToken: "hf_secret", HFEndpoint: "https://mirror.example/hf"},
			wantArgs: []string{"model", "download", "hf:o/r/f.gguf", "--revision", "v1",
				"--name", "f", "--hf-endpoint", "https://mirror.example/hf", "--hf-token-stdin"},
			wantStdin: "hf_secret\n"},
		{name: "endpoint not http", req: api.ModelDownloadRequest{Ref: "hf:o/r/f.gguf",
			HFEndpoint: "file:///etc"}, wantErr: "hf_endpoint must be an http(s) URL"},
		{name: "token with a newline", req: api.ModelDownloadRequest{Ref: "hf:o/r/f.gguf",
			HFToken: "a\nb"}, wantErr: "hf_token holds spaces or control characters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args, stdin, err := downloadArgs(tc.req)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				assert.Check(t, !is.Contains(err.Error(), "a\nb")().Success())
				return
			}
			assert.NilError(t, err)
			assert.DeepEqual(t, args, tc.wantArgs)
			for _, a := range args {
				assert.Check(t, a != tc.req.HFToken || a == "", "the token is in argv")
			}
			got := ""
			if stdin != nil {
				b, _ := io.ReadAll(stdin)
				got = string(b)
			}
			assert.Equal(t, got, tc.wantStdin)
		})
	}
}
