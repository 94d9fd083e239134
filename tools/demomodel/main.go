// Command demomodel finds a small model for `make demo` and prints its
// path: the trained stories260K from ../shared/models when it is there,
// else a copy cached by an earlier run, else a fresh download from Hugging
// Face (checked against its sha256), else, offline, a generated
// random-weight model, which it says plainly, since that one writes noise.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

const (
	modelFile   = "stories260K.gguf"
	modelSHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
	modelRepo   = "ggml-org/models"
	modelPath   = "tinyllamas/stories260K.gguf"
)

func main() {
	shared := flag.String("shared", "../shared/models", "directory that may hold "+modelFile)
	cache := flag.String("cache", defaultCache(), "where downloaded or generated models are kept")
	flag.Parse()
	path, err := find(*shared, *cache)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demomodel: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

func defaultCache() string {
	if dir := os.Getenv("XDG_CACHE_HOME"); dir != "" {
		return filepath.Join(dir, "rbee", "models")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "rbee", "models")
}

func find(shared, cache string) (string, error) {
	if p := filepath.Join(shared, modelFile); fileExists(p) {
		return filepath.Abs(p)
	}
	cached := filepath.Join(cache, modelFile)
	if fileExists(cached) && sha256Of(cached) == modelSHA256 {
		fmt.Fprintf(os.Stderr, "using %s downloaded earlier\n", cached)
		return cached, nil
	}
	err := download(cached)
	if err == nil {
		return cached, nil
	}
	fmt.Fprintf(os.Stderr, "could not download %s (%v)\n", modelFile, err)
	generated := filepath.Join(cache, "rbee-tiny-random.gguf")
	if err := testmodel.WriteFile(generated, testmodel.Tiny()); err != nil {
		return "", fmt.Errorf("generate a fallback model: %w", err)
	}
	fmt.Fprintf(os.Stderr, "FALLBACK: using a generated random-weight model, %s.\n"+
		"It runs the real llama.cpp code, but its text is noise.\n", generated)
	return generated, nil
}

// download fetches the model from Hugging Face into dst, keeping it only
// when its sha256 matches.
func download(dst string) error {
	endpoint := strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/")
	if endpoint == "" {
		endpoint = "https://huggingface.co"
	}
	url := endpoint + "/" + modelRepo + "/resolve/main/" + modelPath
	fmt.Fprintf(os.Stderr, "downloading %s\n", url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".partial"
	if err := writeVerified(tmp, resp.Body); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

func writeVerified(path string, r io.Reader) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != modelSHA256 {
		return errors.New("sha256 mismatch: got " + got)
	}
	return nil
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

func sha256Of(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
