"""Autograd contracts of the three ops on every backend, each against the
torch backend on fresh float64 inputs of odd shapes:

(a) gradients w.r.t. a stride-0 expanded leaf and w.r.t. an expanded non-leaf view (was: the
    whole gradient of a broadcast query set in row 0 on cpu / triton);
(b) double backward matches torch or raises a RuntimeError saying "double backward" (was: a
    silent 0 or None, or an unrelated error);
(c) info_nce rows with target -100 and NaN / inf anchors: loss and every other gradient as
    with finite anchors there, their own gradient exactly 0 (was: NaN on torch and cpu);
(d) torch.func.grad and torch.func.vmap (and per-sample gradients, vmap over grad) (was:
    "must override the setup_context staticmethod" on cpu and triton).

Backends (tests/_util.py): cpu (the C++ kernels) and triton (under TRITON_INTERPRET=1 on CPU,
see tests/conftest.py) on CPU tensors, cuda and triton on a GPU (marked gpu), each against torch
on the same device; (c) on torch too. Tolerances: float64 through ``assert_close_fp`` (rtol
1e-10), as the op tests (tests/test_cross_attention.py, test_topk_regions.py,
test_info_nce.py)."""

from __future__ import annotations

import pytest
import torch

import art_fast
from tests._util import BACKEND_CASES, FAST_CASES, IGNORE, assert_close_fp, require

BACKENDS = FAST_CASES  # (device, backend), compared with "torch" on the same device
F64 = torch.float64


def _require(op: str, device: str, backend: str) -> None:
    require(op.split("-")[0], device, backend)


# Each case: (float inputs, fixed extra inputs, run(backend, *floats, *extras) -> the
# differentiable outputs). Odd sizes everywhere; B / G is dim 0 of every float input.

def _cross_attention(device):
    B, H, M, N, D = 3, 2, 5, 7, 3
    floats = [torch.randn(B, H, M, D, dtype=F64, device=device),
              torch.randn(B, H, N, D, dtype=F64, device=device),
              torch.randn(B, H, N, D, dtype=F64, device=device)]

    def run(backend, q, k, v):
        return art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)

    return floats, [], run


def _topk_regions(device):
    B, M, N, C = 3, 5, 11, 3
    floats = [torch.randn(B, M, N, dtype=F64, device=device),
              torch.randn(B, N, C, dtype=F64, device=device)]

    def run(backend, s, v):
        pooled, _idx, w = art_fast.topk_regions(s, v, 4, backend=backend)
        return pooled, w

    return floats, [], run


def _info_nce(reduction, device):
    G, M, N, D = 3, 5, 7, 6
    floats = [torch.randn(G, M, D, dtype=F64, device=device),
              torch.randn(G, N, D, dtype=F64, device=device)]
    t = torch.randint(0, N, (G, M), device=device)
    t[0, 1] = t[2, 4] = IGNORE

    def run(backend, a, c, t):
        return (art_fast.info_nce(a, c, t, temperature=0.3, reduction=reduction,
                                  backend=backend),)

    return floats, [t], run


CASES = {
    "cross_attention": _cross_attention,
    "topk_regions": _topk_regions,
    "info_nce-none": lambda device: _info_nce("none", device),
    "info_nce-mean": lambda device: _info_nce("mean", device),
    "info_nce-sum": lambda device: _info_nce("sum", device),
}
OPS = list(CASES)


def _case(op, device):
    floats, extras, run = CASES[op](device)
    outs = run("torch", *floats, *extras)
    cots = [torch.randn_like(o) for o in outs]

    def objective(backend, *xs):
        """sum_i <out_i, cot_i>: a scalar touching every output. ``xs``: the float inputs,
        then the extra inputs (the fixed ones when left out)."""
        fl, ex = xs[:len(floats)], xs[len(floats):] or extras
        return sum((o * c).sum() for o, c in zip(run(backend, *fl, *ex), cots))

    return floats, extras, run, objective


def _assert_grads(got, want, what):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is not None, f"{what}: gradient {i} is None"
        assert g.shape == w.shape, f"{what}: gradient {i} shape {g.shape} != {w.shape}"
        assert_close_fp(g, w, what=f"{what}: gradient {i}")


# (a) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("kind", ["leaf", "view"])
@pytest.mark.parametrize("op", OPS)
def test_grad_wrt_expanded_input(op, kind, device, backend):
    """Each float input in turn broadcast over dim 0 (stride 0): as a leaf, and as a view of a
    [1, ...] leaf, the gradient w.r.t. it (per row) and w.r.t. the base equal torch's."""
    _require(op, device, backend)
    floats, _extras, _run, objective = _case(op, device)
    for j in range(len(floats)):

        def grads(be, j=j):
            base = floats[j][:1].clone().requires_grad_(kind == "view")
            xe = base.expand_as(floats[j])
            if kind == "leaf":
                xe = xe.detach().requires_grad_()
            assert xe.stride(0) == 0
            xs = [xe if i == j else x for i, x in enumerate(floats)]
            wrt = (xe, base) if kind == "view" else (xe,)
            return torch.autograd.grad(objective(be, *xs), wrt)

        want = grads("torch")
        got = grads(backend)
        _assert_grads(got, want, f"{op} {backend} {kind} input {j}")
        # the rows differ: a gradient summed into row 0 cannot pass
        assert not torch.equal(want[0][1], torch.zeros_like(want[0][1]))


# (b) ---------------------------------------------------------------------------------------

def _double_backward(objective, backend, floats):
    xs = [x.clone().requires_grad_() for x in floats]
    gs = torch.autograd.grad(objective(backend, *xs), xs, create_graph=True)
    weights = [torch.randn(g.shape, dtype=g.dtype, generator=torch.Generator().manual_seed(i))
               for i, g in enumerate(gs)]
    weights = [w.to(g.device) for w, g in zip(weights, gs)]
    second = sum((g * g * w).sum() for g, w in zip(gs, weights))
    return torch.autograd.grad(second, xs, allow_unused=True)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_double_backward_matches_or_raises(op, device, backend):
    _require(op, device, backend)
    floats, _extras, _run, objective = _case(op, device)
    want = _double_backward(objective, "torch", floats)
    assert all(w is not None and w.abs().max() > 0 for w in want)
    try:
        got = _double_backward(objective, backend, floats)
    except RuntimeError as exc:
        assert "double backward" in str(exc), f"unclear error: {exc}"
        assert f"{backend} backend" in str(exc)
        return
    _assert_grads(got, want, f"{op} {backend} double backward")


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_func_grad_of_grad_matches_or_raises(op, device, backend):
    """torch.func.grad over torch.func.grad: torch's or a "double backward" RuntimeError."""
    _require(op, device, backend)
    floats, _extras, _run, objective = _case(op, device)

    def gg(be):
        first = torch.func.grad(lambda *xs: objective(be, *xs), argnums=0)
        return torch.func.grad(lambda *xs: first(*xs).pow(2).sum(),
                               argnums=tuple(range(len(floats))))(*floats)

    want = gg("torch")
    try:
        got = gg(backend)
    except RuntimeError as exc:
        assert "double backward" in str(exc), f"unclear error: {exc}"
        return
    _assert_grads(got, want, f"{op} {backend} func.grad(func.grad)")


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("op", ["cross_attention", "topk_regions", "info_nce-none"])
def test_create_graph_alone_still_works(op, device, backend):
    """create_graph=True without a second derivative: the first derivative as usual (the
    double-backward error is raised only when one is asked for; the fused mean / sum info_nce
    on cpu raises at once, see art_fast/ops/info_nce.py)."""
    _require(op, device, backend)
    floats, _extras, _run, objective = _case(op, device)
    xs = [x.clone().requires_grad_() for x in floats]
    want = torch.autograd.grad(objective("torch", *xs), xs)
    xs = [x.clone().requires_grad_() for x in floats]
    got = torch.autograd.grad(objective(backend, *xs), xs, create_graph=True)
    _assert_grads(got, want, f"{op} {backend} create_graph")


# (c) ---------------------------------------------------------------------------------------

def _poisoned_runs(bad, reduction, normalize, device, backend, dtype):
    """(loss, grad anchors, grad candidates) with NaN / inf anchors in ignored rows, the same
    with finite anchors there, and the ignored mask."""
    G, M, N, D = 3, 5, 7, 6
    a0 = torch.randn(G, M, D, dtype=dtype, device=device)
    c0 = torch.randn(G, N, D, dtype=dtype, device=device)
    t = torch.randint(0, N, (G, M), device=device)
    t[0, 1] = t[2, 4] = t[1, 0] = IGNORE
    cot = torch.randn((G, M) if reduction == "none" else (), dtype=dtype, device=device)

    def run(poison):
        a = a0.clone()
        if poison:
            a[0, 1] = bad  # a whole row
            a[2, 4, 3] = bad  # one element
            a[1, 0, ::2] = bad
        a.requires_grad_()
        c = c0.clone().requires_grad_()
        loss = art_fast.info_nce(a, c, t, temperature=0.2, normalize=normalize,
                                 reduction=reduction, backend=backend)
        ga, gc = torch.autograd.grad((loss * cot).sum(), (a, c))
        return loss.detach(), ga, gc

    return run(True), run(False), t == IGNORE


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_info_nce_ignored_rows_nonfinite_anchors(bad, reduction, normalize, device, backend):
    _require("info_nce", device, backend)
    (loss, ga, gc), (f_loss, f_ga, f_gc), ignored = _poisoned_runs(bad, reduction, normalize,
                                                                    device, backend, F64)
    assert torch.isfinite(loss).all()
    assert_close_fp(loss, f_loss, what="loss")
    assert torch.equal(ga[ignored], torch.zeros_like(ga[ignored])), "ignored rows' gradient"
    assert torch.equal(f_ga[ignored], torch.zeros_like(f_ga[ignored]))
    assert torch.isfinite(ga).all() and torch.isfinite(gc).all()
    assert_close_fp(ga[~ignored], f_ga[~ignored], what="other anchors' gradient")
    assert_close_fp(gc, f_gc, what="candidates' gradient")
    if reduction == "none":
        assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_info_nce_ignored_rows_nonfinite_anchors_low_precision(dtype, reduction, normalize,
                                                               device, backend):
    """16-bit: the same, bitwise (the ignored rows' values never reach the computation; a
    zero row would be 0 / 0 in a float16 F.normalize, whose eps 1e-12 rounds to 0)."""
    _require("info_nce", device, backend)
    poisoned, finite, ignored = _poisoned_runs(float("nan"), reduction, normalize, device,
                                               backend, dtype)
    for p, f in zip(poisoned, finite):
        assert torch.isfinite(p).all() and torch.equal(p, f)
    assert torch.equal(poisoned[1][ignored], torch.zeros_like(poisoned[1][ignored]))


# (d) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_func_grad(op, device, backend):
    _require(op, device, backend)
    floats, _extras, _run, objective = _case(op, device)
    argnums = tuple(range(len(floats)))

    def g(be):
        return torch.func.grad(lambda *xs: objective(be, *xs), argnums=argnums)(*floats)

    _assert_grads(g(backend), g("torch"), f"{op} {backend} func.grad")


V = 2  # the vmapped batch


def _batched(floats, extras):
    """Fresh inputs with a leading vmapped dim of V (the extras, targets, vmapped too)."""
    bf = [torch.randn(V, *x.shape, dtype=x.dtype, device=x.device) for x in floats]
    be = []
    for t in extras:
        tt = t.expand(V, *t.shape).clone()
        tt[1] = torch.randint(0, int(t.max()) + 1, t.shape, device=t.device)
        tt[1, 1, 2] = IGNORE
        be.append(tt)
    return bf, be


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("unbatched", [None, 0, -1])
@pytest.mark.parametrize("op", OPS)
def test_func_vmap(op, unbatched, device, backend):
    """vmap over a leading dim of every input (or all but the first / last float input, which
    is then shared by the samples)."""
    _require(op, device, backend)
    floats, extras, run, _objective = _case(op, device)
    bf, be = _batched(floats, extras)
    in_dims = [0] * (len(bf) + len(be))
    if unbatched is not None:
        bf[unbatched] = floats[unbatched]
        in_dims[unbatched % len(bf)] = None

    def v(b):
        return torch.func.vmap(lambda *xs: run(b, *xs), in_dims=tuple(in_dims))(*bf, *be)

    got, want = v(backend), v("torch")
    _assert_grads(got, want, f"{op} {backend} vmap")  # outputs, compared the same way
    loop = [run(backend, *[x if d is None else x[i] for x, d in zip(bf + be, in_dims)])
            for i in range(V)]
    for o, outs in enumerate(zip(*loop)):
        assert_close_fp(got[o], torch.stack(outs), what=f"{op} {backend} vmap vs loop")


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_func_vmap_of_grad(op, device, backend):
    """Per-sample gradients: vmap over torch.func.grad (the backward ops' vmap rules)."""
    _require(op, device, backend)
    floats, extras, _run, objective = _case(op, device)
    bf, be = _batched(floats, extras)
    argnums = tuple(range(len(bf)))

    def pg(b):
        loss = lambda *xs: objective(b, *xs)  # noqa: E731
        return torch.func.vmap(torch.func.grad(loss, argnums=argnums))(*bf, *be)

    _assert_grads(pg(backend), pg("torch"), f"{op} {backend} vmap(grad)")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_cross_attention_shared_query_per_sample_grad(device, backend):
    """vmap over grad w.r.t. a [1, H, M, D] query set shared by the B groups of each sample:
    dq summed over B per sample."""
    _require("cross_attention", device, backend)
    B, H, M, N, D = 3, 2, 5, 7, 3
    q = torch.randn(V, 1, H, M, D, dtype=F64, device=device)
    k = torch.randn(V, B, H, N, D, dtype=F64, device=device)
    v = torch.randn(V, B, H, N, D, dtype=F64, device=device)
    cot = torch.randn(B, H, M, D, dtype=F64, device=device)

    def pg(b):
        def loss(q, k, v):
            return (art_fast.cross_attention(q, k, v, backend=b) * cot).sum()
        return torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    _assert_grads(pg(backend), pg("torch"), f"{backend} shared q vmap(grad)")
