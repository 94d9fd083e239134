#!/usr/bin/env bash
# Builds llama.cpp's CUDA backend (libggml-cuda.so and the libggml-base.so
# it links) from the very sources the worker compiles through cgo — the
# pinned github.com/ollama/ollama v0.6.5 module — and installs them in
# bin/lib/ollama/, where llm-worker-rbee looks for GPU backends at start.
#
# Prerequisites on the GPU node: the CUDA toolkit (nvcc, 11.8 or newer),
# cmake 3.21 or newer, g++ and make, and Go for the module sources.
# Settings: CUDA_ARCHITECTURES (default "native": the GPUs of this node;
# e.g. "80;86;89;90" for a binary meant for several), RBEE_CUDA_BUILD_DIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${RBEE_CUDA_BUILD_DIR:-$root/build/cuda}
archs=${CUDA_ARCHITECTURES:-native}
dest="$root/bin/lib/ollama"

die() { echo "build-cuda: $*" >&2; exit 1; }

command -v cmake >/dev/null || die "cmake not found: install it (apt-get install cmake)"
if ! command -v nvcc >/dev/null; then
	[ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found: install the CUDA toolkit, or put its bin/ on PATH"
	export PATH="/usr/local/cuda/bin:$PATH"
fi

src=$(cd "$root/cmd/llm-worker-rbee" && go mod download -json github.com/ollama/ollama | sed -n 's/.*"Dir": *"\([^"]*\)".*/\1/p')
[ -f "$src/CMakeLists.txt" ] || die "ollama module sources not found (go mod download failed?)"

echo "build-cuda: sources $src" >&2
echo "build-cuda: CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), architectures $archs" >&2
cmake -S "$src" -B "$build" \
	-DCMAKE_BUILD_TYPE=Release \
	-DCMAKE_CUDA_ARCHITECTURES="$archs" \
	-DGGML_CCACHE=OFF \
	-DCMAKE_BUILD_RPATH='$ORIGIN' \
	-DCMAKE_INSTALL_RPATH='$ORIGIN'
cmake --build "$build" --target ggml-cuda -j"$(nproc)"

mkdir -p "$dest"
found=0
while IFS= read -r lib; do
	cp -L "$lib" "$dest/$(basename "$lib")"
	found=1
done < <(find "$build" -name 'libggml-cuda.so' -o -name 'libggml-base.so')
[ "$found" = 1 ] || die "the build produced no libggml-cuda.so"
echo "build-cuda: installed into $dest:" >&2
ls -l "$dest" >&2
