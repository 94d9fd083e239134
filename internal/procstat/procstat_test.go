package procstat

import (
	"runtime"
	"testing"

	"gotest.tools/v3/assert"
)

func TestResidentBytesGrowsWithTouchedMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc, which only Linux has")
	}
	before := ResidentBytes()
	assert.Assert(t, before > 0)
	block := make([]byte, 64<<20)
	for i := range block {
		block[i] = 1
	}
	after := ResidentBytes()
	assert.Assert(t, after-before > 32<<20, "before %d after %d", before, after)
	runtime.KeepAlive(block)
}
