"""Helpers shared by the Triton kernels of art_fast.

- :data:`INTERPRET`: whether ``TRITON_INTERPRET=1`` was set when the kernels were defined (the
  interpreter runs the kernels with numpy on CPU tensors; DESIGN §9).
- :func:`configs`: the autotune config list: one config under the interpreter (autotuning
  needs a GPU), a short Hopper list otherwise.
- :func:`acc_dtype` / :func:`tl_acc`: the accumulation dtype (float64 for float64 inputs,
  float32 for everything else), as a torch dtype and as the ``tl`` constexpr the kernels take.
- :func:`pow2`: block sizes (tl.arange and tl.dot need powers of two; tl.dot needs >= 16).

Only APIs present in both triton 3.6 and 3.8 are used by the kernels.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The library namespace of the Triton custom ops (the C++ ops live in ``art_fast``).
NAMESPACE = "art_fast_triton"


# ART_FAST_TRITON_CONFIGS=first (read at import): every autotuned kernel keeps only the first
# config of its list, so a GPU test run does not pay an autotuning sweep at every new shape
# (benchmarks/gpu_check.sh sets it for its test groups; the winner of a sweep is the only
# config whose numbers a test sees anyway). Default "all". benchmarks/triton_aot.py compiles
# every config whatever this says (it refuses to run with it set).
CONFIGS_MODE = os.environ.get("ART_FAST_TRITON_CONFIGS", "all").strip().lower() or "all"
if CONFIGS_MODE not in ("all", "first"):
    raise ValueError(
        f"ART_FAST_TRITON_CONFIGS must be 'all' or 'first', got {CONFIGS_MODE!r}"
    )


def configs(interpret: dict, hopper: list[tuple[dict, int, int]]) -> list[triton.Config]:
    """One config under the interpreter; ``hopper`` = [(meta, num_warps, num_stages)] on GPU
    (only the first with ``ART_FAST_TRITON_CONFIGS=first``)."""
    if INTERPRET:
        return [triton.Config(dict(interpret), num_warps=1, num_stages=1)]
    if CONFIGS_MODE == "first":
        hopper = hopper[:1]
    return [triton.Config(dict(m), num_warps=w, num_stages=s) for m, w, s in hopper]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2(n: int, lo: int = 16) -> int:
    """The next power of two >= max(n, lo)."""
    return max(lo, triton.next_power_of_2(max(1, int(n))))


# True only while benchmarks/triton_aot.py records the launches of the host functions: they
# then get "meta" tensors (shapes and dtypes, no data) and no kernel runs (the recorder
# intercepts every launch and compiles it ahead of time for a GPU target instead).
RECORDING = [False]


def check_device(op: str, *tensors: torch.Tensor) -> None:
    """Triton runs on CUDA tensors, or on CPU tensors under the interpreter."""
    dev = tensors[0].device
    if dev.type == "cuda":
        return
    if dev.type == "cpu" and INTERPRET:
        return
    if dev.type == "meta" and RECORDING[0]:
        return
    raise RuntimeError(
        f"art_fast.{op}: the Triton kernels need CUDA tensors (or CPU tensors with "
        f"TRITON_INTERPRET=1 set before art_fast is imported), got tensors on {dev}"
    )


def device_ctx(t: torch.Tensor):
    """Launch on the tensor's CUDA device (a no-op context on CPU)."""
    import contextlib

    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def split_float(x: float) -> tuple[float, float]:
    """``x`` as hi + lo, two float32-representable parts.

    Triton passes a Python float to a kernel as a float32 scalar; the float64 kernels rebuild
    the double as ``tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)`` (about 48 significant
    bits, far below float64 tolerances; float32 kernels get hi + lo = x in float32).
    """
    import numpy as np

    hi = float(np.float32(x))
    lo = float(np.float32(x - hi))
    return hi, lo


def tl_dot(dtype: torch.dtype):
    """The dtype of the tiles fed to tl.dot: the input dtype (16-bit tensor-core dots on GPU,
    float32 with input_precision="ieee", float64), except bfloat16 under the interpreter,
    whose tl.dot gives wrong bfloat16 products (seen with triton 3.8): float32 there (the
    kernels' other bfloat16 steps still run in bfloat16)."""
    if INTERPRET and dtype == torch.bfloat16:
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
            torch.float32: tl.float32, torch.float64: tl.float64}[dtype]
