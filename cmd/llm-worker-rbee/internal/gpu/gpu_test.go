package gpu

import (
	"os"
	"testing"

	"gotest.tools/v3/assert"
)

// On a machine without an NVIDIA driver (CI, laptops) detection must report
// no GPUs rather than fail; on a GPU node it lists them.
func TestDevicesWithOrWithoutNVML(t *testing.T) {
	devices, err := Devices()
	assert.NilError(t, err)
	if ensureInit() != nil {
		assert.Equal(t, len(devices), 0)
		assert.Equal(t, len(ProcessMemory(os.Getpid(), []int{0})), 0)
		return
	}
	for _, d := range devices {
		assert.Assert(t, d.Name != "" && d.TotalBytes > 0, "%+v", d)
	}
}
