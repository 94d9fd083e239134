package testmodel

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write streams a GGUF model described by cfg to w. It generates the
// weights a chunk at a time, so memory stays small even for large models.
func Write(w io.Writer, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	tensors := tensorPlan(cfg)
	bw := bufio.NewWriterSize(w, 1<<20)

	if _, err := bw.Write(header(cfg, tensors)); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if err := writeData(bw, cfg.Seed, tensors); err != nil {
		return fmt.Errorf("write tensor data: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write tensor data: %w", err)
	}
	return nil
}

// writeData writes every tensor at its offset in the data section, with
// zero padding between them.
func writeData(w io.Writer, seed int64, tensors []tensor) error {
	tw := newTensorWriter(w, seed)
	var pos uint64
	for i, t := range tensors {
		if _, err := w.Write(make([]byte, t.offset-pos)); err != nil {
			return err
		}
		if err := tw.write(i, t); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		pos = t.offset + t.bytes()
	}
	return nil
}

// WriteFile writes the model to path, creating its directory. It writes to
// path+".tmp" first and renames it, so path never holds a partial model.
func WriteFile(path string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create model dir: %w", err)
	}

	tmp := path + ".tmp"
	if err := writeTemp(tmp, cfg); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename model file: %w", err)
	}
	return nil
}

func writeTemp(tmp string, cfg Config) error {
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create model file: %w", err)
	}
	if err := Write(f, cfg); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close model file: %w", err)
	}
	return nil
}
