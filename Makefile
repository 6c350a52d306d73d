# The few commands a contributor needs. `make demo` and `make test` each set everything up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (a CPU build) so that setup does not pull several GB of CUDA packages;
# the library itself only asks for a range, so GPU users keep theirs.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-all lint format typecheck bench clean

$(BIN)/llmrl: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(BIN)/llmrl

setup: $(BIN)/llmrl

demo: setup
	$(BIN)/llmrl demo

# the README's test command, which CI runs: lint, type check, then the tests
test: lint typecheck
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check llmrl tests benchmarks
	$(BIN)/ruff format --check llmrl tests benchmarks

format: setup
	$(BIN)/ruff format llmrl tests benchmarks
	$(BIN)/ruff check --fix llmrl tests benchmarks

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/llmrl bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
