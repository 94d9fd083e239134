package testmodel

import "math"

// float16 returns the IEEE 754 half-precision bits nearest to f, rounding
// ties to even. Values too large for a half become infinity, values too
// small become zero of the same sign, and NaN stays a (quiet) NaN.
func float16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff

	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}

	// e is the exponent rebiased for a half (bias 15 instead of 127).
	e := exp - 127 + 15
	switch {
	case e >= 0x1f:
		return sign | 0x7c00
	case e <= 0:
		return sign | subnormal16(mant|0x800000, e)
	}
	// A carry out of the mantissa bumps the exponent, up to infinity,
	// which is the right result.
	return sign | uint16(roundShift(uint32(e)<<23|mant, 13))
}

// subnormal16 returns the half subnormal (or zero, or the smallest normal
// after rounding) for a float32 mantissa with its implicit bit set and a
// rebiased exponent e <= 0.
func subnormal16(mant uint32, e int32) uint16 {
	// A half subnormal counts units of 2^-24; the float32 mantissa counts
	// units of 2^(e-15-23) = 2^(e-38), so shift right by 14-e.
	shift := 14 - e
	if shift > 24 {
		return 0 // below half of the smallest subnormal
	}
	return uint16(roundShift(mant, uint32(shift)))
}

// roundShift returns v >> shift, rounded to nearest with ties to even.
func roundShift(v, shift uint32) uint32 {
	q := v >> shift
	rem := v & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || (rem == half && q&1 == 1) {
		q++
	}
	return q
}
