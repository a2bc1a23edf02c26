"""Self-check of the compiled backends on first use, for ``auto``.

The first time ``auto`` would pick a non-reference backend for an (op, backend, dtype, device)
-- on CUDA tensors ``triton`` or ``cuda``, on CPU tensors ``cpu`` -- it runs that op, forward
AND backward, on small fixed-seed inputs of that dtype on that device (odd sizes, the shared
query of cross_attention, both info_nce regimes and an ignored row) and compares every output
and every gradient with the PyTorch reference computed in float64 (see :func:`check`). A backend
that raises (compile error, launch error, Triton ``OutOfResources``, anything) or disagrees is
disabled for that (op, dtype, device) for the rest of the process, with one ``RuntimeWarning``
naming op, backend, dtype, device and the error; ``auto`` then moves to the next candidate
(CUDA: triton -> cuda -> torch; CPU: cpu -> torch).

Criterion (the one of ``tests/_util.py``, DESIGN §8, not loosened), per tensor, against the
float64 reference run on the same dtype-rounded inputs and upstream gradients:

- float64: ``|x - ref| <= 1e-10 + 1e-10 * |ref|`` elementwise (atol scaled by ``max |ref|``);
- float32: ``|x - ref| <= 1e-5 * max|ref| + 1e-5 * |ref|`` elementwise;
- bfloat16 / float16: ``max |x - ref| <= 2 * max |eager - ref| + eps(dtype) * max |ref|``, where
  ``eager`` is the PyTorch reference run in that dtype on the same device;
- integer outputs (the indices of topk_regions) must be equal; a non-finite value where the
  reference is finite (or the reverse) is a failure.

Verdicts are cached in plain dicts: after the first call a choice costs a dict lookup. The check
never runs while ``torch.compile`` traces (``torch.compiler.is_compiling()``), during CUDA graph
capture, under a ``TorchDispatchMode`` (FakeTensorMode, ...) or a functorch transform (vmap,
grad): ``auto`` then uses the cached verdict, or the static order when there is none. It calls
the backend by name (never ``auto``: no recursion), with autograd on (``inference_mode(False)``,
``enable_grad``) and autocast off, and does not touch the global RNG. A backend asked for by
name is never checked or replaced.

``ART_FAST_SELFCHECK=0`` (read at import) turns the check off: ``auto`` is then the static order.
``art-fast info --selftest`` runs the same check for every op x backend x dtype (:func:`report`).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The references, bound once: the check does not go through ``art_fast.reference.<op>`` (which
# tests and users may patch) nor through the public op's ``torch`` backend.
_REF = {
    op: getattr(importlib.import_module(f"art_fast.reference.{op}"), op)
    for op in ("cross_attention", "topk_regions", "info_nce")
}

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
"""The dtypes checked (and the order of the rows of ``art-fast info --selftest``)."""

SEED = 20251129

ENABLED: bool = os.environ.get("ART_FAST_SELFCHECK", "1").strip() != "0"
"""False when ``ART_FAST_SELFCHECK=0`` was set at import: ``auto`` then skips the check."""

_Key = tuple[str, str, torch.dtype | None, str, int | None]
# (op, backend, dtype, device type, device index) -> passed. Plain data, read by resolve().
# dtype None: the verdict over every dtype of DTYPES (for callers that do not pass the dtype).
_VERDICTS: dict[_Key, bool] = {}
# The same keys -> the failure message (for the warning, and for tests / art-fast info).
FAILURES: dict[_Key, str] = {}
_LOCK = threading.RLock()
_ACTIVE: set[_Key] = set()


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check`: ``ok``; ``detail`` ("" when ok, else the worst disagreement
    or the exception's first line); ``max_err`` (the worst error relative to its bound, or
    None when the backend raised)."""

    ok: bool
    detail: str = ""
    max_err: float | None = None


class _BackendError(Exception):
    """The backend under test raised (wraps the original exception)."""


class _Disagrees(Exception):
    """The backend under test ran and gave a result that fails the criterion."""


def _key(op: str, backend: str, dtype: torch.dtype | None, device: torch.device) -> _Key:
    return (op, backend, dtype, device.type, device.index)


def reset() -> None:
    """Forget every verdict (tests; a process that rebuilt a backend)."""
    with _LOCK:
        _VERDICTS.clear()
        FAILURES.clear()


# --------------------------------------------------------------------------------------------
# The cases: ``build(gen)`` makes float64 CPU inputs (and int64 targets) from the generator;
# ``run(fn, x)`` calls the op through ``fn`` (a backend by name, or the reference) and returns
# (differentiable outputs, exact outputs); ``x`` holds the float leaves in the dtype under test.


@dataclass(frozen=True)
class _Case:
    name: str
    build: Callable[[torch.Generator], dict[str, torch.Tensor]]
    run: Callable[[Callable, dict[str, torch.Tensor]], tuple[list, list]]


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _ca_cases() -> list[_Case]:
    B, H, M, N, D = 3, 2, 3, 37, 24

    def build(gen):
        return {"q": _randn(gen, B, H, M, D), "k": _randn(gen, B, H, N, D),
                "v": _randn(gen, B, H, N, D)}

    def build_shared(gen):
        return {"q": _randn(gen, 1, H, M, D), "k": _randn(gen, B, H, N, D),
                "v": _randn(gen, B, H, N, D)}

    def run(fn, x):
        out, w = fn(x["q"], x["k"], x["v"], return_weights=True)
        return [out, w], []

    def run_shared(fn, x):  # one query set for every group: stride 0 over B
        return [fn(x["q"].expand(B, -1, -1, -1), x["k"], x["v"], scale=0.3)], []

    return [_Case("weights", build, run), _Case("shared query", build_shared, run_shared)]


def _topk_cases() -> list[_Case]:
    B, M, N, C, k = 2, 3, 50, 7, 5

    def build(gen):
        return {"scores": _randn(gen, B, M, N), "values": _randn(gen, B, N, C)}

    def run(fn, x):
        pooled, idx, w = fn(x["scores"], x["values"], k)
        return [pooled, w], [idx]

    return [_Case(f"N={N} k={k}", build, run)]


def _nce_cases() -> list[_Case]:
    def make(G, M, N, D, temperature, normalize, reduction):
        def build(gen):
            t = torch.randint(0, N, (G, M), generator=gen)
            t[0, 1] = -100  # an ignored row
            return {"anchors": _randn(gen, G, M, D), "candidates": _randn(gen, G, N, D),
                    "targets": t}

        def run(fn, x):
            loss = fn(x["anchors"], x["candidates"], x["targets"], temperature=temperature,
                      normalize=normalize, reduction=reduction)
            return [loss], []

        return _Case(f"G={G} M={M} N={N} {reduction}", build, run)

    return [
        make(3, 5, 7, 16, 0.1, True, "mean"),  # tiny groups, the fused path
        make(3, 5, 7, 16, 0.5, False, "none"),  # tiny groups, per-row forward/backward
        make(1, 70, 70, 32, 0.1, True, "mean"),  # the large regime (M, N > 64), fused
        make(1, 70, 70, 32, 0.2, True, "none"),  # the large regime, per-row
    ]


_CASES: dict[str, Callable[[], list[_Case]]] = {
    "cross_attention": _ca_cases, "topk_regions": _topk_cases, "info_nce": _nce_cases,
}


# --------------------------------------------------------------------------------------------


def _public(op: str) -> Callable:
    from . import ops  # late: art_fast.ops imports _backend, which imports this module

    return getattr(ops, op)


def _by_name(op: str, backend: str) -> Callable:
    """The public op with ``backend=`` (never ``auto``), or the bound float64-capable reference
    for ``backend == "reference"`` (its keyword names are those of the public op)."""
    if backend == "reference":
        return _REF[op]
    fn = _public(op)

    def call_backend(*args, **kwargs):
        return fn(*args, backend=backend, **kwargs)

    return call_backend


def _leaves(master: dict[str, torch.Tensor], dtype: torch.dtype,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Fresh copies of ``master`` on ``device``: float tensors in ``dtype``, requiring grad."""
    x = {}
    for name, t in master.items():
        if t.is_floating_point():
            x[name] = t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_()
        else:
            x[name] = t.to(device=device, copy=True)
    return x


def _backward(x: dict[str, torch.Tensor], outs: list[torch.Tensor],
              upstream: list[torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """Gradients of the float leaves of ``x`` for the upstream gradients ``upstream`` (float64
    values, cast to each output's dtype and device)."""
    names = [n for n, t in x.items() if t.is_floating_point()]
    grads = torch.autograd.grad(
        outs, [x[n] for n in names],
        [u.to(device=o.device, dtype=o.dtype) for u, o in zip(upstream, outs)],
        allow_unused=True)
    return dict(zip(names, grads))


def _fwd_bwd(fn: Callable, case: _Case, x: dict[str, torch.Tensor],
             upstream: list[torch.Tensor]):
    outs, exact = case.run(fn, x)
    return outs, exact, _backward(x, outs, upstream)


def _compare(actual: torch.Tensor | None, truth: torch.Tensor | None,
             eager: torch.Tensor | None, dtype: torch.dtype) -> tuple[float, str]:
    """(error / bound, description); a ratio > 1 is a failure (inf: wrong shape, dtype or
    non-finite pattern, or integers that differ)."""
    if truth is None and actual is None:
        return 0.0, ""
    if truth is None or actual is None:
        return math.inf, "a gradient is missing" if actual is None else "unexpected gradient"
    if tuple(actual.shape) != tuple(truth.shape):
        return math.inf, f"shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    if not truth.is_floating_point():
        if actual.dtype != truth.dtype or not torch.equal(actual.cpu(), truth.cpu()):
            return math.inf, f"differs from the reference ({actual.dtype})"
        return 0.0, ""
    if actual.dtype != dtype:
        return math.inf, f"dtype {actual.dtype}, expected {dtype}"
    a, t = actual.detach().double().cpu(), truth.detach().double().cpu()
    fin_a, fin_t = torch.isfinite(a), torch.isfinite(t)
    if not torch.equal(fin_a, fin_t):
        return math.inf, "non-finite values where the reference is finite (or the reverse)"
    a, t = a.masked_fill(~fin_a, 0), t.masked_fill(~fin_t, 0)
    scale = max(float(t.abs().max()), 1e-30)
    err = (a - t).abs()
    max_err = float(err.max())
    if dtype in (torch.float64, torch.float32):
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        ratio = float((err / (tol * scale + tol * t.abs())).max())
        return ratio, (f"max error {max_err:.3e} (allowed: rtol {tol:g} + atol {tol:g} x "
                       f"max|ref| {scale:.3g})")
    assert eager is not None
    e = eager.detach().double().cpu().masked_fill(~fin_t, 0)
    eager_err = float((e - t).abs().max())
    bound = 2 * eager_err + torch.finfo(dtype).eps * scale
    return max_err / bound, (f"max error {max_err:.3e} > 2 x eager {dtype} error "
                             f"{eager_err:.3e} + eps x max|ref| = {bound:.3e}")


def _prepare(op: str, case: _Case, gen: torch.Generator, dtype: torch.dtype, device: torch.device):
    """The case's inputs (float64, rounded to ``dtype``), its float64 reference outputs and
    gradients, and the upstream gradients (float64, rounded to ``dtype``)."""
    master = {n: (t.to(dtype).double() if t.is_floating_point() else t)
              for n, t in case.build(gen).items()}
    x64 = _leaves(master, torch.float64, device)
    outs64, exact64 = case.run(_by_name(op, "reference"), x64)
    up = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype).double()
          for o in outs64]
    grads64 = _backward(x64, outs64, up)
    return master, up, outs64, exact64, grads64


def _run_cases(op: str, backend: str, dtype: torch.dtype, device: torch.device) -> float:
    """Compare every output and gradient of ``backend`` with the reference; return the worst
    error / bound ratio. Raises _BackendError (the backend raised) or _Disagrees."""
    gen = torch.Generator().manual_seed(SEED)
    fn = _by_name(op, backend)
    ref = _by_name(op, "reference")
    worst = 0.0
    for case in _CASES[op]():
        master, up, outs64, exact64, grads64 = _prepare(op, case, gen, dtype, device)
        eager_outs, eager_grads = [None] * len(outs64), dict.fromkeys(grads64)
        if dtype in (torch.bfloat16, torch.float16):
            eager_outs, _, eager_grads = _fwd_bwd(ref, case, _leaves(master, dtype, device), up)
        try:
            outs, exact, grads = _fwd_bwd(fn, case, _leaves(master, dtype, device), up)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # asynchronous launch errors surface here
        except Exception as exc:
            raise _BackendError(f"{type(exc).__name__}: {_first_line(exc)} "
                                f"(case {case.name!r})") from exc
        try:
            pairs = [(f"output {i}", o, t, e) for i, (o, t, e) in
                     enumerate(zip(outs, outs64, eager_outs, strict=True))]
            pairs += [(f"indices {i}", o, t, None) for i, (o, t) in
                      enumerate(zip(exact, exact64, strict=True))]
            pairs += [(f"grad {n}", grads.get(n), grads64[n], eager_grads[n]) for n in grads64]
            for what, a, t, e in pairs:
                ratio, desc = _compare(a, t, e, dtype)
                if not ratio <= 1.0:  # NaN-safe
                    raise _Disagrees(f"case {case.name!r}, {what}: {desc}")
                worst = max(worst, ratio)
        except _Disagrees:
            raise
        except Exception as exc:  # the backend returned something that cannot be compared
            raise _Disagrees(f"case {case.name!r}: unexpected result ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from exc
    return worst


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def check(op: str, backend: str, dtype: torch.dtype, device: torch.device | str) -> CheckResult:
    """Run the self-check of ``backend`` for ``op`` on ``dtype`` tensors of ``device`` now
    (no caching, no warning). The backend is called by name; see the module docstring for the
    inputs and the criterion.

    Args:
        op: ``cross_attention``, ``topk_regions`` or ``info_nce``.
        backend: ``torch``, ``cpu``, ``triton`` or ``cuda`` (must be usable for ``device``).
        dtype: float32, bfloat16, float16 or float64.
        device: where the inputs live.

    Returns:
        :class:`CheckResult`; ``ok`` False when the backend raised or disagrees.
    """
    device = torch.device(device)
    with (torch.inference_mode(False), torch.enable_grad(),
          torch.autocast(device_type=device.type, enabled=False)):
        try:
            worst = _run_cases(op, backend, dtype, device)
        except _BackendError as exc:
            return CheckResult(False, str(exc))
        except _Disagrees as exc:
            return CheckResult(False, str(exc), math.inf)
    return CheckResult(True, "", worst)


def _skip_now(device: torch.device) -> bool:
    """Whether running a check now would be wrong (tracing, capture, modes, transforms)."""
    if torch.compiler.is_compiling():
        return True
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    if is_in_torch_dispatch_mode() or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _verdict_one(op: str, backend: str, dtype: torch.dtype, device: torch.device) -> bool:
    key = _key(op, backend, dtype, device)
    cached = _VERDICTS.get(key)
    if cached is not None:
        return cached
    if not ENABLED or _skip_now(device):
        return True  # the static order
    with _LOCK:
        cached = _VERDICTS.get(key)
        if cached is not None:
            return cached
        if key in _ACTIVE:  # re-entered from inside the check (not expected): static order
            return True
        _ACTIVE.add(key)
        try:
            try:
                res = check(op, backend, dtype, device)
            except Exception as exc:  # the reference itself failed: no verdict on the backend
                warnings.warn(
                    f"art_fast: the self-check of backend {backend!r} for {op} ({dtype}, "
                    f"{device}) could not run ({type(exc).__name__}: {_first_line(exc)}); "
                    f"'auto' keeps its static order", RuntimeWarning, stacklevel=5)
                res = CheckResult(True)
            _VERDICTS[key] = res.ok
            if not res.ok:
                FAILURES[key] = res.detail
                warnings.warn(
                    f"art_fast: backend {backend!r} failed its self-check for {op} ({dtype}, "
                    f"{device}): {res.detail}. It is disabled for {op} on {dtype} {device.type} "
                    f"tensors for the rest of this process; 'auto' moves on to the next "
                    f"backend (ART_FAST_SELFCHECK=0 skips the check; `art-fast info "
                    f"--selftest` shows every backend).", RuntimeWarning, stacklevel=5)
        finally:
            _ACTIVE.discard(key)
    return res.ok


def usable(op: str, backend: str, device: torch.device, dtype: torch.dtype | None) -> bool:
    """The hook of ``_backend.resolve`` for ``auto``: whether ``backend`` passed (or, on first
    use, passes now) its self-check for ``op`` on ``dtype`` tensors of ``device``.

    ``dtype=None`` (a caller that does not pass the dtype) requires every dtype of
    :data:`DTYPES` to pass. Never called for a backend asked for by name.
    """
    if dtype is not None:
        return _verdict_one(op, backend, dtype, device)
    key = _key(op, backend, None, device)
    cached = _VERDICTS.get(key)
    if cached is not None:
        return cached
    ok = True
    for dt in DTYPES:
        if not _verdict_one(op, backend, dt, device):
            ok = False
            break
    if not torch.compiler.is_compiling() and (
            not ok or all(_key(op, backend, dt, device) in _VERDICTS for dt in DTYPES)):
        _VERDICTS[key] = ok  # one lookup next time (only once every dtype has a verdict)
    return ok


# --------------------------------------------------------------------------------------------
# art-fast info --selftest


def _applies(backend: str, device: torch.device) -> tuple[bool, str]:
    if backend == "cpu" and device.type != "cpu":
        return False, "runs CPU tensors only"
    if backend == "cuda" and device.type != "cuda":
        return False, "runs CUDA tensors only"
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "runs CPU tensors only under TRITON_INTERPRET=1"
    return True, ""


def _time_ms(op: str, backend: str, dtype: torch.dtype, device: torch.device,
             repeats: int) -> float:
    """Median wall time (ms) of forward+backward over every case at the self-check sizes."""
    import statistics
    import time

    gen = torch.Generator().manual_seed(SEED)
    fn = _by_name(op, backend)
    times = []
    with (torch.inference_mode(False), torch.enable_grad(),
          torch.autocast(device_type=device.type, enabled=False)):
        prepared = [(case, *_prepare(op, case, gen, dtype, device)[:2]) for case in _CASES[op]()]
        for _ in range(repeats):
            xs = [(case, _leaves(master, dtype, device), up) for case, master, up in prepared]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for case, x, up in xs:
                _fwd_bwd(fn, case, x, up)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def report(device: torch.device | str | None = None, repeats: int = 5) -> list[dict]:
    """One row per op x backend x dtype (``art-fast info --selftest``).

    Args:
        device: CUDA when available, else CPU, when None.
        repeats: timed runs per row (the median is reported).

    Returns:
        dicts with ``op``, ``backend``, ``dtype`` (name), ``device``, ``built`` ("yes" or the
        reason the backend is not usable here), ``usable`` (bool), ``agrees`` ("yes", the
        failure, or None when not usable), ``ok`` (bool, None when not usable), ``ms`` (median
        ms of forward+backward of every case at the self-check sizes over ``runs`` runs, after
        the check as warm-up; 1 run for Triton's CPU interpreter -- a smoke timing, not a
        benchmark).
    """
    from . import _backend

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    rows = []
    for op in _backend.OPS:
        for backend in _backend.BACKENDS:
            built, reason = _backend._STATUS[(backend, op)]
            if built:
                built, reason = _applies(backend, device)
            for dtype in DTYPES:
                row = {"op": op, "backend": backend, "dtype": str(dtype).removeprefix("torch."),
                       "device": str(device), "built": "yes" if built else reason,
                       "usable": built, "agrees": None, "ok": None, "ms": None,
                       "runs": 0}
                if built:
                    try:
                        res = check(op, backend, dtype, device)
                    except Exception as exc:  # the reference failed: report, count as failed
                        res = CheckResult(False, f"check could not run: {type(exc).__name__}: "
                                                 f"{_first_line(exc)}")
                    row["ok"] = res.ok
                    row["agrees"] = "yes" if res.ok else res.detail
                    if res.ok:
                        # Triton's interpreter is ~100x slower: one timed run is enough there.
                        runs = 1 if backend == "triton" and device.type == "cpu" else repeats
                        row["ms"] = round(_time_ms(op, backend, dtype, device, runs), 3)
                        row["runs"] = runs
                rows.append(row)
    return rows
