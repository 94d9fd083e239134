package hive

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/rbee-dev/rbee/internal/api"
)

// errNoNVML: NVML cannot be loaded here (no NVIDIA driver, or a hive built
// without cgo); the hive asks nvidia-smi instead.
var errNoNVML = errors.New("NVML is not available")

// nvmlReader is the part of NVML the hive reads, behind an interface so
// that turning its answers into api.GPUDevice is tested without a GPU.
// The real one (devices_nvml_cgo.go) calls go-nvml.
type nvmlReader interface {
	driverVersion() (string, error)
	deviceCount() (int, error)
	device(index int) (nvmlGPU, error)
}

// nvmlGPU is what NVML says of one GPU. A field NVML could not read is
// left zero; memory is the one the fit check cannot do without.
type nvmlGPU struct {
	name             string
	memTotal         uint64
	memFree          uint64
	memErr           error
	ccMajor, ccMinor int
	ccKnown          bool
}

// readNVML lists the GPUs r reports. A GPU NVML cannot open or whose
// memory it cannot read fails the whole list, so that the hive falls back
// to nvidia-smi rather than report a GPU with no free memory.
func readNVML(r nvmlReader) ([]api.GPUDevice, error) {
	driver, err := r.driverVersion()
	if err != nil {
		driver = "" // the GPUs are still worth listing
	}
	n, err := r.deviceCount()
	if err != nil {
		return nil, fmt.Errorf("nvml: count GPUs: %w", err)
	}
	gpus := make([]api.GPUDevice, 0, n)
	for i := range n {
		g, err := r.device(i)
		if err != nil {
			return nil, fmt.Errorf("nvml: open GPU %d: %w", i, err)
		}
		if g.memErr != nil {
			return nil, fmt.Errorf("nvml: read the memory of GPU %d: %w", i, g.memErr)
		}
		dev := api.GPUDevice{
			Index: i, Device: "cuda:" + strconv.Itoa(i), Name: g.name,
			MemoryTotal: g.memTotal, MemoryFree: g.memFree, Driver: driver,
		}
		if g.ccKnown {
			dev.ComputeCapability = fmt.Sprintf("%d.%d", g.ccMajor, g.ccMinor)
		}
		gpus = append(gpus, dev)
	}
	return gpus, nil
}
