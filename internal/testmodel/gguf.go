package testmodel

import (
	"bytes"
	"encoding/binary"
	"math"
)

// GGUF constants used here; see the GGUF specification in the ggml project.
const (
	ggufMagic   = "GGUF"
	ggufVersion = 3
	alignment   = 32
)

// GGUF metadata value types.
const (
	valueUint32  uint32 = 4
	valueInt32   uint32 = 5
	valueFloat32 uint32 = 6
	valueString  uint32 = 8
	valueArray   uint32 = 9
)

// ggmlType is a tensor element type.
type ggmlType uint32

const (
	typeF32 ggmlType = 0
	typeF16 ggmlType = 1
)

// size returns the bytes one element takes.
func (t ggmlType) size() uint64 {
	if t == typeF16 {
		return 2
	}
	return 4
}

// encoder appends little-endian GGUF values to a buffer.
type encoder struct {
	buf     bytes.Buffer
	kvs     uint64 // metadata pairs written so far
	scratch [8]byte
}

func (e *encoder) u32(v uint32) {
	e.buf.Write(binary.LittleEndian.AppendUint32(e.scratch[:0], v))
}

func (e *encoder) u64(v uint64) {
	e.buf.Write(binary.LittleEndian.AppendUint64(e.scratch[:0], v))
}

func (e *encoder) f32(v float32) { e.u32(math.Float32bits(v)) }

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.buf.WriteString(s)
}

// key starts a metadata pair.
func (e *encoder) key(k string, typ uint32) {
	e.kvs++
	e.str(k)
	e.u32(typ)
}

func (e *encoder) kvString(k, v string) {
	e.key(k, valueString)
	e.str(v)
}

func (e *encoder) kvUint32(k string, v uint32) {
	e.key(k, valueUint32)
	e.u32(v)
}

func (e *encoder) kvFloat32(k string, v float32) {
	e.key(k, valueFloat32)
	e.f32(v)
}

func (e *encoder) kvStrings(k string, vs []string) {
	e.array(k, valueString, len(vs))
	for _, v := range vs {
		e.str(v)
	}
}

func (e *encoder) kvFloat32s(k string, vs []float32) {
	e.array(k, valueFloat32, len(vs))
	for _, v := range vs {
		e.f32(v)
	}
}

func (e *encoder) kvInt32s(k string, vs []int32) {
	e.array(k, valueInt32, len(vs))
	for _, v := range vs {
		e.u32(uint32(v))
	}
}

func (e *encoder) array(k string, elem uint32, n int) {
	e.key(k, valueArray)
	e.u32(elem)
	e.u64(uint64(n))
}

// tensorInfo writes one tensor descriptor.
func (e *encoder) tensorInfo(t tensor) {
	e.str(t.name)
	e.u32(uint32(len(t.dims)))
	for _, d := range t.dims {
		e.u64(d)
	}
	e.u32(uint32(t.typ))
	e.u64(t.offset)
}

// header returns the whole GGUF header for cfg and tensors, padded so that
// the tensor data starts on an aligned offset.
func header(cfg Config, tensors []tensor) []byte {
	var kv encoder
	writeMetadata(&kv, cfg)

	var h encoder
	h.buf.WriteString(ggufMagic)
	h.u32(ggufVersion)
	h.u64(uint64(len(tensors)))
	h.u64(kv.kvs)
	h.buf.Write(kv.buf.Bytes())
	for _, t := range tensors {
		h.tensorInfo(t)
	}
	h.buf.Write(make([]byte, padding(uint64(h.buf.Len()))))
	return h.buf.Bytes()
}

// writeMetadata writes the key-value pairs llama.cpp needs for a llama
// model with a SentencePiece tokenizer.
func writeMetadata(e *encoder, cfg Config) {
	fileType := uint32(0) // all F32
	if cfg.F16 {
		fileType = 1 // mostly F16
	}
	e.kvString("general.architecture", "llama")
	e.kvString("general.name", cfg.Name)
	e.kvUint32("general.file_type", fileType)
	e.kvUint32("general.alignment", alignment)

	e.kvUint32("llama.context_length", uint32(cfg.ContextLength))
	e.kvUint32("llama.embedding_length", uint32(cfg.EmbeddingLength))
	e.kvUint32("llama.block_count", uint32(cfg.BlockCount))
	e.kvUint32("llama.feed_forward_length", uint32(cfg.FeedForwardLength))
	e.kvUint32("llama.rope.dimension_count", uint32(cfg.headDim()))
	e.kvUint32("llama.attention.head_count", uint32(cfg.HeadCount))
	e.kvUint32("llama.attention.head_count_kv", uint32(cfg.HeadCountKV))
	e.kvFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5)

	v := newVocab(cfg.VocabSize)
	e.kvString("tokenizer.ggml.model", "llama")
	e.kvStrings("tokenizer.ggml.tokens", v.tokens)
	e.kvFloat32s("tokenizer.ggml.scores", v.scores)
	e.kvInt32s("tokenizer.ggml.token_type", v.types)
	e.kvUint32("tokenizer.ggml.bos_token_id", bosID)
	e.kvUint32("tokenizer.ggml.eos_token_id", eosID)
	e.kvUint32("tokenizer.ggml.unknown_token_id", unkID)
}

// padding returns the zero bytes needed after n bytes to reach alignment.
func padding(n uint64) uint64 {
	return (alignment - n%alignment) % alignment
}
