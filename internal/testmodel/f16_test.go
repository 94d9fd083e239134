package testmodel

import (
	"math"
	"testing"

	"gotest.tools/v3/assert"
)

func TestFloat16(t *testing.T) {
	tests := []struct {
		name string
		in   float32
		want uint16
	}{
		{"zero", 0, 0x0000},
		{"negative zero", float32(math.Copysign(0, -1)), 0x8000},
		{"one", 1, 0x3c00},
		{"minus two", -2, 0xc000},
		{"one third", 1.0 / 3, 0x3555},
		{"tenth", 0.1, 0x2e66},
		{"tie rounds down to even", 1 + 0x1p-11, 0x3c00},
		{"tie rounds up to even", 1 + 3*0x1p-11, 0x3c02},
		{"above tie rounds up", 1 + 0x1p-11 + 0x1p-20, 0x3c01},
		{"largest half", 65504, 0x7bff},
		{"rounds down to largest", 65519, 0x7bff},
		{"rounds up to infinity", 65520, 0x7c00},
		{"overflow", 1e10, 0x7c00},
		{"negative overflow", -1e10, 0xfc00},
		{"smallest normal", 0x1p-14, 0x0400},
		{"largest subnormal", 1023 * 0x1p-24, 0x03ff},
		{"subnormal rounds to normal", 1023.5 * 0x1p-24, 0x0400},
		{"smallest subnormal", 0x1p-24, 0x0001},
		{"negative smallest subnormal", -0x1p-24, 0x8001},
		{"subnormal tie to even", 2.5 * 0x1p-24, 0x0002},
		{"half of smallest is zero", 0x1p-25, 0x0000},
		{"above half of smallest", 0x1.8p-25, 0x0001},
		{"underflow", 1e-10, 0x0000},
		{"negative underflow", -1e-10, 0x8000},
		{"float32 subnormal", math.SmallestNonzeroFloat32, 0x0000},
		{"infinity", float32(math.Inf(1)), 0x7c00},
		{"negative infinity", float32(math.Inf(-1)), 0xfc00},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, float16(tt.in), tt.want, "got %#04x", float16(tt.in))
		})
	}
}

func TestFloat16NaN(t *testing.T) {
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xffc00000, 0x7fffffff} {
		h := float16(math.Float32frombits(bits))
		assert.Equal(t, h&0x7c00, uint16(0x7c00), "%#08x: exponent of %#04x", bits, h)
		assert.Assert(t, h&0x03ff != 0, "%#08x became infinity %#04x", bits, h)
		assert.Equal(t, h&0x8000, uint16(bits>>16)&0x8000, "%#08x: sign", bits)
	}
}

// TestFloat16RoundTrip checks every finite half: widened to float32 it must
// convert back to itself.
func TestFloat16RoundTrip(t *testing.T) {
	for h := range 1 << 16 {
		if h&0x7c00 == 0x7c00 && h&0x03ff != 0 {
			continue // NaN
		}
		got := float16(halfToFloat32(uint16(h)))
		assert.Equal(t, got, uint16(h), "half %#04x", h)
	}
}

// halfToFloat32 decodes IEEE half bits by their definition.
func halfToFloat32(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10)&0x1f, float64(h&0x3ff)
	switch exp {
	case 0:
		return float32(sign * mant * 0x1p-24)
	case 0x1f:
		return float32(math.Inf(int(sign)))
	}
	return float32(sign * (1 + mant/1024) * math.Ldexp(1, exp-15))
}
