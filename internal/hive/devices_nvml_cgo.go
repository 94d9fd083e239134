//go:build cgo && linux

package hive

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/rbee-dev/rbee/internal/api"
)

// nvmlGPUs lists the GPUs through NVML. go-nvml loads libnvidia-ml.so.1
// with dlopen when Init is called, so this builds, and runs, on a machine
// without NVIDIA's libraries: Init then fails and the hive falls back.
func nvmlGPUs() ([]api.GPUDevice, error) {
	switch ret := nvml.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return nil, errNoNVML
	default:
		return nil, fmt.Errorf("nvml: initialise: %w", ret)
	}
	defer nvml.Shutdown() // each hive command is a short process
	return readNVML(goNVML{})
}

// goNVML is the nvmlReader that calls go-nvml.
type goNVML struct{}

func (goNVML) driverVersion() (string, error) {
	v, ret := nvml.SystemGetDriverVersion()
	return v, nvmlError(ret)
}

func (goNVML) deviceCount() (int, error) {
	n, ret := nvml.DeviceGetCount()
	return n, nvmlError(ret)
}

func (goNVML) device(index int) (nvmlGPU, error) {
	h, ret := nvml.DeviceGetHandleByIndex(index)
	if err := nvmlError(ret); err != nil {
		return nvmlGPU{}, err
	}
	var g nvmlGPU
	if name, ret := h.GetName(); ret == nvml.SUCCESS {
		g.name = name
	}
	mem, ret := h.GetMemoryInfo()
	g.memTotal, g.memFree, g.memErr = mem.Total, mem.Free, nvmlError(ret)
	if major, minor, ret := h.GetCudaComputeCapability(); ret == nvml.SUCCESS {
		g.ccMajor, g.ccMinor, g.ccKnown = major, minor, true
	}
	return g, nil
}

// nvmlError is nil for SUCCESS, else the Return (an error naming itself).
func nvmlError(ret nvml.Return) error {
	if ret == nvml.SUCCESS {
		return nil
	}
	return ret
}
