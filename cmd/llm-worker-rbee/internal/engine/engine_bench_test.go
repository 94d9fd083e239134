package engine

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/procstat"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// benchPrompt is about 200 tokens of plain English.
var benchPrompt = strings.Repeat("Once upon a time, there was a little girl named Lily. ", 14)

// BenchmarkPrompt measures prompt processing (prefill) in tokens/s. The
// slot cache is cleared by varying the first word, so nothing is reused.
func BenchmarkPrompt(b *testing.B) {
	eng, _ := startEngine(b, 1, 1024)
	var tokens int
	var elapsed time.Duration
	i := 0
	for b.Loop() {
		i++
		prompt := strings.Repeat("x", i%7+1) + " " + benchPrompt
		_, res := complete(b, eng, context.Background(), greedy(prompt, 1))
		tokens += res.PromptTokens - res.CachedTokens
		elapsed += res.PromptTime
	}
	b.ReportMetric(float64(tokens)/elapsed.Seconds(), "prompt_tok/s")
}

// BenchmarkGenerate measures generation of one stream in tokens/s.
func BenchmarkGenerate(b *testing.B) {
	eng, _ := startEngine(b, 1, 512)
	var tokens int
	var elapsed time.Duration
	for b.Loop() {
		_, res := complete(b, eng, context.Background(), greedy("Once upon a time", 128))
		tokens += res.CompletionTokens
		elapsed += res.GenerationTime
	}
	b.ReportMetric(float64(tokens)/elapsed.Seconds(), "gen_tok/s")
}

// BenchmarkGenerate4Streams runs four streams at once on four slots and
// reports their aggregate generation rate, to compare with one stream.
func BenchmarkGenerate4Streams(b *testing.B) {
	eng, _ := startEngine(b, 4, 512)
	benchFourStreams(b, eng, 128)
}

// benchFourStreams runs four greedy streams of maxTokens at once per
// iteration and reports their aggregate rate, wall time included.
func benchFourStreams(b *testing.B, eng *Engine, maxTokens int) {
	prompts := []string{"Once upon a time", "The little dog", "Lily wanted to", "One day, a bird"}
	var tokens int
	var elapsed time.Duration
	for b.Loop() {
		start := time.Now()
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, p := range prompts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, res := complete(b, eng, context.Background(), greedy(p, maxTokens))
				mu.Lock()
				tokens += res.CompletionTokens
				mu.Unlock()
			}()
		}
		wg.Wait()
		elapsed += time.Since(start)
	}
	b.ReportMetric(float64(tokens)/elapsed.Seconds(), "aggregate_gen_tok/s")
}

// BenchmarkModelLoad measures loading the model and creating its context, and
// reports the resident memory afterwards.
func BenchmarkModelLoad(b *testing.B) {
	path := startModelPath(b)
	for b.Loop() {
		m, err := llm.Load(path, llm.LoadOptions{CtxSize: 512, BatchSize: 512, Sequences: 1, Threads: 1})
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
	b.ReportMetric(float64(procstat.ResidentBytes())/(1<<20), "rss_MiB")
}

func startModelPath(b *testing.B) string {
	return testenv.FindModel(b).Path
}
