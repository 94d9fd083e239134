// Package llm is the worker's one door to llama.cpp. It wraps the cgo
// bindings of github.com/ollama/ollama/llama (pinned at v0.6.5, the last
// release whose module archive carries llama.cpp's headers) behind a small
// API: load a model on a device, tokenize, decode a batch of sequences,
// sample. No other package of the worker imports cgo.
//
// A Model and its Context are not safe for concurrent use: one goroutine
// (the engine's loop) owns them. Tokenize and TokenPiece only read the
// vocabulary and may be called from any goroutine.
package llm

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

// llama.cpp's chat template renderer (struct llama_chat_message has this
// same layout), also linked in but not exposed by the ollama package.
typedef struct rbee_chat_message { const char * role; const char * content; } rbee_chat_message;
int32_t llama_chat_apply_template(const char * tmpl, const rbee_chat_message * chat,
	size_t n_msg, bool add_ass, char * buf, int32_t length);

// Prototypes of ggml's device registry, which the ollama package links in
// but does not expose to Go. Declared here, resolved at link time.
typedef struct ggml_backend_device * rbee_dev_t;
size_t ggml_backend_dev_count(void);
rbee_dev_t ggml_backend_dev_get(size_t index);
const char * ggml_backend_dev_name(rbee_dev_t device);
const char * ggml_backend_dev_description(rbee_dev_t device);
void ggml_backend_dev_memory(rbee_dev_t device, size_t * free, size_t * total);
int ggml_backend_dev_type(rbee_dev_t device);
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/ollama/ollama/llama"
)

// ErrKVCacheFull means a decode found no room in the KV cache.
var ErrKVCacheFull = llama.ErrKvCacheFull

var initBackend = sync.OnceFunc(func() {
	prepareBackendSearch()
	llama.BackendInit()
})

// BackendDirEnv names a directory whose lib/ollama holds GPU backends
// (libggml-cuda.so), for when they are not beside the worker binary.
const BackendDirEnv = "RBEE_BACKEND_DIR"

// prepareBackendSearch tells ggml where `make cuda` puts the CUDA backend.
// ggml loads GPU backends from the LD_LIBRARY_PATH entries that contain
// "lib/ollama" (the ollama layout these bindings come from), so the
// worker's own lib/ollama directories go first. It also numbers GPUs in
// PCI order, as NVML does, so that cuda:N names the same card everywhere.
func prepareBackendSearch() {
	var dirs []string
	if dir := os.Getenv(BackendDirEnv); dir != "" {
		dirs = append(dirs, filepath.Join(dir, "lib", "ollama"))
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		dirs = append(dirs, filepath.Join(dir, "lib", "ollama"), filepath.Join(dir, "..", "lib", "ollama"))
	}
	if old := os.Getenv("LD_LIBRARY_PATH"); old != "" {
		dirs = append(dirs, old)
	}
	os.Setenv("LD_LIBRARY_PATH", strings.Join(dirs, string(os.PathListSeparator)))
	if os.Getenv("CUDA_DEVICE_ORDER") == "" {
		os.Setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
	}
}

// DeviceInfo describes one compute device that ggml can use.
type DeviceInfo struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	Description string `json:"description"`
	GPU         bool   `json:"gpu"`
	FreeBytes   uint64 `json:"free_bytes"`
	TotalBytes  uint64 `json:"total_bytes"`
}

// ggml_backend_dev_type values (enum ggml_backend_dev_type).
const (
	devTypeCPU = 0
	devTypeGPU = 1
)

// Devices lists the devices of every ggml backend loaded in this process.
// GPU backends (CUDA) are shared libraries found at run time, so without
// them the list holds only the CPU.
func Devices() []DeviceInfo {
	initBackend()
	n := int(C.ggml_backend_dev_count())
	devices := make([]DeviceInfo, 0, n)
	for i := range n {
		dev := C.ggml_backend_dev_get(C.size_t(i))
		var free, total C.size_t
		C.ggml_backend_dev_memory(dev, &free, &total)
		devices = append(devices, DeviceInfo{
			Index:       i,
			Name:        C.GoString(C.ggml_backend_dev_name(dev)),
			Description: C.GoString(C.ggml_backend_dev_description(dev)),
			GPU:         C.ggml_backend_dev_type(dev) == devTypeGPU,
			FreeBytes:   uint64(free),
			TotalBytes:  uint64(total),
		})
	}
	return devices
}

// GPUs lists only the GPU devices, in ggml's order (CUDA device order).
func GPUs() []DeviceInfo {
	var gpus []DeviceInfo
	for _, d := range Devices() {
		if d.GPU {
			gpus = append(gpus, d)
		}
	}
	return gpus
}

// LoadOptions says where and how to load a model.
type LoadOptions struct {
	// GPULayers is how many layers to offload; 0 keeps everything on the CPU.
	GPULayers int
	// MainGPU is the index among GPUs of the device that holds the
	// non-split parts; TensorSplit spreads layers over several GPUs.
	MainGPU     int
	TensorSplit []float32
	// CtxSize is the total KV cache size in tokens, shared by all sequences.
	CtxSize int
	// BatchSize is the most tokens one Decode may carry.
	BatchSize int
	// Sequences is how many sequences (slots) decode together.
	Sequences int
	Threads   int
	Progress  func(float32)
}

// Model is a loaded model with its context (KV cache) and one reusable batch.
type Model struct {
	model *llama.Model
	ctx   *llama.Context
	batch *llama.Batch
	vocab int
}

// Load loads a GGUF file. The caller validates the file first (the hive and
// the worker both parse its header): llama.cpp may abort the process on a
// file that is not GGUF at all.
func Load(path string, opts LoadOptions) (*Model, error) {
	initBackend()
	model, err := llama.LoadModelFromFile(path, llama.ModelParams{
		NumGpuLayers: opts.GPULayers,
		MainGpu:      opts.MainGPU,
		TensorSplit:  opts.TensorSplit,
		UseMmap:      true,
		Progress:     opts.Progress,
	})
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	params := llama.NewContextParams(opts.CtxSize, opts.BatchSize, opts.Sequences,
		opts.Threads, false, "")
	ctx, err := llama.NewContextWithModel(model, params)
	if err != nil {
		llama.FreeModel(model)
		return nil, fmt.Errorf("create context (ctx %d, slots %d): %w",
			opts.CtxSize, opts.Sequences, err)
	}
	batch, err := llama.NewBatch(opts.BatchSize, opts.Sequences, 0)
	if err != nil {
		llama.FreeModel(model)
		return nil, fmt.Errorf("allocate batch: %w", err)
	}
	return &Model{model: model, ctx: ctx, batch: batch, vocab: model.NumVocab()}, nil
}

// Close frees the batch and the model. The context is freed with the model
// by llama.cpp's own bookkeeping when the process exits; v0.6.5's bindings
// expose no way to free it earlier.
func (m *Model) Close() {
	m.batch.Free()
	llama.FreeModel(m.model)
}

// Tokenize turns text into tokens, adding the model's BOS token when the
// model wants one. With special, markers such as <|im_start|> in the text
// become their control tokens (for prompts rendered from a chat template);
// without it, user text can never forge them.
func (m *Model) Tokenize(text string, special bool) ([]int, error) {
	if text == "" {
		return nil, errors.New("empty text")
	}
	return m.model.Tokenize(text, true, special)
}

// TokenEmbedding is the last layer's output for the token at batch index
// idx of the last Decode (nil when the context keeps no embeddings).
func (m *Model) TokenEmbedding(idx int) []float32 { return m.ctx.GetEmbeddingsIth(idx) }

// PooledEmbedding is sequence seq's pooled embedding, for models whose
// GGUF sets a pooling type (embedding models); nil for the others.
func (m *Model) PooledEmbedding(seq int) []float32 { return m.ctx.GetEmbeddingsSeq(seq) }

// Message is one chat turn to render through a template.
type Message struct {
	Role    string
	Content string
}

// ErrUnknownTemplate means llama.cpp does not recognise the chat template
// (it matches known families rather than running Jinja).
var ErrUnknownTemplate = errors.New("chat template not supported by llama.cpp")

// ApplyChatTemplate renders messages with a chat template (the GGUF's
// tokenizer.chat_template), ending with the cue for the assistant's turn.
func ApplyChatTemplate(template string, messages []Message) (string, error) {
	if template == "" {
		return "", ErrUnknownTemplate
	}
	if len(messages) == 0 {
		return "", errors.New("no messages to render")
	}
	ctmpl := C.CString(template)
	defer C.free(unsafe.Pointer(ctmpl))
	chat := (*C.rbee_chat_message)(C.malloc(C.size_t(len(messages)) * C.sizeof_rbee_chat_message))
	defer C.free(unsafe.Pointer(chat))
	entries := unsafe.Slice(chat, len(messages))
	for i, msg := range messages {
		entries[i].role = C.CString(msg.Role)
		entries[i].content = C.CString(msg.Content)
	}
	defer func() {
		for _, e := range entries {
			C.free(unsafe.Pointer(e.role))
			C.free(unsafe.Pointer(e.content))
		}
	}()

	n := C.llama_chat_apply_template(ctmpl, chat, C.size_t(len(messages)), true, nil, 0)
	if n < 0 {
		return "", ErrUnknownTemplate
	}
	buf := (*C.char)(C.malloc(C.size_t(n) + 1))
	defer C.free(unsafe.Pointer(buf))
	C.llama_chat_apply_template(ctmpl, chat, C.size_t(len(messages)), true, buf, n+1)
	return C.GoStringN(buf, n), nil
}

// TokenPiece is the text of one token.
func (m *Model) TokenPiece(token int) string { return m.model.TokenToPiece(token) }

// IsEndOfGeneration reports whether token ends a sequence (EOS, EOT).
func (m *Model) IsEndOfGeneration(token int) bool { return m.model.TokenIsEog(token) }

// BatchAdd appends one token of sequence seq at position pos to the pending
// batch and returns its index in the batch; wantLogits asks for the
// logits of this position, to sample from.
func (m *Model) BatchAdd(token, pos, seq int, wantLogits bool) int {
	idx := m.batch.NumTokens()
	m.batch.Add(token, nil, pos, wantLogits, seq)
	return idx
}

// BatchLen is the number of tokens in the pending batch.
func (m *Model) BatchLen() int { return m.batch.NumTokens() }

// Decode runs the pending batch through the model and empties it.
func (m *Model) Decode() error {
	defer m.batch.Clear()
	if err := m.ctx.Decode(m.batch); err != nil {
		return fmt.Errorf("decode %d tokens: %w", m.batch.NumTokens(), err)
	}
	return nil
}

// ClearSequence drops everything sequence seq holds in the KV cache.
func (m *Model) ClearSequence(seq int) { m.ctx.KvCacheSeqRm(seq, 0, -1) }

// TruncateSequence keeps positions [0, keep) of sequence seq and drops the
// rest, so a new prompt sharing a prefix reuses the cached part.
func (m *Model) TruncateSequence(seq, keep int) bool { return m.ctx.KvCacheSeqRm(seq, keep, -1) }

// SamplingParams are the per-request sampling settings.
type SamplingParams struct {
	Temperature float32
	TopK        int
	TopP        float32
	Seed        uint32
}

// Sampler samples tokens for one sequence.
type Sampler struct {
	s *llama.SamplingContext
}

// NewSampler makes a sampler for one request.
func (m *Model) NewSampler(p SamplingParams) (*Sampler, error) {
	s, err := llama.NewSamplingContext(m.model, llama.SamplingParams{
		TopK:          p.TopK,
		TopP:          p.TopP,
		Temp:          p.Temperature,
		Seed:          p.Seed,
		RepeatLastN:   64,
		PenaltyRepeat: 1.0,
	})
	if err != nil {
		return nil, fmt.Errorf("create sampler: %w", err)
	}
	return &Sampler{s: s}, nil
}

// Sample picks the next token from the logits at batch index idx of the
// last Decode, and records it in the sampler's history.
func (s *Sampler) Sample(m *Model, idx int) int {
	token := s.s.Sample(m.ctx, idx)
	s.s.Accept(token, true)
	return token
}
