package hive

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee/internal/api"
)

// meminfoPath is where the hive reads the node's available RAM.
const meminfoPath = "/proc/meminfo"

// noFitErrorf is the error for a spawn that does not fit its device.
func noFitErrorf(format string, args ...any) error {
	return &exitError{code: api.HiveExitNoFit, err: fmt.Errorf(format, args...)}
}

// checkSpawnFit refuses a spawn whose model, at its context and slot
// count, needs more memory than the chosen device has free. What the hive
// cannot measure (a header the parser cannot read, no nvidia-smi) is left
// to the worker, with a warning.
func checkSpawnFit(ctx context.Context, opts *spawnOptions, modelPath, name string) error {
	gf, err := parseGGUF(modelPath)
	if err != nil {
		opts.app.log.Warn("cannot estimate the model's memory; not checking the fit",
			"model", name, "error", err)
		return nil
	}
	perSlot := contextFor(gf.Architecture().MaximumContextLength, opts.ctxSize)
	if int64(perSlot)*int64(opts.slots) > math.MaxInt32 {
		return usageErrorf("--ctx-size %d × --slots %d is more than %d tokens in all",
			perSlot, opts.slots, math.MaxInt32)
	}
	need := estimateMemory(gf, perSlot, opts.slots, opts.gpuLayers)
	devs := detectDevices(ctx, meminfoPath)
	checked, err := checkFit(name, need, opts.device, devs)
	if !checked {
		opts.app.log.Warn("cannot measure the device's free memory; not checking the fit",
			"model", name, "device", opts.device, "gpu_error", devs.GPUError)
	}
	return err
}

// checkFit compares what a worker needs with what device has free. checked
// is false when the free memory is unknown (no /proc/meminfo, no
// nvidia-smi); err is a HiveExitNoFit error that says how much is needed
// and free, or names the GPU that is absent.
func checkFit(model string, need api.MemoryEstimate, device string,
	devs api.Devices) (checked bool, err error) {
	what := fmt.Sprintf("model %s (%d tokens × %d slots)", model, need.Context, need.Slots)
	hint := "use fewer --slots, a smaller --ctx-size, or another device or hive"
	ramFree := devs.CPU.RAMAvailable

	if device == "cpu" {
		if ramFree == 0 {
			return false, nil
		}
		if need.CPURAM > ramFree {
			return true, noFitErrorf("%s needs %s of RAM, but only %s is available: %s",
				what, fmtBytes(need.CPURAM), fmtBytes(ramFree), hint)
		}
		return true, nil
	}

	idx, _ := strings.CutPrefix(device, "cuda:")
	if len(devs.GPUs) == 0 && devs.GPUError == "" {
		return false, nil // no nvidia-smi: the worker says whether it finds a GPU
	}
	if devs.GPUError != "" {
		return false, nil
	}
	var free uint64
	for _, i := range strings.Split(idx, ",") {
		n, _ := strconv.Atoi(i)
		g, ok := findGPU(devs.GPUs, n)
		if !ok {
			return true, noFitErrorf("no GPU cuda:%d on this node (it has %s): "+
				"see `rbee hive devices`", n, gpuNames(devs.GPUs))
		}
		free += g.MemoryFree
	}
	if need.GPUVRAM > free {
		return true, noFitErrorf("%s needs %s of GPU memory, but %s has only %s free: %s",
			what, fmtBytes(need.GPUVRAM), device, fmtBytes(free), hint)
	}
	if ramFree > 0 && need.GPURAM > ramFree {
		return true, noFitErrorf("%s needs %s of RAM beside the GPU, but only %s is "+
			"available: %s", what, fmtBytes(need.GPURAM), fmtBytes(ramFree), hint)
	}
	return true, nil
}

func findGPU(gpus []api.GPUDevice, index int) (api.GPUDevice, bool) {
	for _, g := range gpus {
		if g.Index == index {
			return g, true
		}
	}
	return api.GPUDevice{}, false
}

func gpuNames(gpus []api.GPUDevice) string {
	if len(gpus) == 0 {
		return "none"
	}
	names := make([]string, len(gpus))
	for i, g := range gpus {
		names[i] = g.Device
	}
	return strings.Join(names, ", ")
}

// fmtBytes writes n in GiB, or MiB below one GiB.
func fmtBytes(n uint64) string {
	if n < 1<<30 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}
