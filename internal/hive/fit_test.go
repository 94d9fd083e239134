package hive

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	parser "github.com/gpustack/gguf-parser-go"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

func TestCheckFit(t *testing.T) {
	need := api.MemoryEstimate{Context: 4096, Slots: 2, CPURAM: 3 << 30, GPUVRAM: 2 << 30,
		GPURAM: 256 << 20}
	cpuOnly := api.Devices{CPU: api.CPUDevice{RAMAvailable: 4 << 30}}
	gpus := api.Devices{CPU: api.CPUDevice{RAMAvailable: 1 << 30}, GPUs: []api.GPUDevice{
		{Index: 0, Device: "cuda:0", MemoryFree: 1 << 30},
		{Index: 1, Device: "cuda:1", MemoryFree: 1536 << 20},
	}}
	tests := []struct {
		name        string
		device      string
		devs        api.Devices
		wantChecked bool
		wantErr     string
	}{
		{name: "cpu fits", device: "cpu", devs: cpuOnly, wantChecked: true},
		{name: "cpu too small", device: "cpu", devs: api.Devices{CPU: api.CPUDevice{RAMAvailable: 1 << 30}},
			wantChecked: true,
			wantErr:     "model m (4096 tokens × 2 slots) needs 3.00 GiB of RAM, but only 1.00 GiB is available"},
		{name: "cpu unknown", device: "cpu", devs: api.Devices{}},
		{name: "gpu too small", device: "cuda:0", devs: gpus, wantChecked: true,
			wantErr: "needs 2.00 GiB of GPU memory, but cuda:0 has only 1.00 GiB free"},
		{name: "two gpus together fit", device: "cuda:0,1", devs: gpus, wantChecked: true},
		{name: "gpu absent", device: "cuda:3", devs: gpus, wantChecked: true,
			wantErr: "no GPU cuda:3 on this node (it has cuda:0, cuda:1)"},
		{name: "host RAM beside the gpu too small", device: "cuda:0,1", wantChecked: true,
			devs:    api.Devices{CPU: api.CPUDevice{RAMAvailable: 100 << 20}, GPUs: gpus.GPUs},
			wantErr: "needs 256.0 MiB of RAM beside the GPU, but only 100.0 MiB"},
		{name: "no nvidia-smi", device: "cuda:0", devs: cpuOnly},
		{name: "nvidia-smi failed", device: "cuda:0",
			devs: api.Devices{CPU: cpuOnly.CPU, GPUError: "nvidia-smi: exit status 9"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checked, err := checkFit("m", need, tc.device, tc.devs)
			assert.Equal(t, checked, tc.wantChecked)
			if tc.wantErr == "" {
				assert.NilError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
			var ee *exitError
			assert.Assert(t, errors.As(err, &ee))
			assert.Equal(t, ee.code, api.HiveExitNoFit)
		})
	}
}

// TestSpawnRefusesWhatDoesNotFit asks for far more context than any test
// machine has RAM for; the hive refuses before starting a worker.
func TestSpawnRefusesWhatDoesNotFit(t *testing.T) {
	f := newFixture(t, "ready")
	f.model = filepath.Join(t.TempDir(), "tiny.gguf")
	assert.NilError(t, testmodel.WriteFile(f.model, testmodel.Tiny()))
	gf, err := parser.ParseGGUFFile(f.model, parser.SkipLargeMetadata())
	assert.NilError(t, err)
	huge := estimateMemory(gf, 1<<24, 64, -1)
	_, avail, err := readMeminfo(meminfoPath)
	assert.NilError(t, err)
	if huge.CPURAM <= avail {
		t.Skipf("this machine has %s available, more than the %s asked for", fmtBytes(avail),
			fmtBytes(huge.CPURAM))
	}

	run := runHive(t, testToken+"\n", f.spawnArgs("w1", "--ctx-size",
		strconv.Itoa(1<<24), "--slots", "64")...)
	assert.Equal(t, run.code, api.HiveExitNoFit)
	he := decodeOne[api.HiveError](t, run.stdout)
	assert.Check(t, is.Contains(he.Error, "needs "+fmtBytes(huge.CPURAM)+" of RAM"))
	assert.Check(t, is.Contains(he.Error, "is available"))

	_, err = os.Stat(filepath.Join(f.workersDir(), "w1.json"))
	assert.Check(t, os.IsNotExist(err), "no worker was recorded")

	// A context that cannot be counted in 32 bits is a usage error.
	run = runHive(t, testToken+"\n", f.spawnArgs("w2", "--ctx-size",
		strconv.Itoa(1<<30), "--slots", "64")...)
	assert.Equal(t, run.code, api.HiveExitUsage)
}
