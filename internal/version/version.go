// Package version holds the release version of the rbee binaries, set when
// they are linked:
//
//	go build -ldflags "-X github.com/rbee-dev/rbee/internal/version.Version=v0.1.0"
package version

import (
	"fmt"

	"github.com/rbee-dev/rbee/internal/api"
)

// Version is the release version; "dev" for a build without -ldflags.
var Version = "dev"

// String returns the version for people, for example "rbee dev (protocol 1)".
func String() string {
	return fmt.Sprintf("rbee %s (protocol %d)", Version, api.ProtocolVersion)
}
