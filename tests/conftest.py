"""Shared fixtures and numerical checks for the art_fast tests.

Tolerances (DESIGN §8): a fast path in float32 is compared with the float64 reference at
rtol 1e-5 (TF32 off); in bfloat16/float16 its error, measured against float64, must be at most
2x the error of the eager PyTorch reference run in the same dtype (plus one rounding of the
output dtype at the tensor's scale, so that an exactly-representable eager result does not
demand zero error)."""

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
# that tests/test_triton_*.py run the Triton kernels on CPU in this same process. Side effects,
# all checked: `auto` never picks triton for CPU tensors, so the other tests are unchanged;
# `triton` is listed as usable (tests/test_backends.py expects that); subprocesses started by
# tests inherit the variable unless they drop it. ART_FAST_TEST_TRITON_INTERPRET=0 opts out
# (the CPU Triton tests then skip).
if not torch.cuda.is_available() and os.environ.get("ART_FAST_TEST_TRITON_INTERPRET", "1") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import art_fast  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

HAS_CUDA = torch.cuda.is_available()


def _fast_cases() -> list:
    """(device, backend) pairs of the fast paths; the GPU ones skip without CUDA."""
    gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
    cases = [pytest.param("cpu", "cpu", id="cpu-cpu")]
    cases += [pytest.param("cuda", b, id=f"cuda-{b}", marks=gpu) for b in ("cuda", "triton")]
    return cases


FAST_CASES = _fast_cases()

# The Triton tests (tests/test_triton_*.py): CPU tensors under the interpreter (tiny grids), and
# the same tests on CUDA (marked gpu, skipped without CUDA).
TRITON_CASES = [
    pytest.param("cpu", id="interpret"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]),
]


def require_triton(op: str, device: str) -> None:
    """Skip the CPU case when the interpreter is off; fail when Triton should run but cannot
    (a broken triton install must not turn into silent skips)."""
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (see tests/conftest.py)")
    if "triton" not in art_fast.available_backends(op):
        reason = art_fast.backend_status()["triton"][op]
        pytest.fail(f"the triton backend should run here: {reason}")


def require_backend(op: str, backend: str) -> None:
    """Skip (with the reason) when ``backend`` is not built/usable here; CPU CI must build
    the 'cpu' backend, so its absence there is a failure, not a skip."""
    if backend in art_fast.available_backends(op):
        return
    status = art_fast.backend_status()[backend][op]
    if backend == "cpu" and os.environ.get("ART_FAST_REQUIRE_EXT", "1") == "1":
        pytest.fail(f"the 'cpu' backend must be built for the tests: {status}")
    pytest.skip(f"backend {backend!r} unavailable for {op}: {status}")


def assert_close_fp(actual: torch.Tensor, truth: torch.Tensor, eager: torch.Tensor | None = None,
                    what: str = "", eager_rule: bool = False) -> None:
    """Compare a fast-path result with the float64 truth (see the module docstring).

    ``eager`` is the reference computed in the dtype of ``actual``; it is required for
    bfloat16/float16, and for float32 when ``eager_rule`` (ill-conditioned inputs such as
    logits of magnitude 1e4, where float32 itself cannot reach rtol 1e-5: the kernel must
    then be within 2x of what eager PyTorch achieves in float32).
    """
    assert actual.shape == truth.shape, f"{what}: shape {actual.shape} != {truth.shape}"
    a, t = actual.detach().double().cpu(), truth.detach().double().cpu()
    nan_a, nan_t = torch.isnan(a), torch.isnan(t)
    assert torch.equal(nan_a, nan_t), f"{what}: NaN pattern differs"
    a, t = a.masked_fill(nan_a, 0), t.masked_fill(nan_t, 0)
    scale = max(float(t.abs().max()), 1e-30)
    if actual.dtype == torch.float64:
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10 * scale, msg=what or None)
    elif actual.dtype == torch.float32 and not eager_rule:
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-5 * scale, msg=what or None)
    else:
        assert eager is not None, "a low-precision comparison needs the eager result"
        e = eager.detach().double().cpu().masked_fill(nan_t, 0)
        err = float((a - t).abs().max())
        eager_err = float((e - t).abs().max())
        floor = torch.finfo(actual.dtype).eps * scale
        assert err <= 2 * eager_err + floor, (
            f"{what}: error {err:.3e} > 2 x eager {actual.dtype} error {eager_err:.3e} "
            f"+ {floor:.3e}"
        )


@pytest.fixture(autouse=True)
def _seed_and_restore():
    """Each test starts seeded, on the default backend, with deterministic mode off."""
    torch.manual_seed(0)
    yield
    art_fast.set_backend(None)
    torch.use_deterministic_algorithms(False)
