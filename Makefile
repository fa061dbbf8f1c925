# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv once through `setup`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gansweep-installed

.PHONY: setup demo test bench

setup: $(STAMP)

# Rebuilt only when pyproject.toml changes: a complete .venv is never reinstalled.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/gansweep study lr-sensitivity --dataset mnist-5k --device cpu --epochs 1 --seeds 0

test: setup
	$(BIN)/python -m pytest -q

# Speed, measured side by side with a baseline; never asserted in the tests. ARGS go to the training benchmark,
# e.g. make bench ARGS='--device cpu --quick'.
bench: setup
	$(BIN)/python benchmarks/bench_scores.py
	$(BIN)/python benchmarks/bench_train.py $(ARGS)
