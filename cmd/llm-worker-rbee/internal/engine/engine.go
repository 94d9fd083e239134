// Package engine schedules completions onto a worker's slots. One goroutine
// owns the llama.cpp context and runs a decode loop: at every step it puts
// the next token of every generating slot and a share of every waiting
// prompt into one batch (continuous batching), decodes it, samples each
// slot's next token and hands the text to that slot's stream. A request
// joins at the next step and leaves as soon as it ends, without stalling
// the others.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
)

// Errors returned by Submit.
var (
	ErrInvalid       = errors.New("invalid request")
	ErrPromptTooLong = errors.New("prompt does not fit the context")
	ErrClosed        = errors.New("engine is shutting down")
	// ErrNoEmbeddings means the model produced no embeddings to return.
	ErrNoEmbeddings = errors.New("the model produces no embeddings")
)

// Config sizes the engine.
type Config struct {
	Slots      int // sequences decoded together
	CtxPerSlot int // tokens of context each slot may hold
	BatchSize  int // most tokens per decode step
}

// Request is one completion to run.
type Request struct {
	Prompt    string
	MaxTokens int
	Sampling  llm.SamplingParams
	Stop      []string
	// Special lets control-token markers in Prompt become control tokens:
	// set for prompts rendered from a chat template, never for raw text.
	Special bool
}

// Stats are running totals, read for heartbeats and metrics.
type Stats struct {
	PromptTokens     int64
	GeneratedTokens  int64
	RequestsServed   int64
	RequestsFailed   int64 // cancelled by the client, or failed
	SlotsBusy        int
	SlotsTotal       int
	PromptBusyNanos  int64 // time spent in steps that processed prompt tokens
	GenerateBusyNano int64 // time spent in steps that only generated
}

// Engine runs completions on one loaded model.
type Engine struct {
	model *llm.Model
	cfg   Config
	log   *slog.Logger

	free chan int  // indices of idle slots; receiving one claims it
	jobs chan *job // claimed slots with their request, for the loop
	done chan struct{}

	slots []*slot // owned by the loop goroutine

	busy            atomic.Int32
	promptTokens    atomic.Int64
	generatedTokens atomic.Int64
	requestsServed  atomic.Int64
	requestsFailed  atomic.Int64
	promptNanos     atomic.Int64
	generateNanos   atomic.Int64
}

// New makes an engine; Run must be called for it to do any work.
func New(model *llm.Model, cfg Config, log *slog.Logger) *Engine {
	e := &Engine{
		model: model,
		cfg:   cfg,
		log:   log,
		free:  make(chan int, cfg.Slots),
		jobs:  make(chan *job, cfg.Slots),
		done:  make(chan struct{}),
		slots: make([]*slot, cfg.Slots),
	}
	for i := range cfg.Slots {
		e.slots[i] = &slot{seq: i}
		e.free <- i
	}
	return e
}

// Stats returns a snapshot of the running totals.
func (e *Engine) Stats() Stats {
	return Stats{
		PromptTokens:     e.promptTokens.Load(),
		GeneratedTokens:  e.generatedTokens.Load(),
		RequestsServed:   e.requestsServed.Load(),
		RequestsFailed:   e.requestsFailed.Load(),
		SlotsBusy:        int(e.busy.Load()),
		SlotsTotal:       e.cfg.Slots,
		PromptBusyNanos:  e.promptNanos.Load(),
		GenerateBusyNano: e.generateNanos.Load(),
	}
}

// Submit validates req, waits for a free slot (or ctx), and starts it. The
// returned stream delivers the text; cancelling ctx ends the generation at
// the next step and frees the slot.
func (e *Engine) Submit(ctx context.Context, req Request) (*Stream, error) {
	if req.MaxTokens <= 0 {
		return nil, fmt.Errorf("%w: max_tokens must be at least 1, got %d", ErrInvalid, req.MaxTokens)
	}
	if req.Prompt == "" {
		return nil, fmt.Errorf("%w: prompt is empty", ErrInvalid)
	}
	tokens, err := e.tokenize(req.Prompt, req.Special, e.cfg.CtxPerSlot-1)
	if err != nil {
		return nil, err
	}
	sampler, err := e.model.NewSampler(req.Sampling)
	if err != nil {
		return nil, err
	}
	j := &job{ctx: ctx, req: req, prompt: tokens, sampler: sampler,
		stream: newStream(), filter: stopFilter{stops: req.Stop}}
	if err := e.start(ctx, j); err != nil {
		return nil, err
	}
	return j.stream, nil
}

// Embed returns the embedding of text: the model's pooled embedding when
// it has a pooling type, else the mean of its last layer's token outputs.
// The text must fit one batch. It also returns the number of tokens.
func (e *Engine) Embed(ctx context.Context, text string) ([]float32, int, error) {
	if text == "" {
		return nil, 0, fmt.Errorf("%w: input is empty", ErrInvalid)
	}
	tokens, err := e.tokenize(text, false, min(e.cfg.CtxPerSlot, e.cfg.BatchSize))
	if err != nil {
		return nil, 0, err
	}
	j := &job{ctx: ctx, prompt: tokens, embed: true, stream: newStream()}
	if err := e.start(ctx, j); err != nil {
		return nil, 0, err
	}
	_, res, err := waitResult(ctx, j.stream)
	if err != nil {
		return nil, 0, err
	}
	return res.Embedding, len(tokens), res.Err
}

// tokenize checks that text makes at most limit tokens.
func (e *Engine) tokenize(text string, special bool, limit int) ([]int, error) {
	tokens, err := e.model.Tokenize(text, special)
	if err != nil {
		return nil, fmt.Errorf("%w: tokenize: %v", ErrInvalid, err)
	}
	if len(tokens) > limit {
		return nil, fmt.Errorf("%w: the input is %d tokens and at most %d fit in the context; "+
			"shorten it or start the worker with a larger --ctx-size",
			ErrPromptTooLong, len(tokens), limit)
	}
	return tokens, nil
}

// start waits for a free slot (or ctx) and hands j to the loop.
func (e *Engine) start(ctx context.Context, j *job) error {
	select {
	case j.slotIndex = <-e.free:
	case <-ctx.Done():
		return ctx.Err()
	case <-e.done:
		return ErrClosed
	}
	j.ctx, j.submitted = ctx, time.Now()
	e.busy.Add(1)
	e.jobs <- j // never blocks: one buffer place per slot
	return nil
}

// waitResult reads a stream to its end.
func waitResult(ctx context.Context, s *Stream) (string, *Result, error) {
	var text strings.Builder
	for {
		piece, res, err := s.Next(ctx)
		if err != nil {
			return "", nil, err
		}
		text.WriteString(piece)
		if res != nil {
			return text.String(), res, nil
		}
	}
}

// Run is the decode loop. It returns when ctx ends, after failing every
// request still in flight.
func (e *Engine) Run(ctx context.Context) {
	defer close(e.done)
	for {
		if !e.anyActive() {
			select {
			case j := <-e.jobs:
				e.admit(j)
			case <-ctx.Done():
				e.failAll(ErrClosed)
				return
			}
		}
		e.admitWaiting()
		if ctx.Err() != nil {
			e.failAll(ErrClosed)
			return
		}
		e.step()
	}
}

func (e *Engine) anyActive() bool {
	for _, s := range e.slots {
		if s.job != nil {
			return true
		}
	}
	return false
}

func (e *Engine) admitWaiting() {
	for {
		select {
		case j := <-e.jobs:
			e.admit(j)
		default:
			return
		}
	}
}

// admit puts a job in its slot, reusing the part of the slot's KV cache
// that matches the start of the new prompt.
func (e *Engine) admit(j *job) {
	s := e.slots[j.slotIndex]
	keep := commonPrefix(s.cached, j.prompt)
	if j.embed {
		keep = 0 // every token's output is needed
	}
	if keep >= len(j.prompt) {
		keep = len(j.prompt) - 1 // decode at least one token to get logits
	}
	if keep == 0 || !e.model.TruncateSequence(s.seq, keep) {
		e.model.ClearSequence(s.seq)
		keep = 0
	}
	s.cached = s.cached[:keep]
	s.job = j
	s.pending = j.prompt[keep:]
	s.generated = 0
	j.reusedTokens = keep
}

func commonPrefix(a, b []int) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func (e *Engine) failAll(err error) {
	for _, s := range e.slots {
		if s.job != nil {
			e.finish(s, "", err)
		}
	}
}
