// Package testmodel generates small llama-architecture GGUF models with
// random weights, so tests and benchmarks can load a real model through
// llama.cpp when the trained test model is not on disk.
//
// The generated text is noise: the weights are random. What the model does
// exercise is real loading, tokenizing and inference.
package testmodel

import (
	"errors"
	"fmt"
	"math"
)

// ErrInvalidConfig is wrapped by every error that Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid model config")

// minVocab is the smallest vocabulary: the three special tokens and the 256
// byte tokens.
const minVocab = specialTokens + 256

// maxDim bounds every dimension so that sizes cannot overflow.
const maxDim = 1 << 20

// Config describes the model to generate.
type Config struct {
	// Name is written as general.name.
	Name string
	// VocabSize is the number of tokens, at least 259.
	VocabSize int
	// EmbeddingLength is the width of the hidden state.
	EmbeddingLength int
	// BlockCount is the number of transformer blocks.
	BlockCount int
	// HeadCount is the number of query heads.
	HeadCount int
	// HeadCountKV is the number of key and value heads; it divides HeadCount.
	HeadCountKV int
	// FeedForwardLength is the inner width of the feed-forward network.
	FeedForwardLength int
	// ContextLength is the training context length the model advertises.
	ContextLength int
	// F16 stores the weight matrices as F16; otherwise they are F32.
	// Norm weights are always F32.
	F16 bool
	// Seed makes the random weights reproducible.
	Seed int64
}

// Tiny returns a model of about 650 KB that loads and generates in
// milliseconds.
func Tiny() Config {
	return Config{
		Name:              "rbee-tiny",
		VocabSize:         512,
		EmbeddingLength:   64,
		BlockCount:        2,
		HeadCount:         4,
		HeadCountKV:       4,
		FeedForwardLength: 172,
		ContextLength:     512,
		Seed:              1,
	}
}

// Bench returns a model of about 110M parameters in F16 (about 220 MB), big
// enough that matrix work dominates the time per token.
func Bench() Config {
	return Config{
		Name:              "rbee-bench",
		VocabSize:         16384,
		EmbeddingLength:   768,
		BlockCount:        12,
		HeadCount:         12,
		HeadCountKV:       12,
		FeedForwardLength: 2048,
		ContextLength:     2048,
		F16:               true,
		Seed:              1,
	}
}

// Validate reports the first value that llama.cpp could not load, or that
// this package cannot write. Its errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	if c.Name == "" {
		return invalid("name is empty")
	}
	if c.VocabSize < minVocab || c.VocabSize > math.MaxInt32 {
		return invalid("vocab size %d is outside [%d, %d]", c.VocabSize, minVocab, math.MaxInt32)
	}
	dims := []struct {
		name string
		v    int
	}{
		{"embedding length", c.EmbeddingLength},
		{"block count", c.BlockCount},
		{"head count", c.HeadCount},
		{"kv head count", c.HeadCountKV},
		{"feed-forward length", c.FeedForwardLength},
		{"context length", c.ContextLength},
	}
	for _, d := range dims {
		if d.v < 1 || d.v > maxDim {
			return invalid("%s %d is outside [1, %d]", d.name, d.v, maxDim)
		}
	}
	return c.validateHeads()
}

// validateHeads checks how the heads split the embedding.
func (c Config) validateHeads() error {
	if c.EmbeddingLength%c.HeadCount != 0 {
		return invalid("head count %d does not divide embedding length %d",
			c.HeadCount, c.EmbeddingLength)
	}
	if c.HeadCount%c.HeadCountKV != 0 {
		return invalid("kv head count %d does not divide head count %d",
			c.HeadCountKV, c.HeadCount)
	}
	// RoPE rotates pairs of values, so a head needs an even width.
	if hd := c.headDim(); hd%2 != 0 {
		return invalid("head width %d (embedding length / head count) is odd", hd)
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
}

// headDim is the width of one attention head.
func (c Config) headDim() int { return c.EmbeddingLength / c.HeadCount }

// kvDim is the width of the key and value projections.
func (c Config) kvDim() int { return c.headDim() * c.HeadCountKV }

// ParamCount returns the number of weights in the model.
func (c Config) ParamCount() int64 {
	var n int64
	for _, t := range tensorPlan(c) {
		n += int64(t.elements())
	}
	return n
}
