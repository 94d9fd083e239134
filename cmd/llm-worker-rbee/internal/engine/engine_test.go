package engine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// startEngine loads the test model with the given slots and runs the loop
// until the test ends.
func startEngine(t testing.TB, slots, ctxPerSlot int) (*Engine, testenv.Model) {
	t.Helper()
	m := testenv.FindModel(t)
	return runEngine(t, m.Path, slots, ctxPerSlot, 1), m
}

// runEngine loads the model at path and runs its loop until the test ends.
func runEngine(t testing.TB, path string, slots, ctxPerSlot, threads int) *Engine {
	t.Helper()
	model, err := llm.Load(path, llm.LoadOptions{
		CtxSize: ctxPerSlot * slots, BatchSize: 512, Sequences: slots, Threads: threads,
	})
	assert.NilError(t, err)
	eng := New(model, Config{Slots: slots, CtxPerSlot: ctxPerSlot, BatchSize: 512},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); eng.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; model.Close() })
	return eng
}

func greedy(prompt string, maxTokens int) Request {
	return Request{Prompt: prompt, MaxTokens: maxTokens,
		Sampling: llm.SamplingParams{Temperature: 0, TopK: 1, TopP: 1, Seed: 1}}
}

// complete runs req to the end and returns its text and result.
func complete(t testing.TB, eng *Engine, ctx context.Context, req Request) (string, Result) {
	t.Helper()
	stream, err := eng.Submit(ctx, req)
	assert.NilError(t, err)
	var text strings.Builder
	for {
		piece, result, err := stream.Next(context.Background())
		assert.NilError(t, err)
		text.WriteString(piece)
		if result != nil {
			return text.String(), *result
		}
	}
}

func TestCompletionProducesText(t *testing.T) {
	eng, m := startEngine(t, 1, 256)
	text, res := complete(t, eng, context.Background(), greedy("Once upon a time", 40))

	assert.NilError(t, res.Err)
	assert.Equal(t, res.FinishReason, api.FinishLength)
	assert.Equal(t, res.CompletionTokens, 40)
	assert.Assert(t, res.PromptTokens > 1)
	assert.Assert(t, text != "")
	if m.Trained {
		// stories260K writes children's stories: common English words appear.
		lower := strings.ToLower(text)
		assert.Assert(t, strings.Contains(lower, " the ") || strings.Contains(lower, " was ") ||
			strings.Contains(lower, " a "), "not English: %q", text)
	}
}

func TestSameSeedSameText(t *testing.T) {
	eng, _ := startEngine(t, 1, 256)
	req := Request{Prompt: "Once upon a time", MaxTokens: 30,
		Sampling: llm.SamplingParams{Temperature: 0.8, TopK: 40, TopP: 0.95, Seed: 42}}
	first, _ := complete(t, eng, context.Background(), req)
	second, res := complete(t, eng, context.Background(), req)
	assert.Equal(t, first, second)
	// The second run reuses the cached prompt.
	assert.Assert(t, res.CachedTokens > 0)
}

func TestStopString(t *testing.T) {
	eng, m := startEngine(t, 1, 256)
	full, _ := complete(t, eng, context.Background(), greedy("Once upon a time", 60))
	if len(full) < 10 {
		t.Fatalf("too little text to pick a stop string from: %q", full)
	}
	stop := full[5:8]
	if !m.Trained {
		stop = full[3:5]
	}
	text, res := complete(t, eng, context.Background(), Request{
		Prompt: "Once upon a time", MaxTokens: 60, Stop: []string{stop},
		Sampling: llm.SamplingParams{Temperature: 0, TopK: 1, TopP: 1, Seed: 1},
	})
	assert.Equal(t, res.FinishReason, api.FinishStop)
	assert.Equal(t, text, full[:strings.Index(full, stop)])
}

func TestConcurrentSlotsMatchSequential(t *testing.T) {
	eng, _ := startEngine(t, 4, 256)
	prompts := []string{"Once upon a time", "The little dog", "Lily wanted to", "One day, a bird"}
	alone := make([]string, len(prompts))
	for i, p := range prompts {
		alone[i], _ = complete(t, eng, context.Background(), greedy(p, 32))
	}

	together := make([]string, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			together[i], _ = complete(t, eng, context.Background(), greedy(p, 32))
		}()
	}
	wg.Wait()
	assert.DeepEqual(t, together, alone)
	assert.Equal(t, eng.Stats().SlotsBusy, 0)
}

func TestCancelOneOfFour(t *testing.T) {
	eng, _ := startEngine(t, 4, 512)
	prompts := []string{"Once upon a time", "The little dog", "Lily wanted to", "One day, a bird"}
	alone := make([]string, len(prompts))
	for i, p := range prompts {
		alone[i], _ = complete(t, eng, context.Background(), greedy(p, 200))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make([]Result, len(prompts))
	texts := make([]string, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		reqCtx := context.Background()
		if i == 0 {
			reqCtx = ctx
		}
		stream, err := eng.Submit(reqCtx, greedy(p, 200))
		assert.NilError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				piece, result, err := stream.Next(context.Background())
				assert.Check(t, err)
				texts[i] += piece
				if i == 0 && len(texts[i]) > 0 {
					cancel()
				}
				if result != nil {
					results[i] = *result
					return
				}
			}
		}()
	}
	wg.Wait()
	assert.Assert(t, errors.Is(results[0].Err, context.Canceled), "got %v", results[0].Err)
	for i := 1; i < len(prompts); i++ {
		assert.NilError(t, results[i].Err)
		assert.Equal(t, texts[i], alone[i], "stream %d changed by the cancel", i)
	}
	assert.Equal(t, eng.Stats().SlotsBusy, 0)
}

func TestSubmitRejectsBadInput(t *testing.T) {
	eng, _ := startEngine(t, 1, 64)
	long := strings.Repeat("Once upon a time there was a dog. ", 40)
	tests := []struct {
		name string
		req  Request
		want error
	}{
		{name: "zero max tokens", req: greedy("Hello", 0), want: ErrInvalid},
		{name: "negative max tokens", req: greedy("Hello", -3), want: ErrInvalid},
		{name: "empty prompt", req: greedy("", 5), want: ErrInvalid},
		{name: "prompt longer than the context", req: greedy(long, 5), want: ErrPromptTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := eng.Submit(context.Background(), tc.req)
			assert.Assert(t, errors.Is(err, tc.want), "got %v", err)
		})
	}
}

func TestGenerationStopsAtContextLimit(t *testing.T) {
	eng, _ := startEngine(t, 1, 32)
	_, res := complete(t, eng, context.Background(), greedy("Once upon a time", 1000))
	assert.Equal(t, res.FinishReason, api.FinishLength)
	assert.Assert(t, res.PromptTokens+res.CompletionTokens <= 32)
}

func TestSubmitWaitsForASlotUntilCtxEnds(t *testing.T) {
	eng, _ := startEngine(t, 1, 512)
	busyCtx, stopBusy := context.WithCancel(context.Background())
	defer stopBusy()
	_, err := eng.Submit(busyCtx, greedy("Once upon a time", 100000))
	assert.NilError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = eng.Submit(ctx, greedy("Hello", 5))
	assert.Assert(t, is.ErrorIs(err, context.DeadlineExceeded))
}

func TestEmbeddingUnchangedByConcurrentGeneration(t *testing.T) {
	eng, _ := startEngine(t, 2, 512)
	alone, tokens, err := eng.Embed(context.Background(), "Once upon a time")
	assert.NilError(t, err)
	assert.Assert(t, tokens > 1 && len(alone) > 0)

	stream, err := eng.Submit(context.Background(), greedy("The little dog", 200))
	assert.NilError(t, err)
	during, _, err := eng.Embed(context.Background(), "Once upon a time")
	assert.NilError(t, err)
	for k := range alone {
		assert.Assert(t, abs(alone[k]-during[k]) < 1e-3, "component %d: %g vs %g", k, alone[k], during[k])
	}
	_, res, err := waitResult(context.Background(), stream)
	assert.NilError(t, err)
	assert.NilError(t, res.Err)
}

func abs(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
