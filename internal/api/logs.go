package api

// HiveLogHeader is the first line `rbee-hive worker logs` prints on
// stdout; the worker's log follows it verbatim. A failing command prints an
// HiveError instead and exits non-zero, so a caller reading a stream can
// tell the two apart from the first line alone.
type HiveLogHeader struct {
	WorkerID string `json:"worker_id"`
	LogPath  string `json:"log_path"`
}
