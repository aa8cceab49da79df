# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if needed, install torch 2.13.0 (CPU wheel) + sentune, train the offline demo
#   make test   the same set-up with the test extras, then make lint (ruff, import contracts, mypy) and the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-precisions install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/sentune train --preset demo

test: lint
	$(BIN)/python -m pytest -q

# The training tests with the CPU's bf16 detection forced on, then off: the suite must not depend on the host.
PRECISION_TESTS ?= tests/test_train.py tests/test_precision.py tests/test_cli.py
test-precisions: install-test
	SENTUNE_CPU_BF16=1 $(BIN)/python -m pytest -q $(PRECISION_TESTS)
	SENTUNE_CPU_BF16=0 $(BIN)/python -m pytest -q $(PRECISION_TESTS)

# Style, the import contracts ([tool.importlinter] in pyproject.toml: the layers) and the type checker (mypy).
lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
