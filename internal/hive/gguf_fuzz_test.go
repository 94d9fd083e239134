package hive

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// FuzzGGUFHeader feeds arbitrary bytes, as a file, to what reads a model's
// GGUF header for the catalog (header, metadata and memory estimate): it
// must return an error or metadata, never panic. Seeded with a valid tiny
// model and pieces of it.
func FuzzGGUFHeader(f *testing.F) {
	var tiny bytes.Buffer
	if err := testmodel.Write(&tiny, testmodel.Tiny()); err != nil {
		f.Fatal(err)
	}
	valid := tiny.Bytes()
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(valid[:64])
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Add([]byte{})

	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "model.gguf")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		var m api.Model
		if err := describeGGUF(path, &m); err != nil {
			return // refused: what a malformed file should get
		}
		if m.MemoryEstimate.Slots != 1 {
			t.Fatalf("a described model without its one-slot estimate: %+v", m)
		}
	})
}
