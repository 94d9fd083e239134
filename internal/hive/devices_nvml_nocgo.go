//go:build !cgo || !linux

package hive

import "github.com/rbee-dev/rbee/internal/api"

// nvmlGPUs: go-nvml needs cgo, so a hive built with CGO_ENABLED=0 (e.g.
// cross-compiled for a hive of another architecture) reads GPUs through
// nvidia-smi only.
func nvmlGPUs() ([]api.GPUDevice, error) { return nil, errNoNVML }
