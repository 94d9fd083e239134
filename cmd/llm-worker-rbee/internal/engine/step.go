package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
	"github.com/rbee-dev/rbee/internal/api"
)

// slot is one sequence of the shared KV cache. Only the loop touches it.
type slot struct {
	seq       int
	job       *job  // nil when idle
	cached    []int // tokens of this sequence held in the KV cache, in order
	pending   []int // prompt tokens not yet decoded
	last      int   // last sampled token, to decode at the next step
	generated int
	logitsAt  int // batch index of this slot's logits in the current step, or -1
}

// job is one request while it runs.
type job struct {
	ctx          context.Context
	req          Request
	prompt       []int
	sampler      *llm.Sampler
	stream       *Stream
	filter       stopFilter
	slotIndex    int
	reusedTokens int

	submitted  time.Time
	firstToken time.Time
}

// step builds one batch from every active slot, decodes it and samples.
func (e *Engine) step() {
	start := time.Now()
	budget := e.cfg.BatchSize
	hadPrompt := false

	// Generating slots go first so a long prompt never delays their tokens.
	for _, s := range e.slots {
		s.logitsAt = -1
		if s.job == nil {
			continue
		}
		if s.job.ctx.Err() != nil {
			e.finish(s, "", s.job.ctx.Err())
			continue
		}
		if len(s.pending) == 0 && budget > 0 {
			s.logitsAt = e.add(s, s.last, true)
			budget--
		}
	}
	for _, s := range e.slots {
		if s.job == nil || len(s.pending) == 0 || budget == 0 {
			continue
		}
		n := min(len(s.pending), budget)
		for i := range n {
			last := i == n-1 && n == len(s.pending)
			idx := e.add(s, s.pending[i], last)
			if last {
				s.logitsAt = idx
			}
		}
		s.pending = s.pending[n:]
		budget -= n
		hadPrompt = true
		e.promptTokens.Add(int64(n))
	}
	if e.model.BatchLen() == 0 {
		return
	}

	if err := e.model.Decode(); err != nil {
		e.failBatch(err)
		return
	}
	e.sampleAll()
	elapsed := time.Since(start).Nanoseconds()
	if hadPrompt {
		e.promptNanos.Add(elapsed)
	} else {
		e.generateNanos.Add(elapsed)
	}
}

// add puts one token of slot s into the batch at the slot's next position.
func (e *Engine) add(s *slot, token int, wantLogits bool) int {
	idx := e.model.BatchAdd(token, len(s.cached), s.seq, wantLogits)
	s.cached = append(s.cached, token)
	return idx
}

// failBatch ends every slot that was in a batch that failed to decode; their
// cache state is unknown, so it is dropped.
func (e *Engine) failBatch(err error) {
	e.log.Error("decode failed", "error", err)
	for _, s := range e.slots {
		if s.job != nil {
			e.model.ClearSequence(s.seq)
			s.cached = s.cached[:0]
			e.finish(s, "", fmt.Errorf("decode: %w", err))
		}
	}
}

func (e *Engine) sampleAll() {
	for _, s := range e.slots {
		if s.job == nil || s.logitsAt < 0 {
			continue
		}
		e.sampleOne(s)
	}
}

// sampleOne takes slot s's next token and decides whether it goes on.
func (e *Engine) sampleOne(s *slot) {
	j := s.job
	if j.firstToken.IsZero() {
		j.firstToken = time.Now()
	}
	token := j.sampler.Sample(e.model, s.logitsAt)
	if e.model.IsEndOfGeneration(token) {
		e.finish(s, api.FinishStop, nil)
		return
	}
	s.generated++
	e.generatedTokens.Add(1)
	text, stopped := j.filter.push(e.model.TokenPiece(token))
	if text != "" {
		j.stream.push(text)
	}
	switch {
	case stopped:
		e.finish(s, api.FinishStop, nil)
	case s.generated >= j.req.MaxTokens || len(s.cached)+1 >= e.cfg.CtxPerSlot:
		e.finish(s, api.FinishLength, nil)
	default:
		s.last = token
	}
}

// finish ends slot s's job, with a finish reason or an error, and frees it.
func (e *Engine) finish(s *slot, reason string, err error) {
	j := s.job
	if err == nil {
		if rest := j.filter.flush(); rest != "" {
			j.stream.push(rest)
		}
	}
	now := time.Now()
	result := Result{
		FinishReason:     reason,
		PromptTokens:     len(j.prompt),
		CachedTokens:     j.reusedTokens,
		CompletionTokens: s.generated,
		Err:              err,
	}
	if !j.firstToken.IsZero() {
		result.PromptTime = j.firstToken.Sub(j.submitted)
		result.GenerationTime = now.Sub(j.firstToken)
	}
	j.stream.close(result)

	s.job = nil
	s.pending = nil
	e.busy.Add(-1)
	if err == nil {
		e.requestsServed.Add(1)
	} else {
		e.requestsFailed.Add(1)
	}
	e.free <- s.seq
}
