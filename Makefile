# Two commands matter: `make serve` (the canvas on the embedded model) and `make test`.
# Both create or refresh .venv idempotently; stamps keep the second run fast.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8188
# Where no NVIDIA GPU is present, a CPU build of torch is enough (and much smaller).
TORCH_CPU_SPEC ?= torch==2.13.0

.PHONY: serve test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(VENV)/.torch: | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch present"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	else $(PIP) install -q "$(TORCH_CPU_SPEC)" || $(PIP) install -q torch; fi
	@touch $@

$(VENV)/.runtime: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.testdeps: pyproject.toml $(VENV)/.runtime
	$(PIP) install -q -e ".[test,ray]"
	@touch $@

venv: $(VENV)/.testdeps

serve: $(VENV)/.runtime
	$(VENV)/bin/noodle serve --host $(HOST) --port $(PORT)

test: $(VENV)/.testdeps
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: browser tests will be skipped"
	$(VENV)/bin/ruff check graph_runtime nodes tests benchmarks tools
	$(PY) -m pytest -q

lint: $(VENV)/.testdeps
	$(VENV)/bin/ruff check graph_runtime nodes tests benchmarks tools

clean:
	rm -rf $(VENV) .pytest_cache
