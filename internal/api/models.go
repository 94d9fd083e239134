package api

import "time"

// Model is one entry of a hive's model catalog: the manifest the hive keeps
// beside the file (`rbee-hive model list|add|download`).
type Model struct {
	Name string `json:"name"`
	// File is the model file's name inside the model's directory; Path is
	// its absolute path on the hive, filled in when listed.
	File string `json:"file"`
	Path string `json:"path,omitempty"`
	// Source is where it came from: "hf:ORG/REPO/FILE" or "file:/abs/path".
	Source   string `json:"source"`
	Revision string `json:"revision,omitempty"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`

	// From the GGUF header.
	Architecture  string `json:"architecture,omitempty"`
	Parameters    uint64 `json:"parameters,omitempty"`
	Quantization  string `json:"quantization,omitempty"`
	ContextLength uint64 `json:"context_length,omitempty"`
	// MemoryEstimate is what a worker needs for EstimateContext tokens of
	// context and one slot, on the CPU (all layers in RAM) and on one GPU
	// (all layers offloaded), in bytes.
	MemoryEstimate MemoryEstimate `json:"memory_estimate"`

	AddedAt    time.Time `json:"added_at,omitzero"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// MemoryEstimate is the memory a worker needs, estimated from a GGUF header.
type MemoryEstimate struct {
	Context int    `json:"context"`
	Slots   int    `json:"slots"`
	CPURAM  uint64 `json:"cpu_ram"`
	GPUVRAM uint64 `json:"gpu_vram"`
	GPURAM  uint64 `json:"gpu_ram"` // host RAM a fully offloaded worker still uses
}

// ModelList is the result of `rbee-hive model list`.
type ModelList struct {
	Models []Model `json:"models"`
}

// ModelRemoved is the result of `rbee-hive model rm`.
type ModelRemoved struct {
	Name string `json:"name"`
	// Workers are the ids of live workers that used it (only with --force).
	Workers []string `json:"workers,omitempty"`
}

// ModelEvent is one JSON line of a long model command (`rbee-hive model
// download`) before its result: {"event":"progress","bytes","total","rate"}.
// The queen relays them; the last line of the command is its result (an
// api.Model) or an api.HiveError.
type ModelEvent struct {
	Event string  `json:"event"`           // "progress"
	Bytes int64   `json:"bytes"`           // bytes on disk so far, resumed ones included
	Total int64   `json:"total,omitempty"` // 0 when unknown
	Rate  float64 `json:"rate"`            // bytes per second over this run
	// Resumed is the number of bytes found in the partial file at start.
	Resumed int64 `json:"resumed,omitempty"`
}

// Devices is the result of `rbee-hive devices`.
type Devices struct {
	CPU  CPUDevice   `json:"cpu"`
	GPUs []GPUDevice `json:"gpus"`
	// GPUError says why GPUs could not be listed (NVML and nvidia-smi
	// failed), when it is present; no NVIDIA driver at all is no error.
	GPUError string `json:"gpu_error,omitempty"`
	// GPUSource is where the GPUs were read: "nvml" (go-nvml, in a hive
	// built with cgo), "nvidia-smi" (the fallback), or "none" (neither
	// is there: a CPU node). Empty from a hive older than this field.
	GPUSource string `json:"gpu_source,omitempty"`
}

// CPUDevice is the node's CPU and RAM.
type CPUDevice struct {
	Cores        int    `json:"cores"`
	RAMTotal     uint64 `json:"ram_total"`
	RAMAvailable uint64 `json:"ram_available"`
	Architecture string `json:"arch"`
	OS           string `json:"os"`
}

// GPUDevice is one GPU as NVML or nvidia-smi reports it; memory in bytes.
type GPUDevice struct {
	Index             int    `json:"index"`
	Device            string `json:"device"` // "cuda:N", as --device takes it
	Name              string `json:"name"`
	MemoryTotal       uint64 `json:"memory_total"`
	MemoryFree        uint64 `json:"memory_free"`
	ComputeCapability string `json:"compute_capability"`
	Driver            string `json:"driver"`
}

// ModelDownloadRequest is the body of the queen's POST /v1/models/download.
type ModelDownloadRequest struct {
	Hive     string `json:"hive"`
	Ref      string `json:"ref"`
	Revision string `json:"revision,omitempty"`
	Name     string `json:"name,omitempty"`
	// HFToken is the user's Hugging Face token, for a private or gated
	// file; the queen hands it to the hive over the SSH session's stdin,
	// never in argv, and neither stores nor logs it. Empty: the hive's
	// own $HF_TOKEN.
	HFToken string `json:"hf_token,omitempty"`
	// HFEndpoint is a Hugging Face mirror's URL; empty: the hive's own
	// $HF_ENDPOINT, else huggingface.co.
	HFEndpoint string `json:"hf_endpoint,omitempty"`
}

// Catalog is the queen's GET /v1/catalog: every hive's models, one entry
// per distinct file (same sha256), with the hives that hold it.
type Catalog struct {
	Models []CatalogModel `json:"models"`
	// Unreachable lists the hives that could not be asked, and why; their
	// models are missing from Models.
	Unreachable []CatalogHiveError `json:"unreachable,omitempty"`
}

// CatalogModel is one model file of the Catalog: the hives' manifest
// (identical for the same sha256) without what differs from hive to hive
// (path, dates), and the hives that hold it.
type CatalogModel struct {
	Model
	// Hives hold this very file under Name, sorted.
	Hives []string `json:"hives"`
	// NameConflict: another entry has the same Name but another file (a
	// different sha256); a spawn by name runs whichever its hive holds.
	NameConflict bool `json:"name_conflict,omitempty"`
}

// CatalogHiveError is a hive the Catalog could not ask.
type CatalogHiveError struct {
	Hive  string `json:"hive"`
	Error string `json:"error"`
}

// DownloadEvent is one server-sent event of POST /v1/models/download: the
// hive's progress lines as they come (event "progress"), then "done" with
// the model, or "error" with the error.
type DownloadEvent struct {
	ModelEvent
	Model *Model       `json:"model,omitempty"`
	Error *ErrorDetail `json:"error,omitempty"`
}
