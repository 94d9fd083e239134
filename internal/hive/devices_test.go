package hive

import (
	"errors"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/rbee-dev/rbee/internal/api"
)

// fakeNVML answers as NVML would for the GPUs it holds.
type fakeNVML struct {
	driver    string
	driverErr error
	countErr  error
	gpus      []nvmlGPU
	openErr   map[int]error
}

func (f fakeNVML) driverVersion() (string, error) { return f.driver, f.driverErr }
func (f fakeNVML) deviceCount() (int, error)      { return len(f.gpus), f.countErr }
func (f fakeNVML) device(i int) (nvmlGPU, error) {
	if err := f.openErr[i]; err != nil {
		return nvmlGPU{}, err
	}
	return f.gpus[i], nil
}

func TestReadNVML(t *testing.T) {
	const gib = 1 << 30
	h200 := nvmlGPU{name: "NVIDIA H200", memTotal: 141 * gib, memFree: 140 * gib,
		ccMajor: 9, ccMinor: 0, ccKnown: true}
	tests := []struct {
		name    string
		nvml    fakeNVML
		want    []api.GPUDevice
		wantErr string
	}{
		{name: "no GPUs", nvml: fakeNVML{driver: "570.86.15"}, want: []api.GPUDevice{}},
		{name: "two GPUs",
			nvml: fakeNVML{driver: "570.86.15", gpus: []nvmlGPU{h200,
				{name: "RTX 4090", memTotal: 24 * gib, memFree: gib, ccMajor: 8, ccMinor: 9,
					ccKnown: true}}},
			want: []api.GPUDevice{
				{Index: 0, Device: "cuda:0", Name: "NVIDIA H200", MemoryTotal: 141 * gib,
					MemoryFree: 140 * gib, ComputeCapability: "9.0", Driver: "570.86.15"},
				{Index: 1, Device: "cuda:1", Name: "RTX 4090", MemoryTotal: 24 * gib,
					MemoryFree: gib, ComputeCapability: "8.9", Driver: "570.86.15"},
			}},
		{name: "unknown driver and compute capability kept blank",
			nvml: fakeNVML{driverErr: errors.New("not supported"),
				gpus: []nvmlGPU{{name: "X", memTotal: 2 * gib, memFree: gib}}},
			want: []api.GPUDevice{{Index: 0, Device: "cuda:0", Name: "X",
				MemoryTotal: 2 * gib, MemoryFree: gib}}},
		{name: "count fails", nvml: fakeNVML{countErr: errors.New("GPU is lost")},
			wantErr: "nvml: count GPUs: GPU is lost"},
		{name: "a GPU that cannot be opened fails the list",
			nvml: fakeNVML{gpus: []nvmlGPU{h200, h200},
				openErr: map[int]error{1: errors.New("GPU is lost")}},
			wantErr: "nvml: open GPU 1: GPU is lost"},
		{name: "unreadable memory fails the list",
			nvml:    fakeNVML{gpus: []nvmlGPU{{name: "X", memErr: errors.New("not supported")}}},
			wantErr: "nvml: read the memory of GPU 0: not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readNVML(tc.nvml)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			assert.NilError(t, err)
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

// TestDevicesNVMLOrFallback runs the real detection: without an NVIDIA
// driver NVML is not found and, with no nvidia-smi on PATH, the source is
// "none"; on a GPU node NVML reports the GPUs.
func TestDevicesNVMLOrFallback(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	d := detectDevices(t.Context(), meminfoPath)
	switch d.GPUSource {
	case gpuSourceNVML:
		for _, g := range d.GPUs {
			assert.Assert(t, g.MemoryTotal > 0 && g.Name != "" && g.Driver != "", "%+v", g)
		}
	case gpuSourceNone:
		assert.Equal(t, len(d.GPUs), 0)
	default:
		t.Fatalf("source %q with nvidia-smi off PATH", d.GPUSource)
	}
	t.Logf("GPUs from %s: %+v (error %q)", d.GPUSource, d.GPUs, d.GPUError)
}
