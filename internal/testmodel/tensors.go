package testmodel

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
)

// weightScale is the standard deviation of the random matrix weights.
const weightScale = 0.02

// chunkElems is how many values are generated and written at a time.
const chunkElems = 1 << 16

// tensor describes one tensor of the model and where its data goes.
type tensor struct {
	name   string
	dims   []uint64 // ggml order: dims[0] is the innermost
	typ    ggmlType
	ones   bool   // every value is 1.0 (norm weights); else random
	offset uint64 // from the start of the data section
}

func (t tensor) elements() uint64 {
	n := uint64(1)
	for _, d := range t.dims {
		n *= d
	}
	return n
}

func (t tensor) bytes() uint64 { return t.elements() * t.typ.size() }

// tensorPlan lists the tensors of a llama model for cfg with aligned data
// offsets.
func tensorPlan(cfg Config) []tensor {
	embd, vocab := uint64(cfg.EmbeddingLength), uint64(cfg.VocabSize)
	kv, ffn := uint64(cfg.kvDim()), uint64(cfg.FeedForwardLength)
	mat := typeF32
	if cfg.F16 {
		mat = typeF16
	}
	matrix := func(name string, dims ...uint64) tensor {
		return tensor{name: name, dims: dims, typ: mat}
	}
	norm := func(name string) tensor {
		return tensor{name: name, dims: []uint64{embd}, typ: typeF32, ones: true}
	}

	ts := []tensor{
		matrix("token_embd.weight", embd, vocab),
		norm("output_norm.weight"),
		matrix("output.weight", embd, vocab),
	}
	for i := range cfg.BlockCount {
		blk := func(s string) string { return fmt.Sprintf("blk.%d.%s.weight", i, s) }
		ts = append(ts,
			norm(blk("attn_norm")),
			matrix(blk("attn_q"), embd, embd),
			matrix(blk("attn_k"), embd, kv),
			matrix(blk("attn_v"), embd, kv),
			matrix(blk("attn_output"), embd, embd),
			norm(blk("ffn_norm")),
			matrix(blk("ffn_gate"), embd, ffn),
			matrix(blk("ffn_down"), ffn, embd),
			matrix(blk("ffn_up"), embd, ffn),
		)
	}

	var off uint64
	for i := range ts {
		ts[i].offset = off
		off += ts[i].bytes()
		off += padding(off)
	}
	return ts
}

// tensorWriter writes tensor data, reusing its buffers between tensors.
type tensorWriter struct {
	w    io.Writer
	seed uint64
	vals []float32
	buf  []byte
}

func newTensorWriter(w io.Writer, seed int64) *tensorWriter {
	return &tensorWriter{
		w:    w,
		seed: uint64(seed),
		vals: make([]float32, chunkElems),
		buf:  make([]byte, 4*chunkElems),
	}
}

// write generates and writes the data of tensor number idx in chunks. Each
// tensor has its own random stream, so its values depend only on the seed
// and its position in the plan.
func (tw *tensorWriter) write(idx int, t tensor) error {
	rng := rand.New(rand.NewPCG(tw.seed, uint64(idx)))
	for left := t.elements(); left > 0; {
		n := min(left, chunkElems)
		vals := tw.vals[:n]
		fill(vals, t.ones, rng)
		if _, err := tw.w.Write(encode(tw.buf, vals, t.typ)); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// fill sets vals to ones, or to normal noise scaled by weightScale.
func fill(vals []float32, ones bool, rng *rand.Rand) {
	if ones {
		for i := range vals {
			vals[i] = 1
		}
		return
	}
	for i := range vals {
		vals[i] = float32(rng.NormFloat64() * weightScale)
	}
}

// encode writes vals into buf as little-endian values of type typ and
// returns the bytes used; buf must hold 4 bytes per value.
func encode(buf []byte, vals []float32, typ ggmlType) []byte {
	if typ == typeF16 {
		for i, v := range vals {
			binary.LittleEndian.PutUint16(buf[2*i:], float16(v))
		}
		return buf[:2*len(vals)]
	}
	for i, v := range vals {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return buf[:4*len(vals)]
}
