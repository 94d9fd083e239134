package hive

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// newCatalogFixture points the catalog and the state dir at temp dirs and
// returns the path of a real (tiny) GGUF model outside the catalog.
func newCatalogFixture(t *testing.T) (modelsDir, model string) {
	t.Helper()
	modelsDir = filepath.Join(t.TempDir(), "models")
	t.Setenv(envModelsDir, modelsDir)
	t.Setenv(envStateDir, t.TempDir())
	model = filepath.Join(t.TempDir(), "tiny.gguf")
	assert.NilError(t, testmodel.WriteFile(model, testmodel.Tiny()))
	return modelsDir, model
}

func TestModelAddListRm(t *testing.T) {
	dir, model := newCatalogFixture(t)
	want, err := fileSHA256(model)
	assert.NilError(t, err)

	run := runHive(t, "", "model", "add", model, "--name", "tiny-chat")
	assert.Equal(t, run.code, api.HiveExitOK)
	added := decodeOne[api.Model](t, run.stdout)
	assert.Equal(t, added.Name, "tiny-chat")
	assert.Equal(t, added.SHA256, want)
	assert.Equal(t, added.Source, "file:"+model)
	assert.Equal(t, added.Path, filepath.Join(dir, "tiny-chat", "tiny.gguf"))
	assert.Assert(t, added.Architecture != "")
	assert.Assert(t, added.Parameters > 0)
	assert.Assert(t, added.MemoryEstimate.CPURAM > 0)
	_, err = os.Stat(filepath.Join(dir, "tiny-chat", manifestFile))
	assert.NilError(t, err)

	list := decodeOne[api.ModelList](t, runHive(t, "", "model", "list").stdout)
	assert.Equal(t, len(list.Models), 1)
	assert.DeepEqual(t, list.Models[0], added)

	again := runHive(t, "", "model", "add", model, "--name", "tiny-chat")
	wantError(t, again, api.HiveExitUsage, `model "tiny-chat" is already in the catalog`)

	rm := runHive(t, "", "model", "rm", "tiny-chat")
	assert.Equal(t, rm.code, api.HiveExitOK)
	assert.DeepEqual(t, decodeOne[api.ModelRemoved](t, rm.stdout), api.ModelRemoved{Name: "tiny-chat"})
	_, err = os.Stat(filepath.Join(dir, "tiny-chat"))
	assert.Assert(t, os.IsNotExist(err))
	_, err = os.Stat(model)
	assert.NilError(t, err, "the source file must stay")

	wantError(t, runHive(t, "", "model", "rm", "tiny-chat"), api.HiveExitNotFound,
		`no model "tiny-chat" in the catalog`)
}

func TestModelListEmpty(t *testing.T) {
	newCatalogFixture(t)
	run := runHive(t, "", "model", "list")
	assert.Equal(t, run.code, api.HiveExitOK)
	assert.Equal(t, run.stdout, "{\"models\":[]}\n")
}

func TestModelAddRefusesBadInput(t *testing.T) {
	_, model := newCatalogFixture(t)
	notGGUF := filepath.Join(t.TempDir(), "notes.gguf")
	assert.NilError(t, os.WriteFile(notGGUF, []byte("GGUF but not really"), 0o644))

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "dot dot name", args: []string{model, "--name", ".."},
			wantCode: api.HiveExitUsage, wantErr: `invalid model name ".."`},
		{name: "path in name", args: []string{model, "--name", "../../etc"},
			wantCode: api.HiveExitUsage, wantErr: "invalid model name"},
		{name: "absolute name", args: []string{model, "--name", "/etc/passwd"},
			wantCode: api.HiveExitUsage, wantErr: "invalid model name"},
		{name: "hidden name", args: []string{model, "--name", ".hidden"},
			wantCode: api.HiveExitUsage, wantErr: "invalid model name"},
		{name: "missing file", args: []string{"/nonexistent/x.gguf"},
			wantCode: api.HiveExitNotFound, wantErr: "does not exist"},
		{name: "not a GGUF model", args: []string{notGGUF},
			wantCode: api.HiveExitUsage, wantErr: "is not a readable GGUF file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run := runHive(t, "", append([]string{"model", "add"}, tc.args...)...)
			wantError(t, run, tc.wantCode, tc.wantErr)
		})
	}
}

func TestCatalogRefusesEscapes(t *testing.T) {
	dir, model := newCatalogFixture(t)
	assert.Equal(t, runHive(t, "", "model", "add", model, "--name", "real").code, 0)
	outside := t.TempDir()
	assert.NilError(t, os.Symlink(outside, filepath.Join(dir, "linkdir")))
	// A model dir whose file is a symlink out of the catalog.
	assert.NilError(t, os.MkdirAll(filepath.Join(dir, "linkfile"), 0o755))
	assert.NilError(t, os.Symlink(model, filepath.Join(dir, "linkfile", "tiny.gguf")))
	assert.NilError(t, writeManifest(filepath.Join(dir, "linkfile"),
		api.Model{Name: "linkfile", File: "tiny.gguf"}))
	// A manifest naming a file outside its directory.
	assert.NilError(t, os.MkdirAll(filepath.Join(dir, "escape"), 0o755))
	assert.NilError(t, writeManifest(filepath.Join(dir, "escape"),
		api.Model{Name: "escape", File: "../real/tiny.gguf"}))

	c := catalog{dir: dir}
	tests := []struct {
		name    string
		ref     string
		wantErr string
	}{
		{name: "dot dot", ref: "..", wantErr: "invalid model name"},
		{name: "relative path", ref: "../x", wantErr: "invalid model name"},
		{name: "absolute", ref: "/etc", wantErr: "invalid model name"},
		{name: "symlinked dir", ref: "linkdir", wantErr: "is not a directory"},
		{name: "symlinked file", ref: "linkfile", wantErr: "is not a regular file"},
		{name: "manifest escapes", ref: "escape", wantErr: `file "../real/tiny.gguf"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.get(tc.ref)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}

	list := decodeOne[api.ModelList](t, runHive(t, "", "model", "list").stdout)
	assert.Equal(t, len(list.Models), 1)
	assert.Equal(t, list.Models[0].Name, "real")
}

func TestSpawnByCatalogName(t *testing.T) {
	f := newFixture(t, "ready")
	dir := filepath.Join(t.TempDir(), "models")
	t.Setenv(envModelsDir, dir)
	model := filepath.Join(t.TempDir(), "tiny.gguf")
	assert.NilError(t, testmodel.WriteFile(model, testmodel.Tiny()))
	assert.Equal(t, runHive(t, "", "model", "add", model, "--name", "tiny-chat").code, 0)

	res := f.spawn(t, "w1", "--model", "tiny-chat")

	list := decodeOne[api.HiveWorkerList](t, runHive(t, "", "worker", "list").stdout)
	assert.Equal(t, len(list.Workers), 1)
	assert.Equal(t, list.Workers[0].Model, "tiny-chat")
	assert.Equal(t, list.Workers[0].ModelPath, filepath.Join(dir, "tiny-chat", "tiny.gguf"))
	models := decodeOne[api.ModelList](t, runHive(t, "", "model", "list").stdout)
	assert.Assert(t, !models.Models[0].LastUsedAt.IsZero())

	busy := runHive(t, "", "model", "rm", "tiny-chat")
	wantError(t, busy, api.HiveExitUsage, "used by running worker(s) w1")

	forced := runHive(t, "", "model", "rm", "tiny-chat", "--force")
	assert.Equal(t, forced.code, api.HiveExitOK)
	assert.Assert(t, is.DeepEqual(decodeOne[api.ModelRemoved](t, forced.stdout).Workers,
		[]string{res.ID}))

	missing := runHive(t, testToken+"\n", f.spawnArgs("w2", "--model", "nope")...)
	wantError(t, missing, api.HiveExitNotFound, `no model "nope" in the catalog`)
}

// TestModelListEstimatesForSpawn: --slots and --ctx-size re-estimate the
// memory for that spawn (the queen's placement asks so); more context in
// more slots needs more.
func TestModelListEstimatesForSpawn(t *testing.T) {
	_, model := newCatalogFixture(t)
	assert.Equal(t, runHive(t, "", "model", "add", model).code, api.HiveExitOK)

	one := decodeOne[api.ModelList](t, runHive(t, "", "model", "list").stdout).Models[0]
	run := runHive(t, "", "model", "list", "--slots", "4", "--ctx-size", "8192")
	assert.Equal(t, run.code, api.HiveExitOK)
	four := decodeOne[api.ModelList](t, run.stdout).Models[0]

	assert.Equal(t, four.MemoryEstimate.Slots, 4)
	assert.Equal(t, four.MemoryEstimate.Context, 8192)
	assert.Assert(t, four.MemoryEstimate.CPURAM > one.MemoryEstimate.CPURAM,
		"4 × 8192 tokens: %d bytes, 1 slot: %d", four.MemoryEstimate.CPURAM,
		one.MemoryEstimate.CPURAM)

	bad := runHive(t, "", "model", "list", "--slots", "0")
	wantError(t, bad, api.HiveExitUsage, "--slots must be 1 to 64")
}
