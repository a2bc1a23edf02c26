"""pytest setup of the art_fast tests: the environment (an inductor cache per version of the
ops' sources, the Triton interpreter on CPU), TF32 off, and a fixture that seeds every test and
restores the backend and deterministic mode after it. The helpers the tests share (backends,
tolerances, reference checks) are in tests/_util.py."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
import torch

# torch.compile's on-disk cache (inductor's FX graph cache) does not key its entries on the
# fake kernels of custom ops: a graph compiled against another version of an op's contract
# (e.g. another checkout, or this one before an edit to art_fast/ops or kernels/) is reused
# with the old output shapes ("mismatch in length of strides and shape", seen when two
# checkouts ran the suite at once). The tests use a cache of their own per version of those
# sources. A cache dir set by the caller is kept.
_ROOT = Path(__file__).resolve().parents[1]
_digest = hashlib.sha256()
for _src in sorted([*_ROOT.glob("art_fast/ops/*.py"), *_ROOT.glob("kernels/*.py"),
                    _ROOT / "art_fast" / "_contract.py"]):
    _digest.update(_src.read_bytes())
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"art_fast_inductor_{_digest.hexdigest()[:16]}"))

# Triton runs CPU tensors only under its interpreter, which must be on before the kernels are
# defined (they are, at `import art_fast`). Without CUDA the test process turns it on here, so
# that the cpu-triton cases of the op tests (tests/_util.py) run the Triton kernels on CPU in
# this same process. Side effects, all checked: `auto` never picks triton for CPU tensors, so
# the other tests are unchanged; `triton` is listed as usable (tests/test_backends.py expects
# that); subprocesses started by tests inherit the variable unless they drop it.
# ART_FAST_TEST_TRITON_INTERPRET=0 opts out (the CPU Triton tests then skip).
if not torch.cuda.is_available() and os.environ.get("ART_FAST_TEST_TRITON_INTERPRET", "1") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import art_fast  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed_and_restore():
    """Each test starts seeded, on the default backend, with deterministic mode off."""
    torch.manual_seed(0)
    yield
    art_fast.set_backend(None)
    torch.use_deterministic_algorithms(False)
