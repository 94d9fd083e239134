package engine

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// The Large benchmarks run a generated ~110M-parameter F16 model, where
// matrix work dominates (stories260K measures per-token overhead instead).
// The model is generated once (a few seconds) and cached; set
// RBEE_BENCH_MODEL to use another file.

var (
	largeOnce sync.Once
	largePath string
	largeErr  error
)

func largeModel(b *testing.B) string {
	b.Helper()
	if p := os.Getenv("RBEE_BENCH_MODEL"); p != "" {
		return p
	}
	largeOnce.Do(func() {
		dir, err := os.UserCacheDir()
		if err != nil {
			dir = os.TempDir()
		}
		largePath = filepath.Join(dir, "rbee", "bench", "rbee-bench-110m-f16.gguf")
		if _, err := os.Stat(largePath); err == nil {
			return
		}
		largeErr = testmodel.WriteFile(largePath, testmodel.Bench())
	})
	if largeErr != nil {
		b.Fatalf("generate the benchmark model: %v", largeErr)
	}
	return largePath
}

func largeEngine(b *testing.B, slots int) *Engine {
	return runEngine(b, largeModel(b), slots, 512, runtime.NumCPU())
}

func BenchmarkLargePrompt(b *testing.B) {
	eng := largeEngine(b, 1)
	var tokens int
	var elapsed time.Duration
	i := 0
	for b.Loop() {
		i++
		_, res := complete(b, eng, context.Background(), greedy(string(rune('a'+i%26))+" "+benchPrompt, 1))
		tokens += res.PromptTokens - res.CachedTokens
		elapsed += res.PromptTime
	}
	b.ReportMetric(float64(tokens)/elapsed.Seconds(), "prompt_tok/s")
}

// BenchmarkLargeGenerate reports one stream's generation rate and its
// time to first token (a 4-token prompt).
func BenchmarkLargeGenerate(b *testing.B) {
	eng := largeEngine(b, 1)
	var tokens int
	var gen, ttft time.Duration
	for b.Loop() {
		_, res := complete(b, eng, context.Background(), greedy("Once upon a time", 32))
		tokens += res.CompletionTokens
		gen += res.GenerationTime
		ttft += res.PromptTime
	}
	b.ReportMetric(float64(tokens)/gen.Seconds(), "gen_tok/s")
	// Wall rate, prompt included: the figure to compare with 4 streams.
	b.ReportMetric(float64(tokens)/(gen+ttft).Seconds(), "wall_tok/s")
	b.ReportMetric(float64(ttft.Milliseconds())/float64(b.N), "ttft_ms")
}

// BenchmarkLargeGenerate4Streams runs four streams on four slots at once:
// one batch per step carries a token of each.
func BenchmarkLargeGenerate4Streams(b *testing.B) {
	benchFourStreams(b, largeEngine(b, 4), 32)
}
