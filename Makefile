# Set-up and main entry points. Everything installs into .venv in the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.fairseq-srupp-installed
DATA ?=
DEMO_DIR ?= demo_out
WHEELHOUSE ?= wheelhouse

.PHONY: install test demo bench wheelhouse

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# torch first (the local CPU wheel), then numpy + cython, then fairseq compiled against them
# without build isolation, then this package with its test extra. The stamp makes reruns no-ops.
$(STAMP): setup.py | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PY) -c "import numpy, Cython" 2>/dev/null || $(PIP) install numpy cython
	$(PY) -c "import fairseq" 2>/dev/null || { \
	  if $(PY) -c "import sys; sys.exit(sys.version_info < (3, 11))"; then \
	    $(PIP) install --no-build-isolation "fairseq-fixed==0.12.3.1"; \
	  else \
	    $(PIP) install --no-build-isolation "fairseq>=0.12.2"; \
	  fi; }
	$(PIP) install --no-build-isolation -e ".[test,compile-check]"
	touch $(STAMP)

# Two workers (one per core); --dist loadfile keeps each file's module fixtures in one worker, and
# --no-loadscope-reorder keeps conftest's longest-files-first order (xdist would sort files by test count).
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) -m fairseq_srupp.demo --out $(DEMO_DIR) $(if $(DATA),--data $(DATA),)

bench: $(STAMP)
	$(PY) benchmarks/recurrence_cpu.py

# Wheels for an offline GPU machine (benchmarks/gpu/README.md). Here PY names the target's Python
# (make wheelhouse PY=3.12), so the venv is made by a sub-make that gets PY back; the venv's torch,
# numpy and cython let pip read fairseq's sdist metadata without downloading torch.
wheelhouse:
	$(MAKE) install PY=$(VENV)/bin/python
	$(VENV)/bin/python benchmarks/gpu/wheelhouse.py \
	  --python-version $(if $(filter 3.%,$(PY)),$(PY),3.12) --dest $(WHEELHOUSE)
