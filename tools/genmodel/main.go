// Command genmodel writes a small llama-architecture GGUF model with random
// weights, for tests and benchmarks that need a real model file.
//
//	go run ./tools/genmodel -out PATH [-size tiny|bench] [-seed N]
//
// It prints the path and size in bytes, tab-separated, on stdout.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line settings.
type options struct {
	out  string
	size string
	seed int64
	// seedSet reports whether -seed was given; otherwise the preset's is used.
	seedSet bool
}

// run executes the command and returns its exit code: 2 for a bad command
// line, 1 when the model cannot be written.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "genmodel:", err)
		return 2
	}

	cfg, err := opts.config()
	if err != nil {
		fmt.Fprintln(stderr, "genmodel:", err)
		return 2
	}
	if err := testmodel.WriteFile(opts.out, cfg); err != nil {
		fmt.Fprintln(stderr, "genmodel:", err)
		return 1
	}

	fi, err := os.Stat(opts.out)
	if err != nil {
		fmt.Fprintln(stderr, "genmodel:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\t%d\n", opts.out, fi.Size())
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("genmodel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opts.out, "out", "", "path of the GGUF file to write (required)")
	fs.StringVar(&opts.size, "size", "tiny", "model size: tiny or bench")
	fs.Int64Var(&opts.seed, "seed", 0, "random seed (default: the preset's)")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}

	fs.Visit(func(f *flag.Flag) { opts.seedSet = opts.seedSet || f.Name == "seed" })
	switch {
	case fs.NArg() > 0:
		return opts, fmt.Errorf("unexpected argument %q; see -h", fs.Arg(0))
	case opts.out == "":
		return opts, errors.New("-out is required; see -h")
	}
	return opts, nil
}

// config returns the preset named by -size, with -seed applied.
func (o options) config() (testmodel.Config, error) {
	var cfg testmodel.Config
	switch o.size {
	case "tiny":
		cfg = testmodel.Tiny()
	case "bench":
		cfg = testmodel.Bench()
	default:
		return cfg, fmt.Errorf("-size %q is not tiny or bench", o.size)
	}
	if o.seedSet {
		cfg.Seed = o.seed
	}
	return cfg, nil
}
