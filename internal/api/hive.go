package api

import "time"

// Exit codes of the rbee-hive CLI. The queen maps them to errors for the
// person; they are part of the protocol, so they never change meaning.
const (
	HiveExitOK       = 0
	HiveExitFailed   = 1 // the command ran and failed (the worker died, I/O error)
	HiveExitUsage    = 2 // bad flags or arguments
	HiveExitNotFound = 3 // no such worker or model
	HiveExitNoFit    = 4 // the model does not fit the device, or the device is absent
)

// HiveError is what the hive prints on stdout when a command fails, so that
// the caller gets a structured reason and not only an exit code.
type HiveError struct {
	Error string `json:"error"`
	// LogTail holds the last lines a dead worker wrote, when there are any.
	LogTail []string `json:"log_tail,omitempty"`
}

// HiveVersion is the result of `rbee-hive version`.
type HiveVersion struct {
	Version         string `json:"version"`
	ProtocolVersion int    `json:"protocol_version"`
	OS              string `json:"os"`
	Arch            string `json:"arch"`
}

// SpawnResult is the result of `rbee-hive worker spawn`.
type SpawnResult struct {
	ID      string `json:"id"`
	PID     int    `json:"pid"`
	Port    int    `json:"port"`
	URL     string `json:"url"`
	LogPath string `json:"log_path"`
}

// HiveWorker is one entry of `rbee-hive worker list`: the hive's own record
// of a worker it started, and whether that process still runs.
type HiveWorker struct {
	ID        string    `json:"id"`
	PID       int       `json:"pid"`
	Port      int       `json:"port"`
	URL       string    `json:"url"`
	Model     string    `json:"model"`
	ModelPath string    `json:"model_path"`
	Device    string    `json:"device"`
	Slots     int       `json:"slots"`
	LogPath   string    `json:"log_path"`
	StartedAt time.Time `json:"started_at"`
	Alive     bool      `json:"alive"`
	// Orphan is set when the worker reported that the queen it heartbeats
	// to no longer knows it (see WorkerQueenStatus); OrphanReason says so
	// in words. The queen's `rbee hive gc` stops such a worker unless it
	// wants it running after all.
	Orphan       bool   `json:"orphan,omitempty"`
	OrphanReason string `json:"orphan_reason,omitempty"`
}

// WorkerQueenStatus is what a worker writes to its --status-file (next to
// the hive's record: workers/ID.status.json) while the queen answers its
// heartbeats 404 worker_not_found: the queen's row is gone, or its
// database was reset. The worker keeps serving and beating, and removes
// the file once a heartbeat is accepted again.
type WorkerQueenStatus struct {
	QueenURL     string    `json:"queen_url"`
	UnknownSince time.Time `json:"unknown_since"`
	LastReply    string    `json:"last_reply"` // e.g. "404 worker_not_found"
}

// HiveWorkerList is the result of `rbee-hive worker list`.
type HiveWorkerList struct {
	Workers []HiveWorker `json:"workers"`
}

// StopResult is the result of `rbee-hive worker stop`.
type StopResult struct {
	ID string `json:"id"`
	// How the worker ended: "exited" after SIGTERM, "killed" after the grace
	// period, or "not_running" when it was already gone.
	Outcome string `json:"outcome"`
}

// ReadyLine is what a worker writes to its ready pipe (see the hive's spawn)
// once it is listening: one JSON line, then it closes the pipe.
type ReadyLine struct {
	Port int `json:"port"`
}

// Environment variables that carry secrets and settings into a worker,
// never argv (argv is visible to every user in ps).
const (
	EnvWorkerToken = "RBEE_WORKER_TOKEN"
)
