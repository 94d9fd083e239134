// Package testenv finds what rbee's tests and benchmarks need on disk: the
// repository root and a model to run. It is only imported by tests.
package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// TrainedModelEnv overrides the trained test model's path.
const TrainedModelEnv = "RBEE_TEST_MODEL"

// RepoRoot is the directory holding go.work, found by walking up from the
// working directory (go test runs in the package's directory).
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatalf("no go.work above %s", dir)
		}
		dir = parent
	}
}

// Model is a model file for a test, and whether it is the trained
// stories260K (whose output is English) or a generated one (noise).
type Model struct {
	Path    string
	Name    string
	Trained bool
}

var (
	generatedOnce sync.Once
	generatedPath string
	generatedErr  error
)

// FindModel returns the trained test model from ../shared/models beside the
// repository (or $RBEE_TEST_MODEL). Where it is absent, as on a user's
// fresh clone, it generates a tiny random-weight model once per test binary,
// so the real loading and inference code still runs.
func FindModel(tb testing.TB) Model {
	tb.Helper()
	path := os.Getenv(TrainedModelEnv)
	if path == "" {
		path = filepath.Join(RepoRoot(tb), "..", "shared", "models", "stories260K.gguf")
	}
	if _, err := os.Stat(path); err == nil {
		return Model{Path: path, Name: "stories260K", Trained: true}
	}
	generatedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rbee-testmodel-")
		if err != nil {
			generatedErr = err
			return
		}
		generatedPath = filepath.Join(dir, "rbee-tiny.gguf")
		generatedErr = testmodel.WriteFile(generatedPath, testmodel.Tiny())
	})
	if generatedErr != nil {
		tb.Fatalf("generate a test model: %v", generatedErr)
	}
	tb.Logf("trained model %s absent: using a generated random-weight model", path)
	return Model{Path: generatedPath, Name: "rbee-tiny"}
}

// Int reads the integer environment variable name, or returns dflt when
// it is unset; load tests are scaled up by hand this way.
func Int(tb testing.TB, name string, dflt int) int {
	tb.Helper()
	return parseEnv(tb, name, dflt, strconv.Atoi)
}

// Duration reads the duration environment variable name, or returns dflt
// when it is unset.
func Duration(tb testing.TB, name string, dflt time.Duration) time.Duration {
	tb.Helper()
	return parseEnv(tb, name, dflt, time.ParseDuration)
}

func parseEnv[T any](tb testing.TB, name string, dflt T, parse func(string) (T, error)) T {
	tb.Helper()
	raw := os.Getenv(name)
	if raw == "" {
		return dflt
	}
	v, err := parse(raw)
	if err != nil {
		tb.Fatalf("environment variable %s=%q: %v", name, raw, err)
	}
	return v
}
