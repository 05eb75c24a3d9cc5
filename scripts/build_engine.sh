#!/usr/bin/env bash
# Build (once per flag set) and print the path of the llama-cpp-python wheel that
# warmloop runs on. The Makefile owns the flags and passes them in CMAKE_ARGS.
#   CMAKE_ARGS="..." scripts/build_engine.sh PYTHON VERSION WHEELHOUSE
#
# The wheel lives in WHEELHOUSE, a directory named after a hash of VERSION and
# CMAKE_ARGS, with the flags written beside it. pip's own wheel cache is bypassed
# (--no-cache-dir): it keys wheels by the sdist only, so it would hand back a wheel
# built with other flags (e.g. GGML_NATIVE on a machine whose CPU has AMX), and that
# wheel dies with SIGILL on a CPU or OS that lacks those instructions.
set -euo pipefail
python="$1"
version="$2"
wheelhouse="$3"
: "${CMAKE_ARGS:?CMAKE_ARGS must be set (the Makefile sets it)}"

existing="$(ls "$wheelhouse"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$existing" ] && [ "$(cat "$wheelhouse/CMAKE_ARGS" 2>/dev/null)" = "$CMAKE_ARGS" ]; then
  echo "$existing"
  exit 0
fi

mkdir -p "$(dirname "$wheelhouse")"
tmp="$(mktemp -d "$(dirname "$wheelhouse")/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "building llama-cpp-python $version with CMAKE_ARGS=$CMAKE_ARGS (about 6-9 minutes on 2 cores)" >&2
CMAKE_ARGS="$CMAKE_ARGS" FORCE_CMAKE=1 "$python" -m pip wheel --quiet --no-deps --no-cache-dir \
  --no-binary llama-cpp-python "llama-cpp-python==$version" -w "$tmp" >&2
printf '%s' "$CMAKE_ARGS" >"$tmp/CMAKE_ARGS"
rm -rf "$wheelhouse"
mv "$tmp" "$wheelhouse"
trap - EXIT
ls "$wheelhouse"/llama_cpp_python-"$version"-*.whl | head -n1
