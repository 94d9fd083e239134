package testmodel

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// ggufFile is what readGGUF parses from a GGUF header. It is written
// independently of the encoder so that a test compares two readings of the
// format, not one reading with itself.
type ggufFile struct {
	version    uint32
	kvOrder    []string
	kvs        map[string]any
	tensors    []ggufTensor
	dataOffset int64 // where the tensor data starts, from the file start
}

type ggufTensor struct {
	name   string
	dims   []uint64
	typ    uint32
	offset uint64
}

// ggufReader decodes little-endian values and counts the bytes it read.
type ggufReader struct {
	r   *bufio.Reader
	n   int64
	err error
}

func (g *ggufReader) read(p []byte) {
	if g.err != nil {
		return
	}
	k, err := io.ReadFull(g.r, p)
	g.n += int64(k)
	g.err = err
}

// next returns the next n bytes, zeros once an error has happened.
func (g *ggufReader) next(n int) []byte {
	b := make([]byte, n)
	g.read(b)
	return b
}

func (g *ggufReader) u8() uint8   { return g.next(1)[0] }
func (g *ggufReader) u16() uint16 { return binary.LittleEndian.Uint16(g.next(2)) }
func (g *ggufReader) u32() uint32 { return binary.LittleEndian.Uint32(g.next(4)) }
func (g *ggufReader) u64() uint64 { return binary.LittleEndian.Uint64(g.next(8)) }

func (g *ggufReader) str() string {
	n := g.u64()
	if g.err != nil || n > 1<<20 {
		g.fail(fmt.Errorf("string length %d", n))
		return ""
	}
	return string(g.next(int(n)))
}

func (g *ggufReader) fail(err error) {
	if g.err == nil {
		g.err = err
	}
}

// value reads one metadata value of type typ.
func (g *ggufReader) value(typ uint32) any {
	switch typ {
	case 0:
		return g.u8()
	case 1:
		return int8(g.u8())
	case 2:
		return g.u16()
	case 3:
		return int16(g.u16())
	case 4:
		return g.u32()
	case 5:
		return int32(g.u32())
	case 6:
		return math.Float32frombits(g.u32())
	case 7:
		return g.u8() != 0
	case 8:
		return g.str()
	case 9:
		return g.array()
	case 10:
		return g.u64()
	case 11:
		return int64(g.u64())
	case 12:
		return math.Float64frombits(g.u64())
	}
	g.fail(fmt.Errorf("unknown value type %d", typ))
	return nil
}

func (g *ggufReader) array() []any {
	elem, n := g.u32(), g.u64()
	if n > 1<<24 {
		g.fail(fmt.Errorf("array length %d", n))
		return nil
	}
	out := make([]any, 0, n)
	for range n {
		if g.err != nil {
			return nil
		}
		out = append(out, g.value(elem))
	}
	return out
}

// readGGUF parses the header of a GGUF file and skips to its data section.
func readGGUF(r io.Reader) (*ggufFile, error) {
	g := &ggufReader{r: bufio.NewReader(r)}
	if magic := g.next(4); g.err == nil && string(magic) != "GGUF" {
		return nil, errors.New("bad magic")
	}
	f := &ggufFile{version: g.u32(), kvs: map[string]any{}}
	nTensors, nKV := g.u64(), g.u64()
	for i := uint64(0); i < nKV && g.err == nil; i++ {
		k := g.str()
		f.kvOrder = append(f.kvOrder, k)
		f.kvs[k] = g.value(g.u32())
	}
	for i := uint64(0); i < nTensors && g.err == nil; i++ {
		t := ggufTensor{name: g.str()}
		for range g.u32() {
			t.dims = append(t.dims, g.u64())
		}
		t.typ, t.offset = g.u32(), g.u64()
		f.tensors = append(f.tensors, t)
	}

	align := int64(32)
	if a, ok := f.kvs["general.alignment"].(uint32); ok {
		align = int64(a)
	}
	f.dataOffset = (g.n + align - 1) / align * align
	g.next(int(f.dataOffset - g.n))
	return f, g.err
}
