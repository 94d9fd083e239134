// Command llm-worker-rbee serves one GGUF model with llama.cpp: completions
// over HTTP with streaming, heartbeats to the queen. The hive starts it;
// see docs/contracts.md for its flags.
package main

import (
	"os"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/workerd"
)

func main() {
	os.Exit(workerd.Main(os.Args[1:], os.Stderr))
}
