# rbee: build, test, demo and benchmark the four binaries.
#
#   make build   all four binaries into bin/ (the worker compiles llama.cpp
#                through cgo: minutes the first time, cached afterwards)
#   make test    the whole suite: unit, fuzz (short) and end-to-end tests
#   make demo    queen + local hive + a worker on a small model + a streamed answer
#   make load    full-size load tests (200 streaming clients, many heartbeating workers)
#   make bench   benchmarks (worker tokens/s, spawn to first token, queen latency)
#   make cuda    llama.cpp's CUDA backend for the worker, on a GPU node
#                (needs the CUDA toolkit and cmake; see scripts/build-cuda.sh)
#   make clean

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/rbee-dev/rbee/internal/version.Version=$(VERSION)
WORKER   := ./cmd/llm-worker-rbee
FUZZTIME ?= 5s

# llama.cpp's CPU kernels are only as fast as the flags they are compiled
# with: cgo's default (-O2, no -march) leaves them scalar, about 5x slower.
# -march=native suits a worker built on the node that runs it; for a
# binary copied to other machines, pass e.g. CPU_FLAGS="-O3 -mavx2 -mfma -mf16c".
# Exported so that tests and benchmarks build the very same worker.
CPU_FLAGS ?= -O3 -march=native
export CGO_CFLAGS := $(CPU_FLAGS)
export CGO_CXXFLAGS := $(CPU_FLAGS)

.PHONY: all build keeper queen hive worker test test-deps test-unit test-worker fuzz demo load bench cuda clean

all: build

build: keeper queen hive worker

keeper:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/rbee ./cmd/rbee-keeper
queen:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/queen-rbee ./cmd/queen-rbee
# rbee-hive reads GPUs through NVML (go-nvml needs cgo) when a C compiler
# is here, else through nvidia-smi: HIVE_CGO=0 gives a static binary for
# hives with an older glibc. -O2: no -march=native in a copied binary.
HIVE_CGO ?= $(shell command -v $(or $(CC),cc) >/dev/null 2>&1 && echo 1 || echo 0)
hive:
	CGO_ENABLED=$(HIVE_CGO) CGO_CFLAGS=-O2 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/rbee-hive ./cmd/rbee-hive
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

# Every parser of outside input has a fuzz test; each runs briefly here
# (FUZZTIME each) and longer by hand: make fuzz FUZZTIME=10m.
# Entries are package:FuzzName.
FUZZ_TARGETS := \
	./internal/sshexec/:FuzzQuote \
	./internal/sshexec/:FuzzSSHConfig \
	./internal/queen/:FuzzHeartbeatBody \
	./internal/queen/:FuzzOpenAIRequest \
	./internal/queen/:FuzzHiveResult \
	./internal/hive/:FuzzGGUFHeader

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s $$pkg; \
	done

demo: build
	./scripts/demo.sh

# The full-size load tests of fault tolerance (the short forms run in
# make test): 200 streaming clients for 60 s against 2 workers,
# and 10,000 simulated workers heartbeating one queen for 60 s.
load:
	RBEE_LOAD_CLIENTS=200 RBEE_LOAD_DURATION=60s $(GO) test -count=1 -run '^TestStreamingLoad$$' -v ./e2e/
	RBEE_HBLOAD_WORKERS=10000 RBEE_HBLOAD_DURATION=60s $(GO) test -count=1 -run '^TestHeartbeatLoad$$' -v ./internal/queen/

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
