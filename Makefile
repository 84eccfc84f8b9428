# Ensemble developer tasks. Everything runs in one local virtualenv (.venv) with the
# dev extras installed; it is (re)built when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Lint only the source trees that exist (examples/ and bench/ may not yet).
LINT_PATHS := $(wildcard runtime actors tests examples bench)

.PHONY: demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	-$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/concert.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/throughput.py --sheets 1000 --shape independent
	$(BIN)/python bench/throughput.py --sheets 10000 --shape independent
	$(BIN)/python bench/throughput.py --sheets 2000 --shape chain
	$(BIN)/python bench/throughput.py --sheets 10000 --shape fanout
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/subprocess_fanout.py --sheets 200 --seconds 1 --concurrency 100
	$(BIN)/python bench/subprocess_fanout.py --sheets 1000 --seconds 1 --concurrency 500
	$(BIN)/python bench/process_floor.py --processes 1000 --seconds 1 --concurrency 500
	$(BIN)/python bench/crash_torture.py --sheets 300 --kills 20

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
