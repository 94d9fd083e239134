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

// newDevicesCmd reports the node's devices.
//
// Shortcoming: GPUs come from nvidia-smi, not go-nvml. go-nvml loads
// libnvidia-ml through cgo (dlopen), and rbee-hive builds with
// CGO_ENABLED=0; the worker, which has cgo, reads VRAM through NVML.
func newDevicesCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "devices",
		Short: "Report CPU cores, RAM and GPUs (through nvidia-smi when it is installed)",
		Args:  exactArgs(0),
		RunE: runE(func(ctx context.Context, _ []string) error {
			return a.printResult(detectDevices(ctx, "/proc/meminfo"))
		}),
	}
}

func detectDevices(ctx context.Context, meminfo string) api.Devices {
	d := api.Devices{
		CPU:  api.CPUDevice{Cores: runtime.NumCPU(), Architecture: runtime.GOARCH, OS: runtime.GOOS},
		GPUs: []api.GPUDevice{},
	}
	if total, avail, err := readMeminfo(meminfo); err == nil {
		d.CPU.RAMTotal, d.CPU.RAMAvailable = total, avail
	}

	smi, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return d // no NVIDIA driver: a CPU node
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
		return d
	}
	gpus, err := parseNvidiaSMI(string(out))
	if err != nil {
		d.GPUError = err.Error()
	}
	d.GPUs = gpus
	return d
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
