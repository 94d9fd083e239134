// Command rbee is the keeper: the command line a person uses to drive rbee.
// It is a thin client of the queen; see internal/keeper.
package main

import (
	"os"

	"github.com/rbee-dev/rbee/internal/keeper"
)

func main() {
	os.Exit(keeper.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
