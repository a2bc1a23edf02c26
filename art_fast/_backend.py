"""Backend selection for the hot-path ops.

Backends (DESIGN §3):

========  ==========================================================  =================
name      implementation                                              tensors
========  ==========================================================  =================
torch     pure-PyTorch reference (``art_fast.reference``)             any device
cpu       C++ kernels of ``art_fast._C`` (``csrc/cpu``), OpenMP       CPU
cuda      CUDA C++ kernels of ``art_fast._C`` (``csrc/cuda``)         CUDA
triton    Triton kernels (``art_fast.kernels``)                       CUDA, or CPU under
                                                                      ``TRITON_INTERPRET=1``
auto      the best usable backend for the tensors' device (default)   any
========  ==========================================================  =================

Precedence, highest first: the ``backend=`` argument of a call, the innermost
``with use_backend(...)`` block, ``set_backend(...)``, the ``ART_FAST_BACKEND`` environment
variable (read at import), ``auto``. Only ``auto`` chooses; a backend asked for by name that is
not usable raises a RuntimeError that says why.

Usability is computed once at import into plain Python data, so that ``torch.compile`` traces
the selection without graph breaks.

``auto`` also self-checks a compiled backend the first time it would pick it for an (op, dtype,
device), and skips it for the rest of the process when it raises or disagrees with the reference
(one RuntimeWarning; ``art_fast._selftest``; ``ART_FAST_SELFCHECK=0`` turns this off). A backend
asked for by name is never checked or replaced.
"""

from __future__ import annotations

import contextlib
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import torch

from . import _ext, _selftest

BACKENDS = ("torch", "cpu", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)
OPS: tuple[str, ...] = tuple(sorted(
    m.name for m in pkgutil.iter_modules([str(Path(__file__).parent / "ops")])
    if not m.name.startswith("_")))
"""The ops: one per module of ``art_fast/ops`` (the same list as ``art_fast.ops.SPECS``, read
without importing them)."""

# On CUDA tensors `auto` tries these in order (first usable wins). It is meant to be the
# measured ranking per op, but neither GPU backend has run on a GPU yet: until
# benchmarks/gpu_check.sh has measured them, triton comes first because its kernels are the ones
# checked numerically (under TRITON_INTERPRET=1, the same kernel code); the CUDA kernels are
# compiled in CI but have never run. Re-rank from benchmarks/results/<gpu>/bench_ops.md.
_CUDA_PREFERENCE: dict[str, tuple[str, ...]] = {op: ("triton", "cuda", "torch") for op in OPS}



def _triton_status(op: str) -> tuple[bool, str]:
    # Checked first, so that a CPU-only process without the interpreter never imports triton.
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False, "Triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors"
    try:
        import importlib

        importlib.import_module(f"art_fast.kernels.{op}")  # defines the art_fast_triton ops
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("art_fast.kernels"):
            return False, f"no Triton kernel for {op} in this version of art_fast"
        return False, f"art_fast.kernels.{op} failed to import: {type(exc).__name__}: {exc}"
    except Exception as exc:  # triton missing or broken
        return False, f"art_fast.kernels.{op} failed to import: {type(exc).__name__}: {exc}"
    if not hasattr(torch.ops.art_fast_triton, f"{op}_fwd"):
        return False, f"art_fast.kernels.{op} defines no art_fast_triton::{op}_fwd"
    return True, ""


def _compute_status() -> dict[tuple[str, str], tuple[bool, str]]:
    status: dict[tuple[str, str], tuple[bool, str]] = {}
    for op in OPS:
        status[("torch", op)] = (True, "")
        # Per op and device: a stale or partial build disables only what it lacks.
        ext = _ext.op_status(op)
        status[("cpu", op)] = ext["cpu"]
        if ext["cuda"][0] and not torch.cuda.is_available():
            status[("cuda", op)] = (False, "no CUDA device is visible")
        else:
            status[("cuda", op)] = ext["cuda"]
        status[("triton", op)] = _triton_status(op)
    return status


_STATUS: dict[tuple[str, str], tuple[bool, str]] = {}


def compute_status() -> None:
    """Compute every (backend, op) status, once, when every op has declared its contract (called
    at the end of ``art_fast.ops``; the Triton modules are imported here, which registers their
    ops' contracts), and warn once about an incomplete extension build."""
    _STATUS.update(_compute_status())
    _ext.warn_incomplete()


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{what} must be one of {CHOICES}, got {name!r}")
    return name


_env = os.environ.get("ART_FAST_BACKEND", "").strip().lower()
_DEFAULT: list[str] = [_check_name(_env, "ART_FAST_BACKEND") if _env else "auto"]
_SCOPED: list[str] = []


def set_backend(name: str | None) -> None:
    """Set the process-wide backend (one of ``torch, cpu, triton, cuda, auto``).

    ``None`` restores the default (``ART_FAST_BACKEND`` at import, else ``auto``). The name is
    checked here; whether the backend is usable is checked per call, for the call's tensors.
    """
    if name is None:
        _DEFAULT[0] = _check_name(_env, "ART_FAST_BACKEND") if _env else "auto"
    else:
        _DEFAULT[0] = _check_name(name.lower() if isinstance(name, str) else name, "backend")


def get_backend() -> str:
    """The backend name in force for calls without ``backend=`` (may be ``auto``)."""
    return _SCOPED[-1] if _SCOPED else _DEFAULT[0]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` for every op call without ``backend=`` inside the ``with`` block."""
    _SCOPED.append(_check_name(name.lower() if isinstance(name, str) else name, "backend"))
    try:
        yield
    finally:
        _SCOPED.pop()


def backend_status() -> dict[str, dict[str, str]]:
    """Per backend and op: ``"usable"`` or the reason it is not (for ``art-fast info``)."""
    return {
        b: {op: ("usable" if _STATUS[(b, op)][0] else _STATUS[(b, op)][1]) for op in OPS}
        for b in BACKENDS
    }


def available_backends(op: str | None = None) -> list[str]:
    """Backends that are built and usable here (for ``op``, or for every op when None)."""
    ops = OPS if op is None else (op,)
    return [b for b in BACKENDS if all(_STATUS[(b, o)][0] for o in ops)]


def resolve(
    op: str, requested: str | None, device: torch.device, dtype: torch.dtype | None = None
) -> str:
    """The concrete backend that runs ``op`` on tensors of ``device`` (and ``dtype``).

    ``auto`` takes the first candidate (CUDA: ``_CUDA_PREFERENCE``; CPU: cpu, torch) that is
    usable and passes its self-check for (op, dtype, device) (``art_fast._selftest``; all
    float dtypes must pass when ``dtype`` is None). Raises RuntimeError when a backend asked
    for by name cannot run here.
    """
    name = get_backend() if requested is None else _check_name(requested, "backend")
    dev = device.type
    if name == "auto":
        if dev == "cuda":
            candidates = _CUDA_PREFERENCE[op]
        elif dev == "cpu":
            candidates = ("cpu", "torch")
        else:
            candidates = ("torch",)
        for cand in candidates:
            if cand == "torch":
                return "torch"
            if _STATUS[(cand, op)][0] and _selftest.usable(op, cand, device, dtype):
                return cand
        return "torch"
    ok, reason = _STATUS[(name, op)]
    if not ok:
        raise RuntimeError(
            f"art_fast.{op}: backend {name!r} is not available: {reason}. "
            f"Usable here: {available_backends(op)}; use backend='auto' to choose automatically."
        )
    if name == "cpu" and dev != "cpu":
        raise RuntimeError(
            f"art_fast.{op}: backend 'cpu' needs CPU tensors, got tensors on {device}"
        )
    if name == "cuda" and dev != "cuda":
        raise RuntimeError(
            f"art_fast.{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}"
        )
    if name == "triton" and dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"art_fast.{op}: backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1"
        )
    return name
