// Command rbee-hive manages the workers of one GPU node. The queen runs it,
// locally or over SSH; it prints one JSON result and exits.
package main

import (
	"os"

	"github.com/rbee-dev/rbee/internal/hive"
)

func main() {
	os.Exit(hive.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
