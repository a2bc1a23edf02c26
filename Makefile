# art_fast: the two commands of a fresh machine are `make train-demo` (the main job; arrives
# with the trainer) and `make test`. Everything runs inside .venv with the pinned versions of
# requirements.txt.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.art_fast_installed
SRCS   := setup.py requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: install build test lint bench bench-ops clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Pinned dependencies, then the package with its extension, built against the installed torch
# (no build isolation: an isolated build has no torch or fetches another one).
$(STAMP): $(VENV)/bin/python $(SRCS)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-build-isolation -e .
	$(PY) -c "import art_fast, sys; b = art_fast.available_backends(); print('art_fast backends:', b); sys.exit(0 if 'cpu' in b else 1)"
	touch $(STAMP)

# Rebuild only the extension in place (after editing csrc/).
build: $(VENV)/bin/python
	$(PY) setup.py build_ext --inplace

lint: install
	$(VENV)/bin/ruff check art_fast kernels tests benchmarks setup.py

# The whole suite (CPU: references, C++ kernels, torch.library registration, compile);
# GPU cases skip without CUDA (run them with `pytest -m gpu` on a GPU machine).
test: install lint
	$(PY) -m pytest -q

# pytest-benchmark suite at small sizes (not part of `make test`).
bench: install
	$(PY) -m pytest benchmarks --benchmark-only -q

# The full op benchmark: JSON + Markdown under benchmarks/results/<device>/.
bench-ops: install
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build *.egg-info art_fast/_C*.so .pytest_cache
