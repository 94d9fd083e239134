package queen

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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

// placementPlan is what placement found for a model on a device: the
// hives whose catalog holds it with room on the device, best first (the
// most free memory), and why each other hive is not one.
type placementPlan struct {
	model, device string
	candidates    []placement
	reasons       []string
}

// rankPlacements orders the hives that can run model on device: those
// whose catalog holds it and whose device of the requested kind has the
// memory the hive's estimate asks for, the most free memory first. device
// is "cpu", "cuda" (any GPU) or "cuda:N".
func rankPlacements(model, device string, reports []hiveReport) placementPlan {
	pp := placementPlan{model: model, device: device}
	var free []uint64
	for _, r := range reports {
		dev, f, reason := fitOn(model, device, r)
		if reason != "" {
			pp.reasons = append(pp.reasons, fmt.Sprintf("%s: %s", r.hive, reason))
			continue
		}
		pp.candidates = append(pp.candidates, placement{hive: r.hive, device: dev})
		free = append(free, f)
	}
	order := make([]int, len(free))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return free[order[i]] > free[order[j]] })
	ranked := make([]placement, len(order))
	for i, o := range order {
		ranked[i] = pp.candidates[o]
	}
	pp.candidates = ranked
	if len(reports) == 0 {
		pp.reasons = append(pp.reasons, "no hives: add one with `rbee hive add`")
	}
	return pp
}

// refusal is the 422 for a model no hive can run: why, hive by hive;
// refused lists the hives that were tried and refused the spawn.
func (pp placementPlan) refusal(refused []string) error {
	reasons := append(slices.Clone(refused), pp.reasons...)
	return &httpapi.Error{Status: http.StatusUnprocessableEntity,
		Type: "invalid_request_error", Code: "does_not_fit", Param: "hive",
		Message: fmt.Sprintf("no hive can run model %q on %s:\n  %s", pp.model, pp.device,
			strings.Join(reasons, "\n  "))}
}

// placeWorker picks the best hive and device for model (see
// rankPlacements). With no hive left, the error is a 422 that says why for
// each hive.
func placeWorker(model, device string, reports []hiveReport) (placement, error) {
	pp := rankPlacements(model, device, reports)
	if len(pp.candidates) == 0 {
		return placement{}, pp.refusal(nil)
	}
	return pp.candidates[0], nil
}

// fitRequest is the spawn the hives' memory estimates are asked for.
type fitRequest struct {
	slots, ctxSize int
	gpuLayers      *int
}

// listArgs is `rbee-hive model list`, asking for estimates made for this
// spawn. The default spawn (one slot, the model's context, all layers on
// the GPU) is what the catalog's manifests hold already, so it passes no
// flag (which any hive answers). Values out of range are left to the
// spawn's own checks.
func (f fitRequest) listArgs() []string {
	args := []string{"model", "list"}
	if f.slots > 1 && f.slots <= maxSlots {
		args = append(args, "--slots", strconv.Itoa(f.slots))
	}
	if f.ctxSize > 0 {
		args = append(args, "--ctx-size", strconv.Itoa(f.ctxSize))
	}
	if f.gpuLayers != nil && *f.gpuLayers >= 0 {
		args = append(args, "--gpu-layers", strconv.Itoa(*f.gpuLayers))
	}
	return args
}

// placeSpawn asks every hive for its devices and its models' estimates
// for req's slots and context, and ranks where req can go. The error is a
// 422 that says why for each hive when none can take it.
func (s *Server) placeSpawn(ctx context.Context, req api.SpawnRequest) (placementPlan, error) {
	reports, err := s.hiveReportsFor(ctx, fitRequest{slots: req.Slots, ctxSize: req.CtxSize,
		gpuLayers: req.GPULayers})
	if err != nil {
		return placementPlan{}, err
	}
	pp := rankPlacements(req.Model, req.Device, reports)
	if len(pp.candidates) == 0 {
		return pp, pp.refusal(nil)
	}
	return pp, nil
}

// spawnPlaced spawns p; when the queen placed it (p.placed) and the hive
// refuses (its exact fit check says does_not_fit, or the model is gone),
// it tries the next candidate in order. When every one refuses, the error
// says why for each hive.
//
// Each refused try is kept as a failed worker, with the hive's reason: a
// record of what was tried (and events say the same).
func (s *Server) spawnPlaced(ctx context.Context, p spawnPlan) (registry.Worker, error) {
	if p.placed == nil {
		return s.spawn(ctx, p)
	}
	var wk registry.Worker
	first := true
	err := p.placed.try(func(c placement) error {
		if !first {
			h, err := s.store.Hive(ctx, c.hive)
			if err != nil {
				return err
			}
			s.log.Info("placing worker on the next hive", "hive", c.hive, "device", c.device,
				"model", p.req.Model)
			p.hive, p.req.Hive, p.req.Device = h, c.hive, c.device
		}
		first = false
		var err error
		wk, err = s.spawn(ctx, p)
		return err
	})
	return wk, err
}

// try calls spawn with each candidate in order until one does not refuse
// (see refusedSpawn), and returns its error. When all refuse, the error
// is the 422 that says why for each hive, the refusals first.
func (pp placementPlan) try(spawn func(placement) error) error {
	var refused []string
	for _, c := range pp.candidates {
		err := spawn(c)
		if !refusedSpawn(err) {
			return err
		}
		msg := strings.TrimPrefix(httpapi.AsError(err).Message, fmt.Sprintf("hive %q: ", c.hive))
		refused = append(refused, fmt.Sprintf("%s: refused on %s: %s", c.hive, c.device, msg))
	}
	return pp.refusal(refused)
}

// refusedSpawn reports whether a hive refused a spawn for want of room or
// of the model: a reason to try the next hive, where any other error is
// not (the next hive would most likely fail the same way).
func refusedSpawn(err error) bool {
	if err == nil {
		return false
	}
	switch httpapi.AsError(err).Code {
	case "does_not_fit", "not_found":
		return true
	}
	return false
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

// hiveReportsFor asks every hive for its devices and its models, with
// memory estimates made for the spawn f, all at once, within
// placementTimeout. A hive workers there could not reach the queen from,
// or that the last probe found unreachable, is reported so, not asked.
func (s *Server) hiveReportsFor(ctx context.Context, f fitRequest) ([]hiveReport, error) {
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
		// A hive the probe found down would cost a whole connect timeout;
		// it is asked again once a probe finds it back.
		if hiveWait(h) != "" {
			reports[i].err = fmt.Errorf("unreachable at its last probe (%s): %s",
				h.Contact.CheckedAt.Format(time.TimeOnly), orText(h.Contact.LastError, "no answer"))
			continue
		}
		wg.Go(func() { reports[i] = s.askHive(ctx, h, f.listArgs()) })
	}
	wg.Wait()
	return reports, nil
}

// askHive runs `rbee-hive devices` and listArgs (`rbee-hive model list`
// and its flags) on h.
func (s *Server) askHive(ctx context.Context, h registry.Hive, listArgs []string) hiveReport {
	r := hiveReport{hive: h.Name}
	if err := s.hives.run(ctx, h, []string{"devices"}, "", &r.devices); err != nil {
		r.err = err
		return r
	}
	var list api.ModelList
	if err := s.hives.run(ctx, h, listArgs, "", &list); err != nil {
		r.err = err
		return r
	}
	r.models = list.Models
	return r
}
