# Two set-up commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if needed and installs diffprop into it. torch is pinned first so that the
# resolver never swaps it: on a CPU-only machine with a local CPU wheel that wheel is used; on a
# Linux GPU machine PyPI's torch==2.13.0 is the CUDA build. Override with TORCH_SPEC=... if needed.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffprop-installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffprop demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf runs .pytest_cache
