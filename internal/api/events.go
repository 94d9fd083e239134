package api

import "time"

// Event types on the queen's GET /v1/events stream.
const (
	// EventWorker: a worker changed state; State says to what, Reason why.
	EventWorker = "worker"
	// EventHive: a hive was contacted; Reachable says how it went.
	EventHive = "hive"
	// EventSummary: the periodic summary of every worker (Workers).
	EventSummary = "summary"
	// EventDownload: a model download on a hive progressed, finished or
	// failed (Download).
	EventDownload = "download"
)

// Event is one JSON message of the queen's event stream. Fields are only
// ever added; a client ignores types it does not know.
type Event struct {
	Type string    `json:"type"`
	Time time.Time `json:"time"`

	// worker events
	WorkerID string      `json:"worker_id,omitempty"`
	Model    string      `json:"model,omitempty"`
	State    WorkerState `json:"state,omitempty"`
	Reason   string      `json:"reason,omitempty"`

	// worker and hive events
	Hive string `json:"hive,omitempty"`
	// Reachable is set on hive events.
	Reachable *bool `json:"reachable,omitempty"`

	// Workers is set on summary events.
	Workers []WorkerSummary `json:"workers,omitempty"`

	// Download is set on download events (with Hive).
	Download *DownloadStatus `json:"download,omitempty"`
}

// DownloadStatus is where one model download stands.
type DownloadStatus struct {
	Ref    string  `json:"ref"`
	Status string  `json:"status"` // "progress", "done" or "error"
	Bytes  int64   `json:"bytes"`
	Total  int64   `json:"total,omitempty"`
	Rate   float64 `json:"rate,omitempty"` // bytes per second
	Error  string  `json:"error,omitempty"`
}

// WorkerSummary is one worker's live figures in a summary event.
type WorkerSummary struct {
	ID                 string      `json:"id"`
	Model              string      `json:"model"`
	State              WorkerState `json:"state"`
	SlotsBusy          int         `json:"slots_busy"`
	SlotsTotal         int         `json:"slots_total"`
	GenTokensPerSec    float64     `json:"gen_tokens_per_sec"`
	PromptTokensPerSec float64     `json:"prompt_tokens_per_sec"`
}
