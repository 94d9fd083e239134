package engine

import (
	"context"
	"fmt"
	"math"
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
	logitsAt  int   // batch index of this slot's logits in the current step, or -1
	embedAt   []int // batch indices of an embedding job's tokens in the current step
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
	embed        bool // an embedding: decode the prompt, return a vector, no sampling
	embedding    []float32

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
		s.logitsAt, s.embedAt = -1, s.embedAt[:0]
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
	budget = e.addEmbeddings(budget)
	for _, s := range e.slots {
		if s.job == nil || s.job.embed || len(s.pending) == 0 || budget == 0 {
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

// addEmbeddings puts each waiting embedding job whole into the batch (its
// pooled output needs every token in one decode) and returns what is left
// of the budget. A job that does not fit waits for a later step.
func (e *Engine) addEmbeddings(budget int) int {
	for _, s := range e.slots {
		if s.job == nil || !s.job.embed || len(s.pending) == 0 || len(s.pending) > budget {
			continue
		}
		for _, token := range s.pending {
			s.embedAt = append(s.embedAt, e.add(s, token, true))
		}
		budget -= len(s.pending)
		e.promptTokens.Add(int64(len(s.pending)))
		s.pending = nil
	}
	return budget
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
		switch {
		case s.job == nil:
		case len(s.embedAt) > 0:
			e.finishEmbedding(s)
		case s.logitsAt >= 0:
			e.sampleOne(s)
		}
	}
}

// finishEmbedding reads slot s's embedding from the last decode.
func (e *Engine) finishEmbedding(s *slot) {
	vec := e.model.PooledEmbedding(s.seq)
	if vec == nil {
		vec = meanEmbedding(e.model, s.embedAt)
	}
	if vec == nil {
		e.finish(s, "", ErrNoEmbeddings)
		return
	}
	s.job.embedding = normalize(vec)
	e.finish(s, api.FinishStop, nil)
}

// meanEmbedding averages the token outputs at batch indices idx.
func meanEmbedding(m *llm.Model, idx []int) []float32 {
	var sum []float32
	for _, i := range idx {
		v := m.TokenEmbedding(i)
		if v == nil {
			return nil
		}
		if sum == nil {
			sum = make([]float32, len(v))
		}
		for k, x := range v {
			sum[k] += x
		}
	}
	for k := range sum {
		sum[k] /= float32(len(idx))
	}
	return sum
}

// normalize scales v to unit length, as OpenAI's embeddings are.
func normalize(v []float32) []float32 {
	var norm float64
	for _, x := range v {
		norm += float64(x) * float64(x)
	}
	if norm == 0 {
		return v
	}
	scale := float32(1 / math.Sqrt(norm))
	for k := range v {
		v[k] *= scale
	}
	return v
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
		Embedding:        j.embedding,
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
