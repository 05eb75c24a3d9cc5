#!/usr/bin/env bash
# Build (once per flag set) and print the path of the llama-cpp-python wheel that
# warmloop runs on. The Makefile owns the flags and passes them in the environment:
#   CMAKE_ARGS            the wheel's build: its own libggml-cpu.so is the AVX2 baseline
#   ENGINE_CPU_VARIANTS   "name:FEAT,FEAT ..." extra CPU backend modules, each the
#                         baseline plus those GGML_<FEAT> options, added to the same wheel
#                         as llama_cpp/lib/libggml-cpu-<name>.so
#   CMAKE_ARGS="..." ENGINE_CPU_VARIANTS="..." scripts/build_engine.sh PYTHON VERSION WHEELHOUSE
#
# The wheel lives in WHEELHOUSE, a directory named after a hash of all of it, with the
# flags written beside it. pip's own wheel cache is bypassed (--no-cache-dir): it keys
# wheels by the sdist only, so it would hand back a wheel built with other flags (e.g.
# GGML_NATIVE on a machine whose CPU has AMX), and that wheel dies with SIGILL on a CPU
# or OS that lacks those instructions. Which variant runs is chosen at start by
# warmloop/engine/cpu.py, never by ggml's CPUID-only scoring.
set -euo pipefail
python="$1"
version="$2"
wheelhouse="$3"
: "${CMAKE_ARGS:?CMAKE_ARGS must be set (the Makefile sets it)}"
: "${ENGINE_CPU_VARIANTS?ENGINE_CPU_VARIANTS must be set (the Makefile sets it; may be empty)}"
flags="$(printf '%s\nvariants: %s' "$CMAKE_ARGS" "$ENGINE_CPU_VARIANTS")"
here="$(cd "$(dirname "$0")" && pwd)"

existing="$(ls "$wheelhouse"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$existing" ] && [ "$(cat "$wheelhouse/FLAGS" 2>/dev/null)" = "$flags" ]; then
  echo "$existing"
  exit 0
fi

mkdir -p "$(dirname "$wheelhouse")"
tmp="$(mktemp -d "$(dirname "$wheelhouse")/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp/src"
sdist="$tmp/src/llama_cpp_python-$version.tar.gz"
echo "building llama-cpp-python $version with CMAKE_ARGS=$CMAKE_ARGS (about 6-9 minutes on 2 cores)" >&2
CMAKE_ARGS="$CMAKE_ARGS" FORCE_CMAKE=1 "$python" -m pip wheel --quiet --no-deps --no-cache-dir \
  "$sdist" -w "$tmp/wheel" >&2
wheel="$(ls "$tmp"/wheel/llama_cpp_python-"$version"-*.whl | head -n1)"

# One CPU backend module per variant, from the same llama.cpp sources: ggml-base and
# ggml-cpu only (about 25 s each). Every GGML_<FEAT> option is set explicitly, so the
# module holds exactly the baseline's instructions plus the variant's.
# The manifest (llama_cpp/lib/cpu-variants.txt, read by warmloop/engine/cpu.py) names
# each module and the GGML features it was built with: `name file FEATURE...`, the
# wheel's own libggml-cpu.so first as "avx2".
all_features="SSE42 AVX F16C FMA AVX2 BMI2 AVX_VNNI AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 AMX_TILE AMX_INT8 AMX_BF16"
baseline=""
for feature in $all_features; do
  case " $CMAKE_ARGS " in *" -DGGML_$feature=ON "*) baseline="$baseline $feature" ;; esac
done
case " $CMAKE_ARGS " in
  *" -DGGML_BACKEND_DL=ON "*) ;;
  *) echo "CMAKE_ARGS must build the CPU backend as a module (-DGGML_BACKEND_DL=ON)" >&2; exit 1 ;;
esac
mkdir -p "$tmp/lib"
echo "avx2 libggml-cpu.so$baseline" >"$tmp/lib/cpu-variants.txt"
tar -xzf "$sdist" -C "$tmp/src"
llama_src="$tmp/src/llama_cpp_python-$version/vendor/llama.cpp"
for entry in $ENGINE_CPU_VARIANTS; do
  name="${entry%%:*}"
  wanted=" $baseline ${entry#*:} "
  wanted="${wanted//,/ }"
  options=()
  for feature in $all_features; do
    case "$wanted" in
      *" $feature "*) options+=("-DGGML_$feature=ON") ;;
      *) options+=("-DGGML_$feature=OFF") ;;
    esac
  done
  echo "building the CPU backend variant $name (${options[*]})" >&2
  # shellcheck disable=SC2086  # CMAKE_ARGS is a list of options
  log="$tmp/cpu-$name.log"
  if ! { cmake -S "$llama_src" -B "$tmp/cpu-$name" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DCMAKE_SKIP_BUILD_RPATH=ON $CMAKE_ARGS "${options[@]}" &&
    cmake --build "$tmp/cpu-$name" --target ggml-cpu -j "$(nproc)"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    exit 1
  fi
  cp "$tmp/cpu-$name/bin/libggml-cpu.so" "$tmp/lib/libggml-cpu-$name.so"
  echo "$name libggml-cpu-$name.so $wanted" | tr -s ' ' >>"$tmp/lib/cpu-variants.txt"
done
"$python" "$here/add_to_wheel.py" "$wheel" llama_cpp/lib "$tmp"/lib/*

mkdir -p "$tmp/out"
mv "$wheel" "$tmp/out/"
printf '%s' "$flags" >"$tmp/out/FLAGS"
rm -rf "$wheelhouse"
mv "$tmp/out" "$wheelhouse"
ls "$wheelhouse"/llama_cpp_python-"$version"-*.whl | head -n1
