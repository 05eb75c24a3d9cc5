#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` and `llama-batched-bench` from the exact llama.cpp
# that llama-cpp-python 0.3.36 vendors, so benchmarks/engine.py can compare warmloop
# with them. Idempotent; prints the llama-bench path (llama-batched-bench sits beside it).
#   benchmarks/build_llama_bench.sh [OUT_DIR]   (default ~/.cache/warmloop/llama-bench)
set -euo pipefail
out="${1:-$HOME/.cache/warmloop/llama-bench}"
if [ -x "$out/llama-bench" ] && [ -x "$out/llama-batched-bench" ]; then
  echo "$out/llama-bench"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$work"
tar -xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --target llama-bench llama-batched-bench -j "$(nproc)" >/dev/null
mkdir -p "$out"
cp "$work/build/bin/llama-bench" "$work/build/bin/llama-batched-bench" "$out/"
echo "$out/llama-bench"
