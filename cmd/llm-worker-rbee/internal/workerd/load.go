package workerd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	parser "github.com/gpustack/gguf-parser-go"

	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine"
	"github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/llm"
)

// ErrNoCUDA means a CUDA device was asked for but no CUDA backend loaded.
var ErrNoCUDA = errors.New("no CUDA device available")

// allLayers asks llama.cpp to offload every layer.
const allLayers = 999

// modelInfo is what the worker reads from the GGUF header before loading.
type modelInfo struct {
	Architecture string
	TrainCtx     int
	ChatTemplate string // tokenizer.chat_template; empty when the model has none
}

// inspectModel checks that path is a readable GGUF file and reads the
// header fields the worker needs. llama.cpp can abort the whole process on
// a malformed file, so this runs first and turns that into a clear error.
func inspectModel(path string) (modelInfo, error) {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return modelInfo{}, fmt.Errorf("model file: %w", err)
	case !st.Mode().IsRegular():
		return modelInfo{}, fmt.Errorf("model file %s is not a regular file", path)
	}
	f, err := parser.ParseGGUFFile(path)
	if err != nil {
		return modelInfo{}, fmt.Errorf("model file %s is not a valid GGUF model: %w", path, err)
	}
	arch := f.Architecture()
	info := modelInfo{Architecture: arch.Architecture, TrainCtx: int(arch.MaximumContextLength)}
	if kv, ok := f.Header.MetadataKV.Get("tokenizer.chat_template"); ok {
		info.ChatTemplate = kv.ValueString()
	}
	return info, nil
}

// loadOptions turns the config into llama.cpp's load settings, checking
// that the asked device exists.
func loadOptions(cfg Config, ctxPerSlot int, gpus []llm.DeviceInfo) (llm.LoadOptions, error) {
	opts := llm.LoadOptions{
		CtxSize:   ctxPerSlot * cfg.Slots,
		BatchSize: cfg.BatchSize,
		Sequences: cfg.Slots,
		Threads:   cfg.Threads,
	}
	if len(cfg.Device.CUDA) == 0 {
		return opts, nil
	}
	if len(gpus) == 0 {
		return opts, fmt.Errorf("%w: --device %s needs llama.cpp's CUDA backend, which was "+
			"not found next to the worker (lib/ollama/libggml-cuda.so): build it on this "+
			"node with `make cuda`, or use --device cpu", ErrNoCUDA, cfg.Device)
	}
	split := make([]float32, len(gpus))
	for _, n := range cfg.Device.CUDA {
		if n >= len(gpus) {
			return opts, fmt.Errorf("%w: --device %s: this node has %d GPU(s), cuda:0 to cuda:%d",
				ErrNoCUDA, cfg.Device, len(gpus), len(gpus)-1)
		}
		split[n] = 1
	}
	opts.MainGPU = cfg.Device.CUDA[0]
	opts.TensorSplit = split
	opts.GPULayers = cfg.GPULayers
	if opts.GPULayers < 0 {
		opts.GPULayers = allLayers
	}
	return opts, nil
}

// contextPerSlot is the context each slot gets: the flag, else the model's
// training context capped at maxDefaultCtx.
func contextPerSlot(cfg Config, info modelInfo) int {
	if cfg.CtxSize > 0 {
		return cfg.CtxSize
	}
	if info.TrainCtx > 0 {
		return min(info.TrainCtx, maxDefaultCtx)
	}
	return 2048
}

// loaded is a model ready to serve.
type loaded struct {
	model  *llm.Model
	engine *engine.Engine
	info   modelInfo
}

// loadModel inspects, loads and wraps the model in an engine.
func loadModel(cfg Config, log *slog.Logger) (loaded, error) {
	info, err := inspectModel(cfg.ModelPath)
	if err != nil {
		return loaded{}, err
	}
	ctxPerSlot := contextPerSlot(cfg, info)
	var gpus []llm.DeviceInfo
	if len(cfg.Device.CUDA) > 0 {
		gpus = llm.GPUs()
		log.Info("backend devices", "gpus", len(gpus), "devices", deviceNames(llm.Devices()))
	}
	opts, err := loadOptions(cfg, ctxPerSlot, gpus)
	if err != nil {
		return loaded{}, err
	}
	log.Info("loading model", "path", cfg.ModelPath, "architecture", info.Architecture,
		"ctx_per_slot", ctxPerSlot, "slots", cfg.Slots, "device", cfg.Device.String())
	model, err := llm.Load(cfg.ModelPath, opts)
	if err != nil {
		return loaded{}, err
	}
	eng := engine.New(model, engine.Config{
		Slots: cfg.Slots, CtxPerSlot: ctxPerSlot, BatchSize: cfg.BatchSize,
	}, log)
	return loaded{model: model, engine: eng, info: info}, nil
}

func deviceNames(devices []llm.DeviceInfo) []string {
	names := make([]string, len(devices))
	for i, d := range devices {
		names[i] = d.Name + " (" + d.Description + ")"
	}
	return names
}
