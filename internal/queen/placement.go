package queen

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// placementTimeout bounds asking every hive for its devices and models.
const placementTimeout = 20 * time.Second

// hiveReport is what one hive told the queen when asked where a worker
// could go: its devices and catalog, or why it could not be asked.
type hiveReport struct {
	hive    string
	devices api.Devices
	models  []api.Model
	err     error
}

// placement is where placeWorker puts a worker: a hive and a device.
type placement struct {
	hive   string
	device string
}

// needsPlacement reports whether a spawn without a hive should be placed
// by the queen: a catalog name is; a file path keeps the local hive.
func needsPlacement(req api.SpawnRequest) bool {
	return req.Hive == "" && !filepath.IsAbs(req.Model) && !strings.ContainsRune(req.Model, '/')
}

// placeWorker picks the hive and device for model: only hives whose
// catalog holds it, whose device of the requested kind has the memory the
// model's estimate asks for; among those, the most free memory. device is
// "cpu", "cuda" (any GPU) or "cuda:N". With no hive left, the error is a
// 422 that says why for each hive.
//
// Shortcoming: the estimate is the catalog's, for one slot at the default
// context; more slots or context need more, which the hive checks exactly
// when it spawns (and refuses with does_not_fit).
func placeWorker(model, device string, reports []hiveReport) (placement, error) {
	var best placement
	var bestFree uint64
	var reasons []string
	for _, r := range reports {
		dev, free, reason := fitOn(model, device, r)
		if reason != "" {
			reasons = append(reasons, fmt.Sprintf("%s: %s", r.hive, reason))
			continue
		}
		if best.hive == "" || free > bestFree {
			best, bestFree = placement{hive: r.hive, device: dev}, free
		}
	}
	if best.hive != "" {
		return best, nil
	}
	if len(reports) == 0 {
		reasons = append(reasons, "no hives: add one with `rbee hive add`")
	}
	return placement{}, &httpapi.Error{Status: http.StatusUnprocessableEntity,
		Type: "invalid_request_error", Code: "does_not_fit", Param: "hive",
		Message: fmt.Sprintf("no hive can run model %q on %s:\n  %s", model, device,
			strings.Join(reasons, "\n  "))}
}

// fitOn says whether model fits on hive r's device of the requested kind:
// the device chosen and its free memory, or the reason it does not fit.
func fitOn(model, device string, r hiveReport) (string, uint64, string) {
	if r.err != nil {
		return "", 0, "not asked: " + httpapi.AsError(r.err).Message
	}
	m, ok := findModel(r.models, model)
	if !ok {
		return "", 0, fmt.Sprintf("no model %q in its catalog (rbee model download ... "+
			"--hive %s)", model, r.hive)
	}
	need := m.MemoryEstimate
	if device == "cpu" {
		free := r.devices.CPU.RAMAvailable
		if need.CPURAM > free {
			return "", 0, fmt.Sprintf("needs %s of RAM, %s available", fmtBytes(need.CPURAM),
				fmtBytes(free))
		}
		return "cpu", free, ""
	}

	var gpus []api.GPUDevice
	for _, g := range r.devices.GPUs {
		if device == "cuda" || device == g.Device {
			gpus = append(gpus, g)
		}
	}
	if len(gpus) == 0 {
		why := "no GPU " + device
		if device == "cuda" {
			why = "no GPU"
		}
		if r.devices.GPUError != "" {
			why += " (" + r.devices.GPUError + ")"
		}
		return "", 0, why
	}
	sort.SliceStable(gpus, func(i, j int) bool { return gpus[i].MemoryFree > gpus[j].MemoryFree })
	g := gpus[0]
	if need.GPUVRAM > g.MemoryFree {
		return "", 0, fmt.Sprintf("needs %s of GPU memory, %s has %s free",
			fmtBytes(need.GPUVRAM), g.Device, fmtBytes(g.MemoryFree))
	}
	return g.Device, g.MemoryFree, ""
}

func findModel(models []api.Model, name string) (api.Model, bool) {
	for _, m := range models {
		if m.Name == name {
			return m, true
		}
	}
	return api.Model{}, false
}

// fmtBytes writes n in GiB, or MiB below one GiB.
func fmtBytes(n uint64) string {
	if n < 1<<30 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}

// hiveReports asks every hive for its devices and models, all at once,
// within placementTimeout. A hive workers there could not reach the queen
// from is reported with that error, not asked.
func (s *Server) hiveReports(ctx context.Context) ([]hiveReport, error) {
	hives, err := s.store.Hives(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, placementTimeout)
	defer cancel()

	reports := make([]hiveReport, len(hives))
	var wg sync.WaitGroup
	for i, h := range hives {
		reports[i].hive = h.Name
		if err := s.canReachQueen(h); err != nil {
			reports[i].err = err
			continue
		}
		wg.Go(func() { reports[i] = s.askHive(ctx, h) })
	}
	wg.Wait()
	return reports, nil
}

// askHive runs `rbee-hive devices` and `rbee-hive model list` on h.
func (s *Server) askHive(ctx context.Context, h registry.Hive) hiveReport {
	r := hiveReport{hive: h.Name}
	if err := s.hives.run(ctx, h, []string{"devices"}, "", &r.devices); err != nil {
		r.err = err
		return r
	}
	var list api.ModelList
	if err := s.hives.run(ctx, h, []string{"model", "list"}, "", &list); err != nil {
		r.err = err
		return r
	}
	r.models = list.Models
	return r
}
