package queen

import (
	"errors"
	"net/http"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

func TestPlaceWorker(t *testing.T) {
	const gib = 1 << 30
	tiny := api.Model{Name: "tiny", MemoryEstimate: api.MemoryEstimate{CPURAM: 2 * gib,
		GPUVRAM: 3 * gib}}
	cpuHive := func(name string, ram uint64, models ...api.Model) hiveReport {
		return hiveReport{hive: name, models: models,
			devices: api.Devices{CPU: api.CPUDevice{RAMAvailable: ram}}}
	}
	gpuHive := func(name string, free ...uint64) hiveReport {
		r := cpuHive(name, 64*gib, tiny)
		for i, f := range free {
			dev := "cuda:" + string(rune('0'+i))
			r.devices.GPUs = append(r.devices.GPUs, api.GPUDevice{Index: i, Device: dev,
				MemoryFree: f})
		}
		return r
	}
	unreachable := hiveReport{hive: "down", err: &httpapi.Error{
		Status: http.StatusBadGateway, Message: `could not run rbee-hive on hive "down": dial`}}

	tests := []struct {
		name     string
		device   string
		reports  []hiveReport
		want     placement
		wantErrs []string
	}{
		{name: "fits", device: "cpu", reports: []hiveReport{cpuHive("h1", 8*gib, tiny)},
			want: placement{hive: "h1", device: "cpu"}},
		{name: "prefers the hive with the model", device: "cpu",
			reports: []hiveReport{cpuHive("big", 100*gib), cpuHive("h1", 4*gib, tiny)},
			want:    placement{hive: "h1", device: "cpu"}},
		{name: "most free memory among holders", device: "cpu",
			reports: []hiveReport{cpuHive("a", 4*gib, tiny), cpuHive("b", 16*gib, tiny),
				cpuHive("c", 8*gib, tiny)},
			want: placement{hive: "b", device: "cpu"}},
		{name: "unreachable hive skipped", device: "cpu",
			reports: []hiveReport{unreachable, cpuHive("h1", 4*gib, tiny)},
			want:    placement{hive: "h1", device: "cpu"}},
		{name: "any GPU: the freest one", device: "cuda",
			reports: []hiveReport{gpuHive("g1", 4*gib, 24*gib), gpuHive("g2", 8*gib)},
			want:    placement{hive: "g1", device: "cuda:1"}},
		{name: "a named GPU", device: "cuda:0",
			reports: []hiveReport{gpuHive("g1", 4*gib, 24*gib), gpuHive("g2", 8*gib)},
			want:    placement{hive: "g2", device: "cuda:0"}},
		{name: "refuses with per-hive reasons", device: "cpu",
			reports: []hiveReport{unreachable, cpuHive("small", 1*gib, tiny),
				cpuHive("empty", 64*gib)},
			wantErrs: []string{
				`no hive can run model "tiny" on cpu:`,
				`down: not asked: could not run rbee-hive on hive "down": dial`,
				"small: needs 2.00 GiB of RAM, 1.00 GiB available",
				`empty: no model "tiny" in its catalog`,
			}},
		{name: "GPU too small or absent", device: "cuda",
			reports: []hiveReport{gpuHive("g1", 2*gib), cpuHive("c1", 64*gib, tiny)},
			wantErrs: []string{
				"g1: needs 3.00 GiB of GPU memory, cuda:0 has 2.00 GiB free",
				"c1: no GPU",
			}},
		{name: "no hives", device: "cpu", wantErrs: []string{"no hives: add one"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := placeWorker("tiny", tc.device, tc.reports)
			if tc.wantErrs == nil {
				assert.NilError(t, err)
				assert.Equal(t, got, tc.want)
				return
			}
			var he *httpapi.Error
			assert.Assert(t, errors.As(err, &he))
			assert.Equal(t, he.Status, http.StatusUnprocessableEntity)
			assert.Equal(t, he.Code, "does_not_fit")
			for _, want := range tc.wantErrs {
				assert.Check(t, is.Contains(he.Message, want))
			}
		})
	}
}

func TestNeedsPlacement(t *testing.T) {
	tests := []struct {
		name string
		req  api.SpawnRequest
		want bool
	}{
		{name: "catalog name without hive", req: api.SpawnRequest{Model: "tiny"}, want: true},
		{name: "catalog name with hive", req: api.SpawnRequest{Model: "tiny", Hive: "h1"}},
		{name: "absolute path", req: api.SpawnRequest{Model: "/models/tiny.gguf"}},
		{name: "relative path", req: api.SpawnRequest{Model: "models/tiny.gguf"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, needsPlacement(tc.req), tc.want)
		})
	}
}
