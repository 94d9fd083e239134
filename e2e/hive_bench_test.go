package e2e

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/sshexec"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// The hive-call benchmarks run `rbee-hive version` the three ways the
// queen can, and report the median and 99th percentile latency beside Go's
// mean. The sshd runs on this machine, so the remote rbee-hive is the one
// built for the tests.

func BenchmarkHiveCallPooled(b *testing.B) {
	s := sshtest.StartServer(b, "127.0.0.2")
	p := sshexec.NewPool(sshexec.Config{KnownHostsPath: benchKnownHosts(b, s)})
	defer p.Close()
	r := p.Runner(benchTarget(s))
	hiveVersion(b, r) // dial outside the timed loop

	benchmarkHiveCall(b, func() sshexec.Runner { return r })
}

func BenchmarkHiveCallFresh(b *testing.B) {
	s := sshtest.StartServer(b, "127.0.0.2")
	cfg := sshexec.Config{KnownHostsPath: benchKnownHosts(b, s)}
	benchmarkHiveCall(b, func() sshexec.Runner { return freshRunner{cfg: cfg, target: benchTarget(s)} })
}

func BenchmarkHiveCallLocal(b *testing.B) {
	benchmarkHiveCall(b, func() sshexec.Runner { return sshexec.Local{} })
}

// BenchmarkHiveColdRun runs `rbee-hive worker list` as a fresh process, as
// every hive command is, and reports its wall time and its peak RSS. Each
// run is started by testdata/maxrss, a small program: started from this
// test binary, the child would be reported with the test's own peak RSS.
func BenchmarkHiveColdRun(b *testing.B) {
	helper := filepath.Join(b.TempDir(), "maxrss")
	build := exec.Command("go", "build", "-o", helper, "./testdata/maxrss")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build maxrss: %v\n%s", err, out)
	}
	bin := filepath.Join(binDir, "rbee-hive")
	env := append(os.Environ(), "RBEE_HIVE_STATE_DIR="+b.TempDir())
	var latencies []time.Duration
	var peakKB int64
	for b.Loop() {
		cmd := exec.Command(helper, bin, "worker", "list")
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("maxrss rbee-hive worker list: %v", err)
		}
		var run struct {
			WallNS   int64  `json:"wall_ns"`
			MaxRSSKB int64  `json:"maxrss_kb"`
			Stdout   string `json:"stdout"`
		}
		if err := json.Unmarshal(out, &run); err != nil {
			b.Fatalf("maxrss printed %q: %v", out, err)
		}
		var list api.HiveWorkerList
		if err := json.Unmarshal([]byte(run.Stdout), &list); err != nil {
			b.Fatalf("rbee-hive worker list printed %q: %v", run.Stdout, err)
		}
		latencies = append(latencies, time.Duration(run.WallNS))
		peakKB = max(peakKB, run.MaxRSSKB)
	}
	reportLatencies(b, latencies)
	b.ReportMetric(float64(peakKB)/1024, "peak-rss-MB")
}

func benchmarkHiveCall(b *testing.B, runner func() sshexec.Runner) {
	b.Helper()
	var latencies []time.Duration
	for b.Loop() {
		start := time.Now()
		hiveVersion(b, runner())
		latencies = append(latencies, time.Since(start))
	}
	reportLatencies(b, latencies)
}

func reportLatencies(b *testing.B, latencies []time.Duration) {
	b.Helper()
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Nanoseconds()), "p50-ns/op")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Nanoseconds()), "p99-ns/op")
}

// hiveVersion runs `rbee-hive version` with r and checks its answer.
func hiveVersion(b *testing.B, r sshexec.Runner) {
	b.Helper()
	argv := []string{filepath.Join(binDir, "rbee-hive"), "version"}
	res, err := r.Run(context.Background(), argv, nil)
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("rbee-hive version: %v (exit %d): %s", err, res.ExitCode, res.Stderr)
	}
	var v api.HiveVersion
	if err := json.Unmarshal(res.Stdout, &v); err != nil || v.ProtocolVersion != api.ProtocolVersion {
		b.Fatalf("rbee-hive version printed %q: %v", res.Stdout, err)
	}
}

// freshRunner dials a new connection for every command.
type freshRunner struct {
	cfg    sshexec.Config
	target sshexec.Target
}

func (f freshRunner) Run(ctx context.Context, argv []string, stdin io.Reader) (sshexec.Result, error) {
	p := sshexec.NewPool(f.cfg)
	defer p.Close()
	return p.Run(ctx, f.target, argv, stdin)
}

func benchTarget(s *sshtest.Server) sshexec.Target {
	return sshexec.Target{Host: s.Addr, Port: s.Port, User: s.User, KeyPath: s.ClientKeyPath}
}

func benchKnownHosts(b *testing.B, s *sshtest.Server) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(s.KnownHostsLine()+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}
