// Command queen-rbee is rbee's one daemon: the registry of hives and
// workers, the heartbeat receiver, and the OpenAI-compatible router.
package main

import (
	"os"

	"github.com/rbee-dev/rbee/internal/queen"
)

func main() {
	os.Exit(queen.Main(os.Args[1:], os.Stderr))
}
