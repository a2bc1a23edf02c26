"""Loading of the compiled extension ``art_fast._C``.

The extension registers the ``art_fast::*`` operators (schemas from ``csrc/ops.cpp``, one kernel
per device from ``csrc/cpu`` and ``csrc/cuda``). When it is missing or fails to load, ``import
art_fast`` still works: the reference backend is used and a warning names the cause.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

EXT_ERROR: str | None = None
"""Why the extension is not usable, or None when it loaded."""

_OPS = (
    "cross_attention_fwd",
    "cross_attention_bwd",
    "topk_regions_fwd",
    "topk_regions_bwd",
    "info_nce_fwd",
    "info_nce_bwd",
    "info_nce_fused",
)


def _load() -> bool:
    global EXT_ERROR
    if os.environ.get("ART_FAST_DISABLE_EXT", "") == "1":
        EXT_ERROR = "disabled by ART_FAST_DISABLE_EXT=1"
        return False
    try:
        importlib.import_module("art_fast._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...
        EXT_ERROR = f"{type(exc).__name__}: {exc}"
        return False
    missing = [name for name in _OPS if not hasattr(torch.ops.art_fast, name)]
    if missing:
        EXT_ERROR = f"art_fast._C loaded but does not define {missing}"
        return False
    return True


EXT_LOADED: bool = _load()
if not EXT_LOADED:
    warnings.warn(
        f"art_fast: the compiled extension art_fast._C is not usable ({EXT_ERROR}); "
        "the 'cpu' and 'cuda' backends are unavailable and 'auto' uses the PyTorch reference. "
        "Build it with `pip install --no-build-isolation -e .` or "
        "`python setup.py build_ext --inplace`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``art_fast::<op>`` has a kernel registered for ``dispatch_key`` ("CPU", "CUDA")."""
    if not EXT_LOADED:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{op}", dispatch_key))
