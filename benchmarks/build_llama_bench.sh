#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench`, `llama-batched-bench` and `llama-server` from the
# exact llama.cpp that llama-cpp-python 0.3.36 vendors, one of two ways:
#   portable  the engine's AVX2 baseline CPU flags (the Makefile exports them as
#             ENGINE_CPU_ARGS), statically linked: like for like with `--cpu-variant avx2`
#   native    default cmake, as users build it (GGML_NATIVE: -march=native on this CPU)
# so benchmarks/engine.py and benchmarks/peers.py compare against both.
# Idempotent; prints the llama-bench path (the other two sit beside it).
#   make bench, or: ENGINE_CPU_ARGS="..." benchmarks/build_llama_bench.sh [portable|native] [OUT_DIR]
set -euo pipefail
mode="${1:-portable}"
case "$mode" in
  portable)
    : "${ENGINE_CPU_ARGS:?run it through make (make bench), which sets the engine flags}"
    flags="$ENGINE_CPU_ARGS"
    ;;
  native) flags="" ;;
  *) echo "usage: $0 [portable|native] [OUT_DIR]" >&2; exit 2 ;;
esac
tag="$(printf '%s %s' "$mode" "$flags" | sha256sum | cut -c1-16)"
out="${2:-$HOME/.cache/warmloop/llama-bench-$mode-$tag}"
if [ -x "$out/llama-bench" ] && [ -x "$out/llama-batched-bench" ] && [ -x "$out/llama-server" ]; then
  echo "$out/llama-bench"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$work"
tar -xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
# shellcheck disable=SC2086  # flags is a list of options
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
  $flags >/dev/null 2>&1
cmake --build "$work/build" --target llama-bench llama-batched-bench llama-server -j "$(nproc)" >/dev/null
mkdir -p "$out"
cp "$work/build/bin/llama-bench" "$work/build/bin/llama-batched-bench" "$work/build/bin/llama-server" "$out/"
echo "$out/llama-bench"
