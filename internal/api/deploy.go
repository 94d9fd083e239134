package api

import "time"

// DeployRequest is the body of POST /v1/deployments: keep Replicas workers
// of one model running. The spawn fields mean what they mean for POST
// /v1/workers, for every worker of the deployment; Name (default: the
// model's file name without .gguf) names the deployment and its workers.
type DeployRequest struct {
	SpawnRequest
	Replicas int `json:"replicas"`
}

// Deployment is a deployment as the queen reports it.
type Deployment struct {
	Name      string `json:"name"`
	Model     string `json:"model"`          // as given: a catalog name or a path
	Hive      string `json:"hive,omitempty"` // empty: each worker is placed
	Device    string `json:"device"`
	Slots     int    `json:"slots"`
	CtxSize   int    `json:"ctx_size,omitempty"`
	GPULayers *int   `json:"gpu_layers,omitempty"`
	Threads   int    `json:"threads,omitempty"`
	Restart   string `json:"restart"`
	// Replicas is how many workers are wanted; Live counts those starting,
	// loading or ready, and those the restart policy is bringing back;
	// Ready counts those ready.
	Replicas int `json:"replicas"`
	Live     int `json:"live"`
	Ready    int `json:"ready"`
	// Workers are the ids of the live workers.
	Workers   []string  `json:"workers"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Error says why the last spawn failed; NextSpawn is when the queen
	// tries again (it backs off after failures).
	Error     string    `json:"error,omitempty"`
	NextSpawn time.Time `json:"next_spawn,omitzero"`
}

// DeploymentList is the body of GET /v1/deployments.
type DeploymentList struct {
	Deployments []Deployment `json:"deployments"`
}

// DeploymentRemoved is the body of DELETE /v1/deployments/{name}: the
// workers it drained and stopped.
type DeploymentRemoved struct {
	Name    string   `json:"name"`
	Workers []Worker `json:"workers"`
}

// ShutdownResult is the body of POST /v1/shutdown. With ?cascade=true,
// Workers are the workers drained and stopped first, and Errors say which
// could not be stopped.
type ShutdownResult struct {
	Status  string   `json:"status"`
	Workers []Worker `json:"workers,omitempty"`
	Errors  []string `json:"errors,omitempty"`
	// KeptDeployments names the deployments a cascade leaves in place:
	// the next queen starts their replicas again.
	KeptDeployments []string `json:"kept_deployments,omitempty"`
}

// Orphan is a worker process (or the record of one) that a hive started
// and the queen does not want running: GET /v1/hives/{name}/orphans and
// POST /v1/hives/{name}/gc.
type Orphan struct {
	HiveWorker
	// Reason says why it is an orphan.
	Reason string `json:"reason"`
	// Action is what gc does (or did): "stop" for a running process,
	// "remove_record" for the record of one that ended.
	Action string `json:"action"`
	// Done is set once gc did it; Error says why it could not.
	Done  bool   `json:"done"`
	Error string `json:"error,omitempty"`
}

// Orphan actions.
const (
	OrphanStop         = "stop"
	OrphanRemoveRecord = "remove_record"
)

// GCResult is the body of POST /v1/hives/{name}/gc and GET .../orphans.
type GCResult struct {
	Hive    string   `json:"hive"`
	DryRun  bool     `json:"dry_run"`
	Orphans []Orphan `json:"orphans"`
}
