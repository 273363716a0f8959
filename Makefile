# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
XDC := $(VENV)/bin/xdc
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-faults lint bench bench-data bench-kmeans bench-train bench-extract \
	clean

setup: $(VENV)/.installed

# torch goes in first, from TORCH_SPEC, so that installing xdc (torch>=2.3) pulls in nothing bigger.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(XDC) demo --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Fault injection, every combination: runs killed at every point, each method × 0/2 workers ×
# RAM cache × a broken file (about half an hour on 2 cores; `make test` runs a covering subset).
test-faults: setup
	XDC_FAULTS=long $(PY) -m pytest tests/test_resume.py tests/test_checkpoint.py $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check xdc tests benchmarks
	$(PY) -m ruff format --check xdc tests benchmarks
	$(PY) -m mypy xdc

# One table of every benchmark beside its reference from the same run (benchmarks/table.py;
# `$(PY) benchmarks/table.py --quick` for a smoke run).
bench: setup
	$(PY) benchmarks/table.py

bench-data: setup
	$(PY) benchmarks/data.py

bench-kmeans: setup
	$(PY) benchmarks/kmeans.py

bench-train: setup
	$(PY) benchmarks/train.py

bench-extract: setup
	$(PY) benchmarks/extract.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
