"""Helpers shared by the tests (this module holds no tests; the test modules import it and no
other test module):

- the backends (``BACKEND_CASES`` and its subsets, ``grid``, ``require``): the (device, backend)
  pairs every op test is parametrised over;
- the tolerances (``assert_close_fp``) and the reference checks of the three ops
  (``check_cross_attention``, ``check_topk_regions``, ``check_info_nce``; the spec's sample
  cases: ``SPEC_DTYPES``, ``check_spec_cases``);
- direct calls of an op's Triton entries on non-contiguous views (``view_cases``,
  ``noncontig_inputs``, ``check_views``, ``opcheck_views``);
- ``fwd_bwd``, ``check_compiled``, ``run_python``;
- the bytes of every file under a folder (determinism tests of the synthetic sets), a recorder
  of the operators a block dispatches (backend dispatch tests), tiny video writers (data tests).

Tolerances (DESIGN §8): a fast path in float32 is compared with the float64 reference at
rtol 1e-5 (TF32 off, see tests/conftest.py); in bfloat16/float16 its error, measured against
float64, must be at most 2x the error of the eager PyTorch reference run in the same dtype (plus
one rounding of the output dtype at the tensor's scale, so that an exactly-representable eager
result does not demand zero error).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import art_fast
from art_fast import reference
from art_fast.ops import SPECS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

# ---- backends ----------------------------------------------------------------------------------


def case(device: str, backend: str) -> pytest.param:
    """The pytest param (device, backend), id ``<device>-<backend>``; marked gpu (and skipped
    without CUDA) on cuda."""
    return pytest.param(device, backend, id=f"{device}-{backend}",
                        marks=GPU if device == "cuda" else ())


# Every backend of every op: torch (the reference, CPU tensors), the C++ kernels on the CPU, the
# Triton kernels on CPU tensors under the interpreter (TRITON_INTERPRET=1, set by
# tests/conftest.py without CUDA: the cpu-triton cases skip when it is off), and the CUDA and
# Triton kernels on a GPU. The torch backend IS the reference: the tests that compare an op with
# the float64 reference use FAST_CASES (torch against itself would prove nothing); the tests of
# behaviour (errors, shapes, NaN, ties, ignored rows) use BACKEND_CASES.
BACKEND_CASES = [case("cpu", "torch"), case("cpu", "cpu"), case("cpu", "triton"),
                 case("cuda", "cuda"), case("cuda", "triton")]
FAST_CASES = [c for c in BACKEND_CASES if c.values[1] != "torch"]
TRITON_CASES = [c for c in BACKEND_CASES if c.values[1] == "triton"]
# torch.compile of the kernels (the cpu and torch backends: tests/test_library.py)
COMPILE_CASES = [c for c in FAST_CASES if c.id != "cpu-cpu"]


def is_interpreter(device: str, backend: str) -> bool:
    """The Triton kernels under the interpreter (numpy; about a second a call at N ~ 200)."""
    return device == "cpu" and backend == "triton"


def grid(backends: Sequence, values: Iterable[tuple] = (), interpret: Iterable[tuple] = ()
         ) -> list:
    """The params (*backend case, *v) of a test over backends and shapes: every backend case
    runs every v of ``values`` and of ``interpret``, except the Triton interpreter, which runs
    only those of ``interpret`` (small shapes: its kernels run in numpy). Ids
    ``<backend case>-<v, dash-joined>``."""
    values, interpret = [tuple(v) for v in values], [tuple(v) for v in interpret]
    out = []
    for c in backends:
        for v in (interpret if is_interpreter(*c.values[:2]) else values + interpret):
            vid = "-".join(getattr(x, "__name__", None) or str(x).replace("torch.", "")
                           for x in v)
            out.append(pytest.param(*c.values, *v, id=f"{c.id}-{vid}" if v else c.id,
                                    marks=c.marks))
    return out


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


def require(op: str, device: str, backend: str) -> None:
    """Skip (or fail, see above) unless ``backend`` can run ``op`` on ``device`` here."""
    if backend == "triton":
        require_triton(op, device)
    elif backend not in ("torch", "auto"):
        require_backend(op, backend)


# ---- tolerances ----------------------------------------------------------------------------


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


def fwd_bwd(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor | None],
    dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``fn`` on leaf copies of ``inputs`` (cast to ``dtype`` if given), backpropagate
    ``sum(<out_i, cot_i>)`` over the differentiable outputs, return (outputs, input grads).

    Integer inputs are passed through untouched and get no gradient.
    """
    leaves = []
    for x in inputs:
        if x.is_floating_point():
            x = x.detach().to(dtype or x.dtype).requires_grad_(True)
        leaves.append(x)
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    total = 0
    for o, c in zip(outs, cotangents):
        if c is not None:
            total = total + (o.double() * c.double()).sum()
    diff = [x for x in leaves if x.is_floating_point()]
    grads = torch.autograd.grad(total, diff, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(diff, grads)]
    return [o.detach() for o in outs], list(grads)


def _low_precision(dtype: torch.dtype, eager_rule: bool) -> bool:
    return dtype in (torch.float16, torch.bfloat16) or eager_rule


# ---- the ops' spec (art_fast.ops.SPECS) -----------------------------------------------------


def check_spec_case(spec, case, backend: str, seed: int = 0) -> None:
    """``spec.fn(*case.args, **case.kwargs, backend=backend)`` against the reference on float64
    copies of the case's inputs: every output (integer outputs exactly), and the gradients
    w.r.t. ``case.grad_inputs`` of ``<main output, cot>`` for a seeded random cotangent (the
    same for all runs), by ``assert_close_fp`` (16-bit: with the eager reference in the case's
    dtype)."""
    grad_idx = [i for i, a in enumerate(case.args) if a.requires_grad]
    assert [case.args[i] for i in grad_idx] == list(case.grad_inputs)
    dtype = case.args[grad_idx[0]].dtype
    cot = None

    def run(fn, dt):
        nonlocal cot
        args = [a.detach().to(dt).requires_grad_(a.requires_grad) if a.is_floating_point()
                else a for a in case.args]
        outs = fn(*args, **case.kwargs)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if cot is None:
            gen = torch.Generator().manual_seed(seed)
            cot = torch.randn(outs[0].shape, generator=gen, dtype=torch.float64)
            cot = cot.to(outs[0].device)
        grads = torch.autograd.grad((outs[0].double() * cot).sum(), [args[i] for i in grad_idx])
        return [o.detach() for o in outs], grads

    outs, grads = run(lambda *a, **kw: spec.fn(*a, **kw, backend=backend), dtype)
    t_outs, t_grads = run(spec.reference, torch.float64)
    e_outs = e_grads = None
    if _low_precision(dtype, False):
        e_outs, e_grads = run(spec.reference, dtype)
    where = f"{spec.name} {backend} {case.label} {case.kwargs} {dtype}"
    assert len(outs) == len(t_outs), f"{where}: {len(outs)} outputs, the reference {len(t_outs)}"
    for i, (o, t) in enumerate(zip(outs, t_outs)):
        assert o.shape == t.shape, f"{where}: output {i} shape {o.shape} != {t.shape}"
        if not t.is_floating_point():
            assert o.dtype == t.dtype and torch.equal(o, t), f"{where}: output {i}"
            continue
        assert o.dtype == dtype, f"{where}: output {i} dtype {o.dtype}"
        assert_close_fp(o, t, e_outs[i] if e_outs else None, f"{where}: output {i}")
    for i, (g, t) in enumerate(zip(grads, t_grads)):
        assert g.dtype == dtype, f"{where}: gradient {i} dtype {g.dtype}"
        assert_close_fp(g, t, e_grads[i] if e_grads else None, f"{where}: gradient {i}")


# The spec's cases in float32 on every backend, in float64 and bfloat16 on all but the Triton
# interpreter (its dots run in float32 whatever the dtype; the test time stays in its budget):
# the dtypes of ``grid(cases, **SPEC_DTYPES)``.
SPEC_DTYPES = dict(values=[(torch.float64,), (torch.bfloat16,)], interpret=[(torch.float32,)])


def check_spec_cases(op: str, device: str, backend: str, dtype: torch.dtype) -> None:
    """Every sample case of ``op``'s spec (art_fast.ops.SPECS) on ``device`` in ``dtype``, by
    ``check_spec_case``; skipped (or failed) first as ``require`` says."""
    require(op, device, backend)
    spec = SPECS[op]
    for c in spec.cases(device, dtype):
        check_spec_case(spec, c, backend)


# ---- direct calls of the art_fast_triton:: entries with non-contiguous inputs ------
# The ops make their inputs contiguous, but the Triton custom ops are public: the backward must
# read the same contiguous tensors as the forward, whatever strides autograd saved. An op's test
# file describes its cases by a table ``kind -> (shapes, views)``: ``shapes(*dims)`` the shapes
# of the leaf tensors, ``views(*leaves)`` the (transposed, step-sliced, expanded) views of them
# that the entry gets.


def view_cases(kinds: Iterable[str]) -> list:
    """The params (device, backend, dtype, kind) of a direct-call test: the Triton cases, in
    float64 and float32, each kind."""
    return grid(TRITON_CASES, interpret=[(dt, kind) for dt in (torch.float64, torch.float32)
                                         for kind in kinds])


def noncontig_inputs(kinds: dict, kind: str, dims: Sequence[int], device: str,
                     dtype: torch.dtype) -> tuple[list[torch.Tensor], tuple]:
    """(leaves, views) of one kind: standard normal leaves (requiring grad) of the shapes
    ``kinds[kind][0](*dims)``, and their views ``kinds[kind][1](*leaves)``."""
    shapes, views = kinds[kind]
    leaves = [torch.randn(*s, device=device, dtype=dtype, requires_grad=True)
              for s in shapes(*dims)]
    return leaves, views(*leaves)


def check_views(fast, ref, kinds: dict, kind: str, leaves, cotangents, out_names, grad_names
                ) -> None:
    """``fast(*views(*leaves))`` (an entry called directly on the non-contiguous views of
    ``kind``: ``views = kinds[kind][1]``) against ``ref`` on the same views of float64 copies
    of the leaves: every output (``out_names``; integer ones exactly), and the gradients w.r.t.
    the leaves (``grad_names``) of sum <output, cotangent> over the outputs with a cotangent
    (None: none; they may be non-contiguous too), through the entry's autograd."""
    views = kinds[kind][1]
    outs = fast(*views(*leaves))
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    t_outs = ref(*views(*leaves64))
    used = [i for i, c in enumerate(cotangents) if c is not None]
    grads = torch.autograd.grad([outs[i] for i in used], leaves, [cotangents[i] for i in used])
    t_grads = torch.autograd.grad([t_outs[i] for i in used], leaves64,
                                  [cotangents[i].double() for i in used])
    assert len(outs) == len(t_outs) == len(out_names)
    for name, o, t in zip(out_names, outs, t_outs):
        if o.is_floating_point():
            assert_close_fp(o, t, what=f"{name} ({kind})")
        else:
            assert torch.equal(o, t), f"{name} ({kind})"
    assert len(grads) == len(grad_names)
    for name, g, t in zip(grad_names, grads, t_grads):
        assert_close_fp(g, t, what=f"{name} ({kind})")


def opcheck_views(entry, kinds: dict, chosen: Iterable[str], dims: Sequence[int], device: str,
                  *args) -> None:
    """torch.library.opcheck (fake kernels' strides, autograd registration) of
    ``entry(*views, *args)`` on the float32 views of each kind in ``chosen``."""
    for kind in chosen:
        _, views = noncontig_inputs(kinds, kind, dims, device, torch.float32)
        torch.library.opcheck(entry, (*views, *args))


# ---- cross_attention ------------------------------------------------------------------------


def make_qkv(B, H, M, N, D, device="cpu", dtype=torch.float64, shared_q=False):
    """q ``[B or 1, H, M, D]``, k, v ``[B, H, N, D]``, standard normal."""
    q = torch.randn(1 if shared_q else B, H, M, D, device=device, dtype=dtype)
    k = torch.randn(B, H, N, D, device=device, dtype=dtype)
    v = torch.randn(B, H, N, D, device=device, dtype=dtype)
    return q, k, v


def check_cross_attention(device, backend, B, H, M, N, D, dtype, *, weights, shared_q=False,
                          scale=None, noncontig=False, eager_rule=False):
    """art_fast.cross_attention in ``dtype`` (out, the weights when ``weights``, dq, dk, dv)
    against the float64 reference; ``shared_q``: one query set expanded over B (stride 0);
    ``noncontig``: k and v non-contiguous."""
    q, k, v = make_qkv(B, H, M, N, D, device, torch.float64, shared_q)
    g_out = torch.randn(B, H, M, D, device=device, dtype=torch.float64)
    g_w = torch.randn(B, H, M, N, device=device, dtype=torch.float64) if weights else None

    def fast(q, k, v):
        if shared_q:
            q = q.expand(B, -1, -1, -1)  # stride 0 over B
        if noncontig:
            k = k.transpose(2, 3).contiguous().transpose(2, 3)
            v = v.transpose(0, 1).contiguous().transpose(0, 1)
        return art_fast.cross_attention(q, k, v, scale=scale, return_weights=weights,
                                        backend=backend)

    def ref(q, k, v):
        if shared_q:
            q = q.expand(B, -1, -1, -1)
        return reference.cross_attention(q, k, v, scale, weights)

    outs, grads = fwd_bwd(fast, (q, k, v), (g_out, g_w), dtype)
    t_outs, t_grads = fwd_bwd(ref, (q, k, v), (g_out, g_w), torch.float64)
    e_outs, e_grads = (None, None)
    if _low_precision(dtype, eager_rule):
        e_outs, e_grads = fwd_bwd(ref, (q, k, v), (g_out, g_w), dtype)
    names = ["out", "weights"][: len(outs)]
    for i, name in enumerate(names):
        assert outs[i].dtype == dtype
        assert_close_fp(outs[i], t_outs[i], e_outs[i] if e_outs else None, f"{name} {dtype}",
                        eager_rule)
    for i, name in enumerate(["dq", "dk", "dv"]):
        assert grads[i].shape == (q, k, v)[i].shape
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)


# ---- topk_regions ---------------------------------------------------------------------------


def oracle_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The documented rule, written independently of the code under test: descending score,
    ties by lower index, NaN below everything (by lower index among NaNs)."""
    B, M, N = scores.shape
    out = torch.empty(B, M, k, dtype=torch.int64)
    rows = scores.detach().double().cpu().tolist()
    for b in range(B):
        for m in range(M):
            row = rows[b][m]
            order = sorted(range(N), key=lambda n: (math.isnan(row[n]),
                                                    -row[n] if not math.isnan(row[n]) else 0, n))
            out[b, m] = torch.tensor(order[:k])
    return out


def check_topk_regions(device, backend, B, M, N, C, k, dtype, scores=None, noncontig=False,
                       eager_rule=False):
    """art_fast.topk_regions in ``dtype`` against the float64 reference (pooled, weights, both
    gradients) and the ranking oracle (indices); the scores' gradient exactly 0 outside the
    selection. ``scores``: given scores (else standard normal); ``noncontig``: non-contiguous
    scores and values."""
    s = torch.randn(B, M, N, dtype=torch.float64) if scores is None else scores.double()
    v = torch.randn(B, N, C, dtype=torch.float64)
    s, v = s.to(device), v.to(device)
    g_pool = torch.randn(B, M, C, dtype=torch.float64, device=device)
    g_w = torch.randn(B, M, k, dtype=torch.float64, device=device)

    def fast(s, v):
        if noncontig:
            s = s.transpose(0, 2).contiguous().transpose(0, 2)
            v = v.transpose(1, 2).contiguous().transpose(1, 2)
        return art_fast.topk_regions(s, v, k, backend=backend)

    def ref(s, v):
        return reference.topk_regions(s, v, k)

    outs, grads = fwd_bwd(fast, (s, v), (g_pool, None, g_w), dtype)
    t_outs, t_grads = fwd_bwd(ref, (s.to(dtype), v.to(dtype)), (g_pool, None, g_w), torch.float64)
    e_outs = e_grads = None
    if _low_precision(dtype, eager_rule):
        e_outs, e_grads = fwd_bwd(ref, (s, v), (g_pool, None, g_w), dtype)
    pooled, idx, w = outs
    assert idx.dtype == torch.int64 and idx.shape == (B, M, k)
    assert torch.equal(idx.cpu(), oracle_indices(s.to(dtype), k))
    assert torch.equal(idx, t_outs[1])
    assert pooled.dtype == dtype and w.dtype == dtype
    assert_close_fp(pooled, t_outs[0], e_outs[0] if e_outs else None, f"pooled {dtype}",
                    eager_rule)
    assert_close_fp(w, t_outs[2], e_outs[2] if e_outs else None, f"weights {dtype}", eager_rule)
    for i, name in enumerate(["grad scores", "grad values"]):
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)
    # the scores' gradient is exactly zero outside the selection
    outside = torch.ones_like(grads[0], dtype=torch.bool).scatter_(-1, idx, False)
    assert torch.equal(grads[0][outside], torch.zeros_like(grads[0][outside]))


# ---- info_nce ---------------------------------------------------------------------------------

IGNORE = -100


def make_nce(G, M, N, D, device="cpu", ignore_frac=0.2, same=False):
    """float64 anchors ``[G, M, D]``, candidates ``[G, N, D]`` (the anchors when ``same``),
    random targets with about ``ignore_frac`` of them -100."""
    a = torch.randn(G, M, D, dtype=torch.float64, device=device)
    c = a if same else torch.randn(G, N, D, dtype=torch.float64, device=device)
    t = torch.randint(0, N, (G, M), device=device)
    t[torch.rand(G, M, device=device) < ignore_frac] = IGNORE
    return a, c, t


def check_info_nce(device, backend, G, M, N, D, dtype, *, normalize=True, temperature=0.1,
                   reduction="mean", same=False, scale=1.0, eager_rule=False, ignore_frac=0.2,
                   inputs=None):
    """art_fast.info_nce in ``dtype`` (the loss and both gradients) against the float64
    reference; ``same``: the anchors are the candidates (one tensor); ``scale``: multiplies
    the inputs; ``inputs``: given (anchors, candidates, targets). Returns (outputs, grads)."""
    a, c, t = make_nce(G, M, N, D, device, ignore_frac, same) if inputs is None else inputs
    a, c = a * scale, (a * scale if same else c * scale)
    kw = dict(temperature=temperature, normalize=normalize, reduction=reduction)
    cot = torch.randn((G, M) if reduction == "none" else (), dtype=torch.float64, device=device)

    def fast(a, c):
        return art_fast.info_nce(a, a if same else c, t, backend=backend, **kw)

    def ref(a, c):
        return reference.info_nce(a, a if same else c, t, **kw)

    outs, grads = fwd_bwd(fast, (a, c), (cot,), dtype)
    t_outs, t_grads = fwd_bwd(ref, (a, c), (cot,), torch.float64)
    e_outs = e_grads = None
    if _low_precision(dtype, eager_rule):
        e_outs, e_grads = fwd_bwd(ref, (a, c), (cot,), dtype)
    assert outs[0].dtype == dtype and outs[0].shape == t_outs[0].shape
    assert_close_fp(outs[0], t_outs[0], e_outs[0] if e_outs else None, f"loss {dtype}", eager_rule)
    for i, name in enumerate(["grad anchors", "grad candidates"]):
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)
    return outs, grads


# ---- torch.compile, subprocesses ------------------------------------------------------------


def check_compiled(fn, args, grads_of):
    """torch.compile(fn, fullgraph=True) (no graph break) gives fn's outputs and the gradients
    of its first output's sum w.r.t. ``grads_of``."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    expected = fn(*args)
    got = compiled(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    ge = torch.autograd.grad(expected[0].sum(), grads_of)
    gg = torch.autograd.grad(got[0].sum(), grads_of)
    for e, g in zip(ge, gg):
        torch.testing.assert_close(g, e)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process, from the repository root, without the test
    process's Triton interpreter (tests/conftest.py); ``env`` added to the environment."""
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env = {**base, "PYTHONPATH": ROOT, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=300)


# ---- files, dispatch ----------------------------------------------------------------------------


def files_bytes(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """{path relative to root: file bytes} for every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


class OpRecorder(TorchDispatchMode):
    """Records the name (``namespace::op``) of every operator dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(f"{func.namespace}::{func._opname}")
        return func(*args, **(kwargs or {}))


# ---- tiny videos (the data tests) ---------------------------------------------------------------
# Frame ``k`` of a written video is a flat grey level ``level(k)`` with a small random-noise
# corner, so tests can tell which frame was decoded (an oracle independent of the decoders).
# Frame widths avoid 16/24/32/48/96/144 px, where decord2 3.4.0 raises (the PyAV fallback
# covers those; a dedicated test uses one).

H, W = 40, 64  # frame size of the fixture videos

CODECS = {  # extension -> (codec, container format)
    "mp4": ("libx264", "mp4"),
    "webm": ("libvpx", "webm"),
    "avi": ("mpeg4", "avi"),
}


def level(k: int) -> int:
    """Grey level of frame ``k`` (distinct for k < 12, far apart for a lossy codec)."""
    return 15 + 20 * (k % 12)


def make_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: frame k flat at level(k), a noisy 8x8 corner."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        frames[k] = level(k)
        frames[k, :8, :8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, ext: str | None = None,
                colorspace: int | None = None, full_range: bool = False) -> str:
    """Write RGB uint8 frames [n, h, w, 3] with PyAV (codec chosen by the extension)."""
    import av  # here: only the data tests need PyAV

    path = os.fspath(path)
    ext = ext or path.rsplit(".", 1)[-1]
    codec, fmt = CODECS[ext]
    opts = {"threads": "1"}
    if codec == "libx264":
        opts["crf"] = "10"
        if colorspace == 1:
            opts["colormatrix"] = "bt709"
        if full_range:
            opts["fullrange"] = "on"
    with av.open(path, mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuvj420p" if full_range else "yuv420p"
        s.codec_context.thread_count = 1
        if codec == "mpeg4" or codec == "libvpx":
            s.bit_rate = 4_000_000
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
        if full_range:
            s.codec_context.color_range = 2
        s.options = opts
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_corrupt(path: str | os.PathLike, nbytes: int = 4096, seed: int = 1) -> str:
    """Random bytes under a video file name."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return path
