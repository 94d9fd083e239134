package sshexec

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// The benchmarks run `true` (a stand-in for `rbee-hive version`) three
// ways and report the median latency as p50-ns/op beside Go's mean ns/op.

func BenchmarkRunPooled(b *testing.B) {
	s := sshtest.StartServer(b, "127.0.0.2")
	p := NewPool(Config{KnownHostsPath: knownHostsFile(b, s)})
	defer p.Close()
	r := p.Runner(serverTarget(s))
	mustRun(b, r) // dial outside the timed loop

	benchmarkRunner(b, func() Runner { return r })
}

func BenchmarkRunFreshConnection(b *testing.B) {
	s := sshtest.StartServer(b, "127.0.0.2")
	known := knownHostsFile(b, s)

	benchmarkRunner(b, func() Runner {
		return freshRunner{cfg: Config{KnownHostsPath: known}, target: serverTarget(s)}
	})
}

func BenchmarkRunLocal(b *testing.B) {
	benchmarkRunner(b, func() Runner { return Local{} })
}

func benchmarkRunner(b *testing.B, runner func() Runner) {
	b.Helper()
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		mustRun(b, runner())
		latencies = append(latencies, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Nanoseconds()), "p50-ns/op")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Nanoseconds()), "p99-ns/op")
}

// freshRunner dials a new connection for every command.
type freshRunner struct {
	cfg    Config
	target Target
}

func (f freshRunner) Run(ctx context.Context, argv []string, stdin io.Reader) (Result, error) {
	p := NewPool(f.cfg)
	defer p.Close()
	return p.Run(ctx, f.target, argv, stdin)
}

func mustRun(b *testing.B, r Runner) {
	b.Helper()
	res, err := r.Run(context.Background(), []string{"true"}, nil)
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("true: %v (exit %d)", err, res.ExitCode)
	}
}

func knownHostsFile(b *testing.B, s *sshtest.Server) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(s.KnownHostsLine()+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}
