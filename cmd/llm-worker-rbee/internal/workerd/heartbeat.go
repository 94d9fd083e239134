package workerd

import (
	"os"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine"
	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/gpu"
	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/procstat"
)

// rateMeter turns running token totals into rates over the last interval.
type rateMeter struct {
	mu   sync.Mutex
	last engine.Stats
	at   time.Time
}

// rates returns prompt and generation tokens per second since the last call.
func (m *rateMeter) rates(now engine.Stats) (prompt, gen float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := time.Now()
	if !m.at.IsZero() {
		secs := t.Sub(m.at).Seconds()
		if secs > 0 {
			prompt = float64(now.PromptTokens-m.last.PromptTokens) / secs
			gen = float64(now.GeneratedTokens-m.last.GeneratedTokens) / secs
		}
	}
	m.last, m.at = now, t
	return prompt, gen
}

// heartbeat is the worker's state as the queen should see it now.
func (w *worker) heartbeat() api.Heartbeat {
	state, errText, eng := w.snapshot()
	hb := api.Heartbeat{
		WorkerID:        w.cfg.ID,
		ProtocolVersion: api.ProtocolVersion,
		State:           state,
		URL:             w.url,
		Model:           w.cfg.Name,
		Device:          w.cfg.Device.String(),
		SlotsTotal:      w.cfg.Slots,
		RSSBytes:        procstat.ResidentBytes(),
		Error:           errText,
	}
	if len(w.cfg.Device.CUDA) > 0 {
		hb.VRAM = vramUsage(w.cfg.Device.CUDA)
	}
	if eng != nil {
		stats := eng.Stats()
		hb.SlotsBusy = stats.SlotsBusy
		hb.RequestsServed = stats.RequestsServed
		hb.PromptTokensPerSec, hb.GenTokensPerSec = w.rates.rates(stats)
	}
	return hb
}

// vramUsage is this process's memory on each of its GPUs, read through
// NVML (nothing when NVML is absent).
func vramUsage(indices []int) []api.DeviceMemory {
	devices, err := gpu.Devices()
	if err != nil || len(devices) == 0 {
		return nil
	}
	used := gpu.ProcessMemory(os.Getpid(), indices)
	var out []api.DeviceMemory
	for _, i := range indices {
		if i >= len(devices) {
			continue
		}
		d := devices[i]
		out = append(out, api.DeviceMemory{Index: i, Name: d.Name, UsedBytes: used[i],
			FreeBytes: d.FreeBytes, TotalBytes: d.TotalBytes})
	}
	return out
}
