package engine

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Result is how a completion ended.
type Result struct {
	FinishReason     string // api.FinishStop or api.FinishLength; empty on error
	PromptTokens     int
	CachedTokens     int // prompt tokens reused from the slot's cache
	CompletionTokens int
	PromptTime       time.Duration // submit to first sampled token
	GenerationTime   time.Duration // first sampled token to the end
	Embedding        []float32     // for embedding jobs
	Err              error
}

// Stream carries one completion's text from the decode loop to its reader.
// The loop never blocks on it: text accumulates until the reader takes it,
// so one slow client cannot stall the other slots.
type Stream struct {
	mu     sync.Mutex
	text   strings.Builder
	result *Result
	notify chan struct{} // holds one token when there is something new
}

func newStream() *Stream {
	return &Stream{notify: make(chan struct{}, 1)}
}

func (s *Stream) push(text string) {
	s.mu.Lock()
	s.text.WriteString(text)
	s.mu.Unlock()
	s.wake()
}

func (s *Stream) close(r Result) {
	s.mu.Lock()
	s.result = &r
	s.mu.Unlock()
	s.wake()
}

func (s *Stream) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next waits for new text or the end. It returns the text produced since
// the last call, and the result once the completion has ended (text may be
// non-empty then too). ctx ending returns ctx's error.
func (s *Stream) Next(ctx context.Context) (string, *Result, error) {
	for {
		s.mu.Lock()
		text := s.text.String()
		s.text.Reset()
		result := s.result
		s.mu.Unlock()
		if text != "" || result != nil {
			return text, result, nil
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return "", nil, ctx.Err()
		}
	}
}
