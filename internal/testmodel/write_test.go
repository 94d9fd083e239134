package testmodel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"
)

func TestWriteHeader(t *testing.T) {
	f16 := Tiny()
	f16.F16 = true
	gqa := Tiny()
	gqa.HeadCountKV = 2
	gqa.VocabSize = 3000 // past the word list, into synthetic pieces
	tests := []struct {
		name string
		cfg  Config
	}{
		{"tiny", Tiny()},
		{"tiny f16", f16},
		{"grouped query attention", gqa},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			assert.NilError(t, Write(&buf, tt.cfg))
			f, err := readGGUF(bytes.NewReader(buf.Bytes()))
			assert.NilError(t, err)

			assert.Equal(t, f.version, uint32(3))
			checkMetadata(t, f, tt.cfg)
			checkVocab(t, f, tt.cfg.VocabSize)
			end := checkTensors(t, f, tt.cfg)
			assert.Equal(t, int64(buf.Len()), end, "file size")
		})
	}
}

// checkMetadata compares the scalar metadata with what llama.cpp needs.
func checkMetadata(t *testing.T, f *ggufFile, cfg Config) {
	t.Helper()
	fileType := uint32(0)
	if cfg.F16 {
		fileType = 1
	}
	want := map[string]any{
		"general.architecture":                   "llama",
		"general.name":                           cfg.Name,
		"general.file_type":                      fileType,
		"general.alignment":                      uint32(32),
		"llama.context_length":                   uint32(cfg.ContextLength),
		"llama.embedding_length":                 uint32(cfg.EmbeddingLength),
		"llama.block_count":                      uint32(cfg.BlockCount),
		"llama.feed_forward_length":              uint32(cfg.FeedForwardLength),
		"llama.rope.dimension_count":             uint32(cfg.EmbeddingLength / cfg.HeadCount),
		"llama.attention.head_count":             uint32(cfg.HeadCount),
		"llama.attention.head_count_kv":          uint32(cfg.HeadCountKV),
		"llama.attention.layer_norm_rms_epsilon": float32(1e-5),
		"tokenizer.ggml.model":                   "llama",
		"tokenizer.ggml.bos_token_id":            uint32(1),
		"tokenizer.ggml.eos_token_id":            uint32(2),
		"tokenizer.ggml.unknown_token_id":        uint32(0),
	}
	for k, v := range want {
		assert.Equal(t, f.kvs[k], v, "key %s", k)
	}
	assert.Equal(t, len(f.kvs), len(want)+3, "keys: %v", f.kvOrder)
	assert.Equal(t, len(f.kvOrder), len(f.kvs), "duplicate keys: %v", f.kvOrder)
}

// checkVocab checks the tokens, scores and types arrays.
func checkVocab(t *testing.T, f *ggufFile, size int) {
	t.Helper()
	tokens := f.kvs["tokenizer.ggml.tokens"].([]any)
	scores := f.kvs["tokenizer.ggml.scores"].([]any)
	types := f.kvs["tokenizer.ggml.token_type"].([]any)
	assert.Equal(t, len(tokens), size)
	assert.Equal(t, len(scores), size)
	assert.Equal(t, len(types), size)

	assert.DeepEqual(t, tokens[:4], []any{"<unk>", "<s>", "</s>", "<0x00>"})
	assert.DeepEqual(t, types[:4], []any{int32(2), int32(3), int32(3), int32(6)})
	assert.Equal(t, tokens[258], "<0xFF>")
	assert.Equal(t, tokens[259], "\u2581")
	seen := map[any]bool{}
	for i, tok := range tokens {
		assert.Assert(t, !seen[tok], "token %d %q repeats", i, tok)
		seen[tok] = true
		_, isFloat := scores[i].(float32)
		assert.Assert(t, isFloat, "score %d", i)
		if i >= 259 {
			assert.Equal(t, types[i], int32(1), "type of token %d", i)
		}
	}
}

// checkTensors checks names, shapes, types and offsets against the llama
// layout, and returns where the last tensor's data ends.
func checkTensors(t *testing.T, f *ggufFile, cfg Config) int64 {
	t.Helper()
	want := llamaShapes(cfg)
	assert.Equal(t, len(f.tensors), len(want))

	var end uint64
	for _, ti := range f.tensors {
		shape, ok := want[ti.name]
		assert.Assert(t, ok, "unexpected tensor %s", ti.name)
		assert.DeepEqual(t, ti.dims, shape)
		assert.Equal(t, ti.offset%32, uint64(0), "%s offset %d", ti.name, ti.offset)
		assert.Assert(t, ti.offset >= end, "%s overlaps the tensor before", ti.name)

		elemSize := uint64(4)
		if len(shape) == 2 && cfg.F16 {
			assert.Equal(t, ti.typ, uint32(1), "%s type", ti.name)
			elemSize = 2
		} else {
			assert.Equal(t, ti.typ, uint32(0), "%s type", ti.name)
		}
		end = ti.offset + elemSize*shape[0]*product(shape[1:])
	}
	return f.dataOffset + int64(end)
}

// llamaShapes lists the tensors a llama model for cfg has, in ggml order.
func llamaShapes(cfg Config) map[string][]uint64 {
	e, v := uint64(cfg.EmbeddingLength), uint64(cfg.VocabSize)
	kv := e / uint64(cfg.HeadCount) * uint64(cfg.HeadCountKV)
	ffn := uint64(cfg.FeedForwardLength)
	m := map[string][]uint64{
		"token_embd.weight":  {e, v},
		"output_norm.weight": {e},
		"output.weight":      {e, v},
	}
	for i := range cfg.BlockCount {
		p := fmt.Sprintf("blk.%d.", i)
		m[p+"attn_norm.weight"] = []uint64{e}
		m[p+"attn_q.weight"] = []uint64{e, e}
		m[p+"attn_k.weight"] = []uint64{e, kv}
		m[p+"attn_v.weight"] = []uint64{e, kv}
		m[p+"attn_output.weight"] = []uint64{e, e}
		m[p+"ffn_norm.weight"] = []uint64{e}
		m[p+"ffn_gate.weight"] = []uint64{e, ffn}
		m[p+"ffn_down.weight"] = []uint64{ffn, e}
		m[p+"ffn_up.weight"] = []uint64{e, ffn}
	}
	return m
}

func product(dims []uint64) uint64 {
	n := uint64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

// TestWriteValues reads tensors back: norms are ones, matrices look like
// normal noise with a standard deviation of 0.02.
func TestWriteValues(t *testing.T) {
	for _, f16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("f16=%v", f16), func(t *testing.T) {
			cfg := Tiny()
			cfg.F16 = f16
			var buf bytes.Buffer
			assert.NilError(t, Write(&buf, cfg))
			f, err := readGGUF(bytes.NewReader(buf.Bytes()))
			assert.NilError(t, err)

			norm := tensorValues(t, f, buf.Bytes(), "blk.1.ffn_norm.weight")
			for i, v := range norm {
				assert.Equal(t, v, float32(1), "value %d", i)
			}
			mean, std := stats(tensorValues(t, f, buf.Bytes(), "blk.0.ffn_down.weight"))
			assert.Assert(t, math.Abs(mean) < 0.001, "mean %v", mean)
			assert.Assert(t, math.Abs(std-0.02) < 0.001, "std %v", std)
		})
	}
}

// tensorValues decodes the named tensor from a whole file.
func tensorValues(t *testing.T, f *ggufFile, file []byte, name string) []float32 {
	t.Helper()
	for _, ti := range f.tensors {
		if ti.name != name {
			continue
		}
		n := product(ti.dims)
		data := file[uint64(f.dataOffset)+ti.offset:]
		out := make([]float32, n)
		for i := range out {
			if ti.typ == 1 {
				out[i] = halfToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
			} else {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
			}
		}
		return out
	}
	t.Fatalf("no tensor %s", name)
	return nil
}

func stats(vals []float32) (mean, std float64) {
	var sum, sq float64
	for _, v := range vals {
		sum += float64(v)
		sq += float64(v) * float64(v)
	}
	n := float64(len(vals))
	mean = sum / n
	return mean, math.Sqrt(sq/n - mean*mean)
}

func TestWriteDeterministic(t *testing.T) {
	write := func(seed int64) []byte {
		t.Helper()
		cfg := Tiny()
		cfg.F16 = true
		cfg.Seed = seed
		var buf bytes.Buffer
		assert.NilError(t, Write(&buf, cfg))
		return buf.Bytes()
	}
	a, b, c := write(7), write(7), write(8)
	assert.Assert(t, bytes.Equal(a, b), "same seed, different bytes")
	assert.Assert(t, !bytes.Equal(a, c), "different seeds, same bytes")
	assert.Equal(t, len(a), len(c))
}

func TestWriteInvalid(t *testing.T) {
	cfg := Tiny()
	cfg.HeadCount = 3
	var buf bytes.Buffer
	assert.ErrorIs(t, Write(&buf, cfg), ErrInvalidConfig)
	assert.Equal(t, buf.Len(), 0)
}

// failAfter accepts n bytes, then fails every write.
type failAfter struct{ n int }

var errDiskFull = errors.New("disk full")

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errDiskFull
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWriteFailingWriter(t *testing.T) {
	tests := []struct {
		name string
		n    int
	}{
		{"at once", 0},
		{"in header", 10},
		{"in data", 3 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Tiny()
			cfg.VocabSize = 32000 // more than one buffer of output
			err := Write(&failAfter{n: tt.n}, cfg)
			assert.ErrorIs(t, err, errDiskFull)
		})
	}
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models", "tiny.gguf")
	assert.NilError(t, WriteFile(path, Tiny()))

	data, err := os.ReadFile(path)
	assert.NilError(t, err)
	var buf bytes.Buffer
	assert.NilError(t, Write(&buf, Tiny()))
	assert.Assert(t, bytes.Equal(data, buf.Bytes()))

	_, err = os.Stat(path + ".tmp")
	assert.Assert(t, errors.Is(err, os.ErrNotExist), "temp file left: %v", err)
}

func TestWriteFileInvalidLeavesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "models")
	cfg := Tiny()
	cfg.Name = ""
	assert.ErrorIs(t, WriteFile(filepath.Join(dir, "bad.gguf"), cfg), ErrInvalidConfig)
	_, err := os.Stat(dir)
	assert.Assert(t, errors.Is(err, os.ErrNotExist), "dir created: %v", err)
}

// TestWriteBench writes the benchmark model to memory it does not keep,
// checks its header and size, and logs how long it took.
func TestWriteBench(t *testing.T) {
	if testing.Short() {
		t.Skip("writes about 220 MB; -short leaves it out")
	}
	cfg := Bench()
	hw := headWriter{keep: 4 << 20}
	start := time.Now()
	assert.NilError(t, Write(&hw, cfg))
	t.Logf("wrote %d bytes in %v", hw.n, time.Since(start))

	f, err := readGGUF(bytes.NewReader(hw.head))
	assert.NilError(t, err)
	checkMetadata(t, f, cfg)
	checkVocab(t, f, cfg.VocabSize)
	assert.Equal(t, hw.n, checkTensors(t, f, cfg), "file size")
}

// headWriter keeps the first keep bytes written to it and counts the rest.
type headWriter struct {
	keep int
	head []byte
	n    int64
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.keep - len(w.head); room > 0 {
		w.head = append(w.head, p[:min(room, len(p))]...)
	}
	w.n += int64(len(p))
	return len(p), nil
}
