package queen

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
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

func TestRankPlacements(t *testing.T) {
	const gib = 1 << 30
	tiny := api.Model{Name: "tiny", MemoryEstimate: api.MemoryEstimate{CPURAM: 2 * gib}}
	hive := func(name string, ram uint64) hiveReport {
		return hiveReport{hive: name, models: []api.Model{tiny},
			devices: api.Devices{CPU: api.CPUDevice{RAMAvailable: ram}}}
	}
	pp := rankPlacements("tiny", "cpu", []hiveReport{hive("a", 4*gib), hive("small", gib),
		hive("b", 16*gib), hive("c", 8*gib), hive("d", 8*gib)})

	assert.DeepEqual(t, pp.candidates, []placement{{"b", "cpu"}, {"c", "cpu"}, {"d", "cpu"},
		{"a", "cpu"}}, cmp.AllowUnexported(placement{}))
	assert.DeepEqual(t, pp.reasons, []string{"small: needs 2.00 GiB of RAM, 1.00 GiB available"})
}

func TestFitRequestListArgs(t *testing.T) {
	layers, none := 10, -1
	tests := []struct {
		name string
		f    fitRequest
		want []string
	}{
		{name: "default spawn: the catalog's own estimate", f: fitRequest{slots: 1},
			want: []string{"model", "list"}},
		{name: "unset", want: []string{"model", "list"}},
		{name: "slots and context", f: fitRequest{slots: 4, ctxSize: 8192},
			want: []string{"model", "list", "--slots", "4", "--ctx-size", "8192"}},
		{name: "gpu layers", f: fitRequest{gpuLayers: &layers},
			want: []string{"model", "list", "--gpu-layers", "10"}},
		{name: "out of range left to the spawn's checks",
			f: fitRequest{slots: 1000, ctxSize: -1, gpuLayers: &none}, want: []string{"model", "list"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.DeepEqual(t, tc.f.listArgs(), tc.want)
		})
	}
}

// TestPlacementTry: when the hive placement chose refuses the spawn (its
// exact fit check, exit 4, or the model is gone), the next candidate is
// tried; another error ends the tries; when all refuse, the error says why
// for each hive.
func TestPlacementTry(t *testing.T) {
	noFit := func(hive string) error {
		return &httpapi.Error{Status: http.StatusUnprocessableEntity, Code: "does_not_fit",
			Message: fmt.Sprintf("hive %q: model tiny (4096 tokens × 1 slots) needs 2.00 GiB "+
				"of RAM, but only 1.00 GiB is available", hive)}
	}
	gone := &httpapi.Error{Status: http.StatusNotFound, Code: "not_found",
		Message: `hive "h2": no model "tiny" in the catalog`}
	down := &httpapi.Error{Status: http.StatusBadGateway, Code: "hive_unreachable",
		Message: `could not run rbee-hive on hive "h2": dial`}
	pp := placementPlan{model: "tiny", device: "cpu",
		candidates: []placement{{"h1", "cpu"}, {"h2", "cpu"}, {"h3", "cuda:0"}},
		reasons:    []string{`far: no model "tiny" in its catalog`}}

	tests := []struct {
		name      string
		answers   map[string]error
		wantTried []string
		wantErr   error
		wantMsgs  []string
	}{
		{name: "the first takes it", wantTried: []string{"h1"}},
		{name: "the next takes it", answers: map[string]error{"h1": noFit("h1")},
			wantTried: []string{"h1", "h2"}},
		{name: "a model gone is a refusal too", answers: map[string]error{"h1": noFit("h1"),
			"h2": gone}, wantTried: []string{"h1", "h2", "h3"}},
		{name: "another error ends the tries", answers: map[string]error{"h1": noFit("h1"),
			"h2": down}, wantTried: []string{"h1", "h2"}, wantErr: down},
		{name: "all refuse", answers: map[string]error{"h1": noFit("h1"), "h2": noFit("h2"),
			"h3": noFit("h3")}, wantTried: []string{"h1", "h2", "h3"},
			wantMsgs: []string{`no hive can run model "tiny" on cpu:`,
				"\n  h1: refused on cpu: model tiny (4096 tokens × 1 slots) needs 2.00 GiB",
				"\n  h2: refused on cpu: model tiny", "\n  h3: refused on cuda:0: model tiny",
				"\n  far: no model \"tiny\" in its catalog"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tried []string
			err := pp.try(func(c placement) error {
				tried = append(tried, c.hive)
				return tc.answers[c.hive]
			})
			assert.DeepEqual(t, tried, tc.wantTried)
			switch {
			case tc.wantMsgs != nil:
				var he *httpapi.Error
				assert.Assert(t, errors.As(err, &he))
				assert.Equal(t, he.Status, http.StatusUnprocessableEntity)
				assert.Equal(t, he.Code, "does_not_fit")
				for _, want := range tc.wantMsgs {
					assert.Check(t, is.Contains(he.Message, want))
				}
			case tc.wantErr != nil:
				assert.Equal(t, err, tc.wantErr)
			default:
				assert.NilError(t, err)
			}
		})
	}
}
