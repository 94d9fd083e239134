# rbee: build, test, demo and benchmark the four binaries.
#
#   make build   all four binaries into bin/ (the worker compiles llama.cpp
#                through cgo: minutes the first time, cached afterwards)
#   make test    the whole suite: unit, fuzz (short) and end-to-end tests
#   make demo    queen + local hive + a worker on a small model + a streamed answer
#   make bench   benchmarks (worker tokens/s, spawn to first token, queen latency)
#   make cuda    llama.cpp's CUDA backend for the worker, on a GPU node
#                (needs the CUDA toolkit and cmake; see scripts/build-cuda.sh)
#   make clean

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/rbee-dev/rbee/internal/version.Version=$(VERSION)
WORKER   := ./cmd/llm-worker-rbee
FUZZTIME ?= 10s

# llama.cpp's CPU kernels are only as fast as the flags they are compiled
# with: cgo's default (-O2, no -march) leaves them scalar, about 5x slower.
# -march=native suits a worker built on the node that runs it; for a
# binary copied to other machines, pass e.g. CPU_FLAGS="-O3 -mavx2 -mfma -mf16c".
# Exported so that tests and benchmarks build the very same worker.
CPU_FLAGS ?= -O3 -march=native
export CGO_CFLAGS := $(CPU_FLAGS)
export CGO_CXXFLAGS := $(CPU_FLAGS)

.PHONY: all build keeper queen hive worker test test-deps test-unit test-worker fuzz demo bench cuda clean

all: build

build: keeper queen hive worker

keeper:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/rbee ./cmd/rbee-keeper
queen:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/queen-rbee ./cmd/queen-rbee
hive:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/rbee-hive ./cmd/rbee-hive
worker:
	CGO_ENABLED=1 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/llm-worker-rbee $(WORKER)

# The root module holds keeper, queen, hive and the shared packages; the
# worker is its own module (cgo), so it is tested by its module path.
test: test-deps test-unit test-worker fuzz

# The SSH tests run a real OpenSSH sshd; install it when it is missing.
test-deps:
	./scripts/install-test-deps.sh

test-unit:
	CGO_ENABLED=0 $(GO) vet ./...
	$(GO) test -count=1 ./...

test-worker:
	$(GO) vet github.com/rbee-dev/rbee/cmd/llm-worker-rbee/...
	$(GO) test -count=1 github.com/rbee-dev/rbee/cmd/llm-worker-rbee/...

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzQuote -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./internal/sshexec/

demo: build
	./scripts/demo.sh

# Large* runs a generated ~110M-parameter model (generated once, cached).
bench: build
	$(GO) test -run='^$$' -bench='^Benchmark[^L]' -benchtime=20x github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine/
	$(GO) test -run='^$$' -bench='^BenchmarkLarge' -benchtime=3x github.com/rbee-dev/rbee/cmd/llm-worker-rbee/internal/engine/
	$(GO) test -run='^$$' -bench=. -benchtime=5x ./e2e/
	$(GO) test -run='^$$' -bench=QueenAddedLatency -benchtime=2000x ./internal/queen/
	$(GO) test -run='^$$' -bench='^BenchmarkHive(Call|ColdRun)' -benchtime=200x ./e2e/

cuda: worker
	./scripts/build-cuda.sh

clean:
	rm -rf $(BIN) build
