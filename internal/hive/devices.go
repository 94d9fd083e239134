package hive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// nvidiaSMIQuery is what `rbee-hive devices` asks nvidia-smi for, in order.
var nvidiaSMIQuery = []string{
	"--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version",
	"--format=csv,noheader,nounits",
}

// smiTimeout bounds one run of nvidia-smi (it can hang on a wedged GPU).
const smiTimeout = 10 * time.Second

// Where the GPUs of `rbee-hive devices` came from (api.Devices.GPUSource).
const (
	gpuSourceNVML = "nvml"
	gpuSourceSMI  = "nvidia-smi"
	gpuSourceNone = "none"
)

// envNoNVML, set to 1, makes the hive skip NVML and ask nvidia-smi: an
// escape hatch for a driver whose NVML misbehaves, and for tests.
const envNoNVML = "RBEE_HIVE_NO_NVML"

// newDevicesCmd reports the node's devices.
func newDevicesCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "devices",
		Short: "Report CPU cores, RAM and GPUs (through NVML, else nvidia-smi)",
		Args:  exactArgs(0),
		RunE: runE(func(ctx context.Context, _ []string) error {
			return a.printResult(detectDevices(ctx, "/proc/meminfo"))
		}),
	}
}

// detectDevices reads the CPU and RAM from meminfo and the GPUs from NVML
// (go-nvml, in a cgo build), falling back to nvidia-smi when NVML cannot
// be loaded or read, then to none.
func detectDevices(ctx context.Context, meminfo string) api.Devices {
	d := api.Devices{
		CPU:       api.CPUDevice{Cores: runtime.NumCPU(), Architecture: runtime.GOARCH, OS: runtime.GOOS},
		GPUs:      []api.GPUDevice{},
		GPUSource: gpuSourceNone,
	}
	if total, avail, err := readMeminfo(meminfo); err == nil {
		d.CPU.RAMTotal, d.CPU.RAMAvailable = total, avail
	}

	nvmlErr := errNoNVML
	if os.Getenv(envNoNVML) != "1" {
		var gpus []api.GPUDevice
		if gpus, nvmlErr = nvmlGPUs(); nvmlErr == nil {
			d.GPUs, d.GPUSource = gpus, gpuSourceNVML
			return d
		}
	}
	smiGPUs(ctx, &d)
	if d.GPUSource == gpuSourceNone && !errors.Is(nvmlErr, errNoNVML) {
		// NVML is installed but failed, and nvidia-smi did not help.
		d.GPUError = joinText(d.GPUError, nvmlErr.Error())
	}
	return d
}

// smiGPUs fills d's GPUs from nvidia-smi, when it is installed.
func smiGPUs(ctx context.Context, d *api.Devices) {
	smi, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return // no NVIDIA driver: a CPU node
	}
	ctx, cancel := context.WithTimeout(ctx, smiTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, smi, nvidiaSMIQuery...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		d.GPUError = "nvidia-smi: " + err.Error()
		return
	}
	gpus, err := parseNvidiaSMI(string(out))
	if err != nil {
		d.GPUError = err.Error()
	}
	d.GPUs, d.GPUSource = gpus, gpuSourceSMI
}

func joinText(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// readMeminfo returns MemTotal and MemAvailable in bytes.
func readMeminfo(path string) (total, avail uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			total = kb * 1024
		case "MemAvailable:":
			avail = kb * 1024
		}
	}
	return total, avail, sc.Err()
}

// parseNvidiaSMI reads nvidia-smi's csv,noheader,nounits lines (memory in
// MiB). Lines it cannot read are skipped, and the first such line named in
// the error.
func parseNvidiaSMI(out string) ([]api.GPUDevice, error) {
	gpus := []api.GPUDevice{}
	var bad error
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if len(f) != 6 {
			bad = cmpErr(bad, fmt.Errorf("nvidia-smi: cannot read %q", line))
			continue
		}
		idx, err1 := strconv.Atoi(f[0])
		total, err2 := strconv.ParseUint(f[2], 10, 64)
		free, err3 := strconv.ParseUint(f[3], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			bad = cmpErr(bad, fmt.Errorf("nvidia-smi: cannot read %q", line))
			continue
		}
		gpus = append(gpus, api.GPUDevice{
			Index: idx, Device: "cuda:" + f[0], Name: f[1],
			MemoryTotal: total << 20, MemoryFree: free << 20,
			ComputeCapability: f[4], Driver: f[5],
		})
	}
	return gpus, bad
}

func cmpErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}
