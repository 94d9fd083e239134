// Package gpu reads NVIDIA GPUs through NVML (github.com/NVIDIA/go-nvml):
// which devices a node has, their memory, and how much of it one process
// uses. NVML is loaded at run time, so the worker builds and runs on a
// machine without NVIDIA's libraries: detection then reports no GPUs.
package gpu

import (
	"errors"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Device is one NVIDIA GPU.
type Device struct {
	Index             int    `json:"index"`
	Name              string `json:"name"`
	TotalBytes        uint64 `json:"total_bytes"`
	FreeBytes         uint64 `json:"free_bytes"`
	ComputeCapability string `json:"compute_capability"`
}

// ErrNoNVML means the NVML library is not installed (no NVIDIA driver).
var ErrNoNVML = errors.New("NVML not found: no NVIDIA driver on this machine")

var (
	initOnce sync.Once
	initErr  error
)

// ensureInit loads NVML once per process; later calls return the first
// outcome. The library stays loaded for the life of the process.
func ensureInit() error {
	initOnce.Do(func() {
		switch ret := nvml.Init(); ret {
		case nvml.SUCCESS:
		case nvml.ERROR_LIBRARY_NOT_FOUND:
			initErr = ErrNoNVML
		default:
			initErr = fmt.Errorf("initialise NVML: %s", nvml.ErrorString(ret))
		}
	})
	return initErr
}

// Devices lists the node's GPUs. A machine without NVIDIA's libraries has
// none, which is not an error.
func Devices() ([]Device, error) {
	if err := ensureInit(); errors.Is(err, ErrNoNVML) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("count GPUs: %s", nvml.ErrorString(ret))
	}
	devices := make([]Device, 0, count)
	for i := range count {
		d, err := device(i)
		if err != nil {
			return nil, err
		}
		devices = append(devices, d)
	}
	return devices, nil
}

func device(i int) (Device, error) {
	h, ret := nvml.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("open GPU %d: %s", i, nvml.ErrorString(ret))
	}
	d := Device{Index: i}
	if name, ret := h.GetName(); ret == nvml.SUCCESS {
		d.Name = name
	}
	if mem, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.TotalBytes, d.FreeBytes = mem.Total, mem.Free
	}
	if major, minor, ret := h.GetCudaComputeCapability(); ret == nvml.SUCCESS {
		d.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	}
	return d, nil
}

// ProcessMemory is the GPU memory process pid holds on each listed device,
// by device index. Devices NVML cannot read are left out.
func ProcessMemory(pid int, indices []int) map[int]uint64 {
	if ensureInit() != nil {
		return nil
	}
	used := make(map[int]uint64, len(indices))
	for _, i := range indices {
		h, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		procs, ret := h.GetComputeRunningProcesses()
		if ret != nvml.SUCCESS {
			continue
		}
		for _, p := range procs {
			if int(p.Pid) == pid {
				used[i] += p.UsedGpuMemory
			}
		}
	}
	return used
}
