package version

import (
	"fmt"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestString(t *testing.T) {
	tests := []struct {
		name    string
		version string
		want    string
	}{
		{
			name:    "default",
			version: "dev",
			want:    fmt.Sprintf("rbee dev (protocol %d)", api.ProtocolVersion),
		},
		{
			name:    "release",
			version: "v0.3.1",
			want:    fmt.Sprintf("rbee v0.3.1 (protocol %d)", api.ProtocolVersion),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := Version
			t.Cleanup(func() { Version = old })
			Version = tc.version

			assert.Equal(t, String(), tc.want)
		})
	}
}
