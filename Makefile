# art_fast: the two commands of a fresh machine are `make demo` (the main job: train ART on the
# embedded synthetic set) and `make test`. Everything runs inside .venv with the pinned
# versions of constraints.txt.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.art_fast_installed
SRCS   := setup.py pyproject.toml requirements.txt constraints.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h)

.PHONY: install build test lint bench bench-ops bench-train demo gpu-check gpu-aot clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# The build requirements (torch among them), then the package with its dependencies and the dev
# extra (pyproject.toml) and its extension, built against the installed torch (no build
# isolation: an isolated build has no torch or fetches another one); every version pinned by
# constraints.txt, the tested set.
$(STAMP): $(VENV)/bin/python $(SRCS)
	$(PY) -m pip install -c constraints.txt -r requirements.txt
	$(PY) -m pip install --no-build-isolation -c constraints.txt -e ".[dev]"
	$(PY) -c "import art_fast, sys; b = art_fast.available_backends(); print('art_fast backends:', b); sys.exit(0 if 'cpu' in b else 1)"
	touch $(STAMP)

# Rebuild only the extension in place (after editing csrc/).
build: $(VENV)/bin/python
	$(PY) setup.py build_ext --inplace

lint: install
	$(VENV)/bin/ruff check art_fast kernels tests benchmarks setup.py

# The whole suite (CPU: references, C++ kernels, torch.library registration, compile);
# GPU cases skip without CUDA (run them with `pytest -m gpu` on a GPU machine).
# ART_FAST_REQUIRE_CUDA_BUILD=1: where torch has CUDA and nvcc exists, an extension built
# without its CUDA kernels is a failure (tests/test_cuda_build.py), not a silent CPU-only build.
test: install lint
	ART_FAST_REQUIRE_CUDA_BUILD=1 $(PY) -m pytest -q

# Is an op complete (docs/adding_an_op.md)? Its files, spec, backends, contract and doc page
# (tests/test_op_specs.py), its own tests and the registration / compile tests.
.PHONY: op-check
op-check: install
	@test -n "$(OP)" || { echo "usage: make op-check OP=<op name>"; exit 2; }
	$(PY) -m pytest -q tests/test_op_specs.py tests/test_library.py -k "$(OP)"
	$(PY) -m pytest -q tests/test_$(OP).py

# pytest-benchmark suite at small sizes (not part of `make test`).
bench: install
	$(PY) -m pytest benchmarks --benchmark-only -q

# The full op benchmark: JSON + Markdown under benchmarks/results/<device>/.
bench-ops: install
	$(PY) benchmarks/bench_ops.py

# ART training step per backend vs the bare backbone (CPU: tiny and ViT-B/16).
bench-train: install
	$(PY) benchmarks/bench_train.py

# The main job: generate the binding set (once; deterministic for its seed: which marked actor
# did which limb motion first), train ART with the tiny open_clip tower on the CPU
# (configs/binding_tiny.yaml), evaluate on the test split (top-1, mean-class, region_hit), draw
# the tracklets and the target box of one test clip, print the result. Outputs: runs/demo/
# (config.yaml, metrics.jsonl, train.log, last.pt, best.pt, eval/ with confusion matrix and
# predictions, tracklets.png). DEMO_SET overrides where the set is written.
# `make demo-displacement` is the earlier, easier demo (the displacement set, which a fixed
# rule solves: docs/demo.md, "The synthetic sets").
DEMO_SET ?= data/binding
DEMO_RUN := runs/demo
# The steps of a demo: $(1) the config, $(2) the set; into $(DEMO_RUN) (train, eval, viz, then
# the `demo:` line with region_hit where the set has boxes).
define demo_steps
rm -rf $(DEMO_RUN)
$(PY) -m art_fast.cli train $(1) --set data.root=$(2) --set output_dir=$(DEMO_RUN)
$(PY) -m art_fast.cli eval $(DEMO_RUN)/best.pt --set data.root=$(2)
$(PY) -m art_fast.cli viz $(DEMO_RUN)/best.pt --index 0 --out $(DEMO_RUN)/tracklets.png --set data.root=$(2)
@$(PY) -c "import json; m = json.load(open('$(DEMO_RUN)/eval/eval_metrics.json')); rh = m.get('region_hit'); print(f\"demo: top1={m['top1']:.4f} mean_class={m['mean_class']:.4f} region_hit={'n/a' if rh is None else format(rh, '.4f')}\" + ('' if rh is None else f\" (chance {m['region_hit_chance']:.4f})\"))"
endef

$(DEMO_SET)/Diving48_vocab.json: | $(STAMP)
	$(PY) -m art_fast.cli synth --kind binding --out $(DEMO_SET)

.PHONY: demo-displacement
demo: install $(DEMO_SET)/Diving48_vocab.json
	$(call demo_steps,configs/binding_tiny.yaml,$(DEMO_SET))

DISP_SET ?= data/synthetic

$(DISP_SET)/Diving48_vocab.json: | $(STAMP)
	$(PY) -m art_fast.cli synth --kind displacement --out $(DISP_SET)

demo-displacement: DEMO_RUN := runs/demo_displacement
demo-displacement: install $(DISP_SET)/Diving48_vocab.json
	$(call demo_steps,configs/synthetic_tiny.yaml,$(DISP_SET))

# Every Triton kernel compiled ahead of time for sm_80 and sm_90 (no GPU needed): the full
# sweep (all dtypes, regime limits, other D)
# -> benchmarks/results/aot/triton_aot_full_triton<version>.{md,json}.
# `make test` runs the `ci` subset through tests/test_triton_aot.py.
gpu-aot: install
	env -u TRITON_INTERPRET $(PY) benchmarks/triton_aot.py --set full

# ptxas resources (registers, spills, shared memory, stack, 64-bit divisions) of every CUDA
# kernel for sm_80 and sm_90 with the build's nvcc flags, no GPU needed ->
# benchmarks/results/aot/cuda_ptxas.{md,json}; fails on a compile error or a spill.
# `make test` runs the same check (tests/test_cuda_ptxas.py).
.PHONY: cuda-ptxas
cuda-ptxas: $(VENV)/bin/python
	$(PY) benchmarks/cuda_ptxas.py --out benchmarks/results/aot --arch 80,90

# On a GPU machine (no network needed): install the package from this checkout into the
# interpreter, build for the visible GPU, GPU tests in groups, sanitizers, op and train
# benchmarks, in a 540 s budget -> $(OUT)/summary.md and $(OUT)/results.tar.gz
# (docs/gpu_check.md). The interpreter: .venv/bin/python when it exists, else $(PYTHON).
# gpu-check-dry proves the script on a CPU machine (GPU steps print their commands: DRYRUN)
OUT ?= benchmarks/results/gpu-check
GPU_CHECK_PY = $(if $(wildcard $(PY)),$(abspath $(PY)),$(PYTHON))
gpu-check:
	PYTHON=$(GPU_CHECK_PY) bash benchmarks/gpu_check.sh $(OUT)

# (GPU_CHECK_SKIP_BUILD=0 to rebuild the extension too; output in build/, git-ignored).
DRY_OUT ?= build/gpu-check-dry
.PHONY: gpu-check-dry
gpu-check-dry:
	PYTHON=$(GPU_CHECK_PY) GPU_CHECK_SKIP_BUILD=$(or $(GPU_CHECK_SKIP_BUILD),1) bash benchmarks/gpu_check.sh --dry-run $(DRY_OUT)

clean:
	rm -rf build *.egg-info art_fast/_C*.so .pytest_cache
