// Package api holds the JSON shapes that cross process boundaries between
// the rbee binaries: keeper ↔ queen, worker → queen heartbeats, queen → worker
// completions, and the results the hive CLI prints on stdout.
//
// Fields are only ever added, never renamed or removed, so that a newer
// binary can read an older one's output within the same protocol version.
package api

import "time"

// ProtocolVersion is bumped whenever a change here, or in the hive's flags
// that the queen uses, is not backward compatible. 2: model list estimates
// for a spawn's slots and context, download takes the token on stdin.
// The queen refuses hives and workers that speak a different version.
const ProtocolVersion = 2

// WorkerState is the observed state of a worker, as the queen records it.
type WorkerState string

// The worker lifecycle. A worker moves starting → loading → ready, may be
// draining before it stops, and is lost when its heartbeat deadline passes.
const (
	WorkerStarting WorkerState = "starting" // recorded by the queen; the hive is spawning it
	WorkerLoading  WorkerState = "loading"  // process up, model loading
	WorkerReady    WorkerState = "ready"    // routable
	WorkerDraining WorkerState = "draining" // finishing in-flight requests, takes no new ones
	WorkerLost     WorkerState = "lost"     // heartbeat deadline passed
	WorkerFailed   WorkerState = "failed"   // could not start or load; Error says why
	WorkerStopped  WorkerState = "stopped"  // stopped on request or said goodbye
)

// Heartbeat is what a worker posts to the queen at POST /v1/heartbeat, with
// its own token as a bearer credential.
type Heartbeat struct {
	WorkerID        string      `json:"worker_id"`
	ProtocolVersion int         `json:"protocol_version"`
	State           WorkerState `json:"state"`
	URL             string      `json:"url"` // base URL the worker serves on
	Model           string      `json:"model"`
	Device          string      `json:"device"`
	SlotsTotal      int         `json:"slots_total"`
	SlotsBusy       int         `json:"slots_busy"`
	// Throughput over the last interval, in tokens per second.
	PromptTokensPerSec float64 `json:"prompt_tokens_per_sec"`
	GenTokensPerSec    float64 `json:"gen_tokens_per_sec"`
	RequestsServed     int64   `json:"requests_served"`
	RSSBytes           int64   `json:"rss_bytes"`
	// VRAM is this worker's memory on each GPU it runs on (empty on CPU).
	VRAM []DeviceMemory `json:"vram,omitempty"`
	// Error explains a failed state (for example, a model that did not load).
	Error string `json:"error,omitempty"`
}

// DeviceMemory is one GPU's memory as a worker sees it.
type DeviceMemory struct {
	Index      int    `json:"index"` // the N of cuda:N
	Name       string `json:"name"`
	UsedBytes  uint64 `json:"used_bytes"` // by this worker's process
	FreeBytes  uint64 `json:"free_bytes"`
	TotalBytes uint64 `json:"total_bytes"`
}

// WorkerStats are a worker's figures from its latest heartbeat. The queen
// keeps them in memory only: they are live readings, not state.
type WorkerStats struct {
	PromptTokensPerSec float64        `json:"prompt_tokens_per_sec"`
	GenTokensPerSec    float64        `json:"gen_tokens_per_sec"`
	RequestsServed     int64          `json:"requests_served"`
	RSSBytes           int64          `json:"rss_bytes"`
	VRAM               []DeviceMemory `json:"vram,omitempty"`
}

// HeartbeatReply tells the worker when to beat next.
type HeartbeatReply struct {
	NextIntervalMS int64 `json:"next_interval_ms"`
}

// Worker is a worker as the queen reports it to the keeper.
type Worker struct {
	ID            string      `json:"id"`
	Hive          string      `json:"hive"`
	Model         string      `json:"model"`
	ModelPath     string      `json:"model_path"`
	Device        string      `json:"device"`
	Slots         int         `json:"slots"`
	SlotsBusy     int         `json:"slots_busy"`
	State         WorkerState `json:"state"`
	PID           int         `json:"pid,omitempty"`
	URL           string      `json:"url,omitempty"`
	LogPath       string      `json:"log_path,omitempty"`
	Error         string      `json:"error,omitempty"`
	CreatedAt     time.Time   `json:"created_at"`
	LastHeartbeat time.Time   `json:"last_heartbeat,omitzero"`
	// Restart is the restart policy: RestartAlways, RestartOnFailure or
	// RestartNever.
	Restart string `json:"restart,omitempty"`
	// Restarts counts the times the queen started the worker again.
	Restarts int `json:"restarts"`
	// RestartReason says why the last restart happened.
	RestartReason string `json:"restart_reason,omitempty"`
	// NextRestart is when the queen starts the worker again; zero: none due.
	NextRestart time.Time `json:"next_restart,omitzero"`
	// Stats are the latest heartbeat's figures; absent until one arrives.
	Stats *WorkerStats `json:"stats,omitempty"`
}

// WorkerList is the body of GET /v1/workers.
type WorkerList struct {
	Workers []Worker `json:"workers"`
}

// SpawnRequest is the body of POST /v1/workers.
type SpawnRequest struct {
	Model   string `json:"model"`          // path to a GGUF file on the hive
	Name    string `json:"name,omitempty"` // routing name; default: file name without .gguf
	Hive    string `json:"hive,omitempty"` // empty: placed by the queen (a path: localhost)
	Device  string `json:"device,omitempty"`
	Slots   int    `json:"slots,omitempty"`
	CtxSize int    `json:"ctx_size,omitempty"` // context per slot; 0: the model's own, capped
	// GPULayers offloads only this many layers to the GPU; nil: all.
	GPULayers *int `json:"gpu_layers,omitempty"`
	// Threads sets CPU decoding threads; 0: the node's default.
	Threads int `json:"threads,omitempty"`
	// Restart is the restart policy; empty: RestartOnFailure.
	Restart string `json:"restart,omitempty"`
}

// Restart policies: when the queen starts a worker that ended again. A
// worker stopped by `rbee worker stop` is never started again.
const (
	// RestartAlways restarts a worker that was lost, failed, or exited
	// cleanly without being asked to by the queen.
	RestartAlways = "always"
	// RestartOnFailure restarts a worker that was lost or failed.
	RestartOnFailure = "on-failure"
	// RestartNever leaves an ended worker alone.
	RestartNever = "never"
)

// QueenStatus is the body of GET /v1/status.
type QueenStatus struct {
	Version         string    `json:"version"`
	ProtocolVersion int       `json:"protocol_version"`
	Addr            string    `json:"addr"`
	PID             int       `json:"pid"`
	StartedAt       time.Time `json:"started_at"`
	Workers         int       `json:"workers"`
	ReadyWorkers    int       `json:"ready_workers"`
}

// ErrorBody is the one error shape on every HTTP endpoint, OpenAI's.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code,omitempty"`
	// Param names the offending request field, when there is one.
	Param string `json:"param,omitempty"`
}
