package testmodel

import (
	"testing"

	"gotest.tools/v3/assert"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; empty for no error
	}{
		{"tiny", func(*Config) {}, ""},
		{"grouped query attention", func(c *Config) { c.HeadCountKV = 2 }, ""},
		{"empty name", func(c *Config) { c.Name = "" }, "name is empty"},
		{"vocab too small", func(c *Config) { c.VocabSize = 258 }, "vocab size 258"},
		{"zero embedding", func(c *Config) { c.EmbeddingLength = 0 }, "embedding length 0"},
		{"negative blocks", func(c *Config) { c.BlockCount = -1 }, "block count -1"},
		{"zero heads", func(c *Config) { c.HeadCount = 0 }, "head count 0"},
		{"zero kv heads", func(c *Config) { c.HeadCountKV = 0 }, "kv head count 0"},
		{"zero ffn", func(c *Config) { c.FeedForwardLength = 0 }, "feed-forward length 0"},
		{"zero context", func(c *Config) { c.ContextLength = 0 }, "context length 0"},
		{"huge dimension", func(c *Config) { c.FeedForwardLength = 1 << 21 }, "outside [1, 1048576]"},
		{"heads do not divide embd", func(c *Config) { c.HeadCount = 5 }, "does not divide embedding"},
		{"kv heads do not divide heads", func(c *Config) { c.HeadCountKV = 3 }, "divide head count"},
		{"odd head width", func(c *Config) { c.EmbeddingLength = 60; c.HeadCount = 4 }, "head width 15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Tiny()
			tt.change(&cfg)
			err := cfg.Validate()
			if tt.want == "" {
				assert.NilError(t, err)
				return
			}
			assert.ErrorIs(t, err, ErrInvalidConfig)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestPresets(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		params int64
	}{
		// 2*64*512 embeddings and output; per block 4*64*64 attention,
		// 3*64*172 feed-forward and 2*64 norms; 64 for the output norm.
		{"tiny", Tiny(), 2*64*512 + 64 + 2*(4*64*64+3*64*172+2*64)},
		{"bench", Bench(), 2*768*16384 + 768 + 12*(4*768*768+3*768*2048+2*768)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.NilError(t, tt.cfg.Validate())
			assert.Equal(t, tt.cfg.ParamCount(), tt.params)
		})
	}
}
