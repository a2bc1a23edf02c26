"""Loading of the compiled extension ``art_fast._C``, and which of its ops are usable.

The extension registers the ``art_fast::*`` operators itself: each op's schemas and CPU kernels
come from ``csrc/cpu/<op>.cpp`` (its ``TORCH_LIBRARY_FRAGMENT`` and CPU ``TORCH_LIBRARY_IMPL``),
its CUDA kernels from ``csrc/cuda/<op>.cu`` (its CUDA ``TORCH_LIBRARY_IMPL``); both include the
op's contract ``csrc/<op>.h`` (dims, input checks, CUDA launchers). When
the module is missing or fails to load, ``import art_fast`` still works: the reference backend
is used and a warning names the cause. When it loads (``EXT_LOADED``) but lacks an entry point
(a stale or partial build), only the ops missing it are unusable, and only on the devices
missing it: ``op_status`` says which and why.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

EXT_ERROR: str | None = None
"""Why the extension is not usable, or None when it loaded."""

ENTRIES: dict[str, tuple[str, ...]] = {}
"""The ``art_fast::*`` entry points each op needs (schema and a kernel per device), filled by
the ops' contracts (``art_fast._contract.OpContract``, through :func:`declare`)."""

DISPATCH_KEYS: dict[str, str] = {"cpu": "CPU", "cuda": "CUDA"}
"""Device of a backend -> the dispatch key its kernels are registered for."""

_REBUILD = "stale build? rebuild with `make install`"

_C = None  # the module art_fast._C once loaded


def _load() -> bool:
    global EXT_ERROR, _C
    if os.environ.get("ART_FAST_DISABLE_EXT", "") == "1":
        EXT_ERROR = "disabled by ART_FAST_DISABLE_EXT=1"
        return False
    try:
        _C = importlib.import_module("art_fast._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...
        EXT_ERROR = f"{type(exc).__name__}: {exc}"
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


def declare(op: str, entries: tuple[str, ...]) -> None:
    """Record the entry points of ``op`` (called by its contract)."""
    ENTRIES[op] = tuple(entries)


def compiled_with_cuda() -> bool:
    """Whether the loaded ``art_fast._C`` was built with its CUDA kernels."""
    return EXT_LOADED and bool(getattr(_C, "compiled_with_cuda", False))


def has_schema(entry: str) -> bool:
    """Whether ``art_fast::<entry>`` is defined (its schema is registered)."""
    if not EXT_LOADED:
        return False
    return hasattr(torch.ops.art_fast, entry)


def has_kernel(entry: str, dispatch_key: str) -> bool:
    """Whether ``art_fast::<entry>`` has a kernel registered for ``dispatch_key`` ("CPU",
    "CUDA")."""
    if not EXT_LOADED or not has_schema(entry):
        return False
    return bool(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{entry}", dispatch_key)
    )


def defines(op: str) -> bool:
    """Whether every schema of ``op`` is defined (what registering its fake kernels and autograd
    formula from Python needs)."""
    return EXT_LOADED and all(has_schema(e) for e in ENTRIES[op])


def _names(entries: list[str]) -> str:
    return ", ".join(f"art_fast::{e}" for e in entries)


def op_status(op: str) -> dict[str, tuple[bool, str]]:
    """Per device (``"cpu"``, ``"cuda"``): whether ``art_fast._C`` has every entry point of ``op``
    (``ENTRIES``) with a kernel for that device, and the reason when not.

    Whether a CUDA device is visible is not asked here (``art_fast._backend`` adds that).
    """
    if op not in ENTRIES:
        raise ValueError(f"unknown op {op!r}; ops: {tuple(ENTRIES)}")
    if not EXT_LOADED:
        reason = f"art_fast._C is not usable: {EXT_ERROR}"
        return {dev: (False, reason) for dev in DISPATCH_KEYS}
    undefined = [e for e in ENTRIES[op] if not has_schema(e)]
    if undefined:
        reason = f"art_fast._C does not define {_names(undefined)} ({_REBUILD})"
        return {dev: (False, reason) for dev in DISPATCH_KEYS}
    status: dict[str, tuple[bool, str]] = {}
    for dev, key in DISPATCH_KEYS.items():
        missing = [e for e in ENTRIES[op] if not has_kernel(e, key)]
        if not missing:
            status[dev] = (True, "")
        elif dev == "cuda" and not compiled_with_cuda():
            status[dev] = (False, "art_fast._C was built without CUDA kernels")
        else:
            status[dev] = (False, f"art_fast._C has no {key} kernel for {_names(missing)} "
                                  f"({_REBUILD})")
    return status


def warn_incomplete() -> None:
    """One warning when the loaded extension lacks an entry point it should have (a schema, a
    CPU kernel, or a CUDA kernel of a CUDA build): a stale or partial build. Called once at
    import, by ``art_fast._backend.compute_status`` (when every op has declared its entries)."""
    if not EXT_LOADED:
        return
    problems = []
    for op in ENTRIES:
        for dev, (ok, reason) in op_status(op).items():
            if not ok and (dev == "cpu" or compiled_with_cuda()):
                problems.append(f"{op} ({dev}): {reason}")
    if problems:
        warnings.warn(
            "art_fast: art_fast._C is incomplete; these ops fall back to other backends: "
            + "; ".join(problems),
            RuntimeWarning,
            stacklevel=3,
        )

