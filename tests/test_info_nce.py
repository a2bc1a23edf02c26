"""art_fast.info_nce against the reference (DESIGN §3.3, §8), in both regimes: many tiny
groups (M, N <= 64) and few large groups (the tiled online log-sum-exp path)."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests._util import fwd_bwd
from tests.conftest import FAST_CASES, assert_close_fp, require_backend

OP = "info_nce"
IGNORE = -100


def make(G, M, N, D, device="cpu", ignore_frac=0.2, same=False):
    a = torch.randn(G, M, D, dtype=torch.float64, device=device)
    c = a if same else torch.randn(G, N, D, dtype=torch.float64, device=device)
    t = torch.randint(0, N, (G, M), device=device)
    t[torch.rand(G, M, device=device) < ignore_frac] = IGNORE
    return a, c, t


def check(device, backend, G, M, N, D, dtype, *, normalize=True, temperature=0.1,
          reduction="mean", same=False, scale=1.0, eager_rule=False, ignore_frac=0.2,
          inputs=None):
    a, c, t = make(G, M, N, D, device, ignore_frac, same) if inputs is None else inputs
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
    if dtype in (torch.float16, torch.bfloat16) or eager_rule:
        e_outs, e_grads = fwd_bwd(ref, (a, c), (cot,), dtype)
    assert outs[0].dtype == dtype and outs[0].shape == t_outs[0].shape
    assert_close_fp(outs[0], t_outs[0], e_outs[0] if e_outs else None, f"loss {dtype}", eager_rule)
    for i, name in enumerate(["grad anchors", "grad candidates"]):
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)
    return outs, grads


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("G,M,N,D", [(3, 4, 6, 5), (1, 1, 1, 3), (1, 70, 90, 9)])
def test_gradcheck_float64(device, backend, reduction, normalize, G, M, N, D):
    require_backend(OP, backend)
    a, c, t = make(G, M, N, D, device)
    a.requires_grad_()
    c.requires_grad_()

    def f(a, c):
        return art_fast.info_nce(a, c, t, temperature=0.5, normalize=normalize,
                                 reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(f, (a, c))


def test_reference_gradcheck_float64():
    a, c, t = make(3, 4, 6, 5)
    a.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c: reference.info_nce(a, c, t, 0.5), (a, c))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("MN", [1, 2, 7, 16, 33, 64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])  # the fused path, the per-row path
def test_tiny_groups_float32(device, backend, MN, normalize, reduction):
    require_backend(OP, backend)
    check(device, backend, 50, MN, MN, 256, torch.float32, normalize=normalize,
          temperature=0.1 if normalize else 5.0, reduction=reduction)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("M,N,D", [(300, 300, 67), (65, 7, 67), (100, 130, 256), (1000, 1000, 67)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_large_groups_float32(device, backend, M, N, D, reduction):
    require_backend(OP, backend)
    check(device, backend, 2 if M < 500 else 1, M, N, D, torch.float32, reduction=reduction)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G,M,N,D", [(64, 16, 16, 256), (1, 200, 260, 64)])
def test_low_precision(device, backend, dtype, G, M, N, D):
    require_backend(OP, backend)
    check(device, backend, G, M, N, D, dtype)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,D", [(20, 8, 32), (1, 150, 40)])
def test_anchors_are_the_candidates(device, backend, G, M, D):
    """The spatial MTC level: anchors and candidates are the very same tensor; the gradient
    of both uses adds up."""
    require_backend(OP, backend)
    check(device, backend, G, M, M, D, torch.float32, same=True)
    check(device, backend, G, M, M, D, torch.float64, same=True, reduction="sum")


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N", [(8, 5, 6), (1, 100, 120)])
def test_all_rows_ignored(device, backend, G, M, N):
    require_backend(OP, backend)
    a = torch.randn(G, M, 16, device=device, requires_grad=True)
    c = torch.randn(G, N, 16, device=device, requires_grad=True)
    t = torch.full((G, M), IGNORE, device=device)
    for reduction in ("mean", "sum"):
        loss = art_fast.info_nce(a, c, t, reduction=reduction, backend=backend)
        ga, gc = torch.autograd.grad(loss, (a, c))
        assert loss.item() == 0.0
        assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gc, torch.zeros_like(gc))
    per_row = art_fast.info_nce(a, c, t, reduction="none", backend=backend)
    assert torch.equal(per_row, torch.zeros_like(per_row))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N", [(8, 5, 6), (1, 100, 120)])
def test_ignored_rows_have_zero_loss_and_gradient(device, backend, G, M, N):
    require_backend(OP, backend)
    a, c, t = make(G, M, N, 16, device, ignore_frac=0.5)
    a = a.float().requires_grad_()
    c = c.float()
    loss = art_fast.info_nce(a, c, t, reduction="none", backend=backend)
    (ga,) = torch.autograd.grad(loss.sum(), (a,))
    ignored = t == IGNORE
    assert ignored.any() and (~ignored).any()
    assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))
    assert torch.equal(ga[ignored], torch.zeros_like(ga[ignored]))
    assert (loss[~ignored] > 0).all()


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M", [(16, 8), (1, 150)])
def test_large_logits_do_not_overflow(device, backend, G, M):
    """Logits of magnitude ~1e4 (no normalisation, temperature 1e-3). The gradients are
    ill-conditioned in float32 (eager itself is far from float64), so float32 is held to 2x
    eager float32's error; float64 to the usual tolerance."""
    require_backend(OP, backend)
    outs, grads = check(device, backend, G, M, M, 16, torch.float32, normalize=False,
                        temperature=1e-3, scale=2.5, eager_rule=True, reduction="none")
    assert all(torch.isfinite(x).all() for x in outs + grads)
    check(device, backend, G, M, M, 16, torch.float64, normalize=False, temperature=1e-3,
          scale=2.5, reduction="none")


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_zero_vectors_normalize_like_f_normalize(device, backend):
    require_backend(OP, backend)
    a, c, t = make(4, 6, 6, 8, device)
    a[0, 1] = 0.0
    c[2, 3] = 0.0
    for reduction in ("mean", "none"):
        check(device, backend, 4, 6, 6, 8, torch.float64, reduction=reduction, inputs=(a, c, t))
        check(device, backend, 4, 6, 6, 8, torch.float32, reduction=reduction, inputs=(a, c, t))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N", [(40, 16, 16), (1, 300, 280)])
def test_reproducible_and_fully_written(device, backend, G, M, N):
    require_backend(OP, backend)
    a, c, t = make(G, M, N, 48, device)
    a, c = a.float(), c.float()

    def run():
        x = [a.clone().requires_grad_(), c.clone().requires_grad_()]
        loss = art_fast.info_nce(x[0], x[1], t, reduction="none", backend=backend)
        return [loss, *torch.autograd.grad(loss.sum(), x)]

    first = run()
    torch.use_deterministic_algorithms(True)  # every new tensor starts NaN-filled
    second = run()
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    assert not any(torch.isnan(x).any() for x in first)


# ---- the fused path (reduction "mean" / "sum": loss and gradients in one kernel pass) -------
# Shapes: tiny direct (float32, D % 16 == 0, M, N % 4 == 0), tiny with padded copies, large.
FUSED_SHAPES = [(16, 8, 12, 32), (9, 7, 5, 20), (1, 150, 130, 40), (2, 70, 64, 32)]


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N,D", FUSED_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("same", [False, True])
def test_fused_reductions(device, backend, G, M, N, D, reduction, same):
    require_backend(OP, backend)
    if same:
        N = M
    check(device, backend, G, M, N, D, torch.float32, reduction=reduction, same=same)
    check(device, backend, G, M, N, D, torch.float32, reduction=reduction, same=same,
          normalize=False, temperature=3.0)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N,D", FUSED_SHAPES)
def test_fused_without_grad_matches(device, backend, G, M, N, D):
    """No autograd (no_grad, or no input requiring grad): the loss alone, bitwise the loss that
    the gradient-computing pass returns."""
    require_backend(OP, backend)
    a, c, t = make(G, M, N, D, device)
    a, c = a.float(), c.float()
    for reduction in ("mean", "sum"):
        plain = art_fast.info_nce(a, c, t, reduction=reduction, backend=backend)
        with torch.no_grad():
            nograd = art_fast.info_nce(a.requires_grad_(), c, t, reduction=reduction,
                                       backend=backend)
        a.requires_grad_(False)
        withgrad = art_fast.info_nce(a.clone().requires_grad_(), c, t, reduction=reduction,
                                     backend=backend)
        assert torch.equal(plain, nograd) and torch.equal(plain, withgrad.detach())
        ref = reference.info_nce(a.double(), c.double(), t, 0.1, True, reduction)
        torch.testing.assert_close(plain.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N,D", FUSED_SHAPES)
def test_fused_backward_scales_and_repeats(device, backend, G, M, N, D):
    """The backward scales the saved gradients by the upstream gradient, and may run twice."""
    require_backend(OP, backend)
    a, c, t = make(G, M, N, D, device)
    a, c = a.float().requires_grad_(), c.float().requires_grad_()
    loss = art_fast.info_nce(a, c, t, backend=backend)
    g1 = torch.autograd.grad(loss * 3.0, (a, c), retain_graph=True)
    g2 = torch.autograd.grad(loss * 3.0, (a, c))
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))
    ar, cr = a.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    ref = torch.autograd.grad(reference.info_nce(ar, cr, t, 0.1, True, "mean") * 3.0, (ar, cr))
    for x, y in zip(g1, ref):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-6)
    # Only one input requiring grad.
    (gc,) = torch.autograd.grad(art_fast.info_nce(a.detach(), c, t, backend=backend), (c,))
    torch.testing.assert_close(gc.double(), ref[1] / 3.0, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M,N", [(40, 16, 16), (1, 300, 280)])
def test_fused_reproducible(device, backend, G, M, N):
    require_backend(OP, backend)
    a, c, t = make(G, M, N, 48, device)
    a, c = a.float(), c.float()

    def run():
        x = [a.clone().requires_grad_(), c.clone().requires_grad_()]
        loss = art_fast.info_nce(x[0], x[1], t, backend=backend)
        return [loss, *torch.autograd.grad(loss, x)]

    first = run()
    torch.use_deterministic_algorithms(True)  # every new tensor starts NaN-filled
    try:
        second = run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    assert not any(torch.isnan(x).any() for x in first)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("G,M", [(16, 8), (1, 150)])
def test_fused_large_logits(device, backend, G, M):
    require_backend(OP, backend)
    outs, grads = check(device, backend, G, M, M, 16, torch.float32, normalize=False,
                        temperature=1e-3, scale=2.5, eager_rule=True, reduction="mean")
    assert all(torch.isfinite(x).all() for x in outs + grads)


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_fused_zero_vectors(device, backend):
    require_backend(OP, backend)
    for G, M, N, D in [(4, 8, 8, 16), (4, 6, 5, 8), (1, 100, 90, 16)]:  # direct, copies, large
        a, c, t = make(G, M, N, D, device)
        a[0, 1] = 0.0
        c[0, 3] = 0.0
        t[0, 1] = 3
        kw = dict(temperature=0.5, reduction="mean")

        def fast(a, c, t=t, kw=kw):
            return art_fast.info_nce(a, c, t, backend=backend, **kw)

        def ref(a, c, t=t, kw=kw):
            return reference.info_nce(a, c, t, **kw)

        cot = (torch.tensor(1.0, dtype=torch.float64, device=device),)
        outs, grads = fwd_bwd(fast, (a, c), cot, torch.float32)
        t_outs, t_grads = fwd_bwd(ref, (a, c), cot, torch.float64)
        assert_close_fp(outs[0], t_outs[0], None, "loss")
        for x, y in zip(grads, t_grads):
            assert_close_fp(x, y, None, "grads")
        assert float(grads[0][0, 1].abs().max()) > 0  # the zero row's gradient is g / eps


def _bad_cases():
    a, c, t = torch.randn(3, 4, 8), torch.randn(3, 5, 8), torch.randint(0, 5, (3, 4))
    bad_t = t.clone()
    bad_t[1, 2] = 5
    neg_t = t.clone()
    neg_t[0, 0] = -1
    return [
        ((a[0], c, t), {}, ValueError, r"anchors must have shape \[G, M, D\]"),
        ((a, c[:2], t), {}, ValueError, r"candidates must have shape .* G = 3"),
        ((a, c[..., :7], t), {}, ValueError, r"candidates must have shape .* D = 8"),
        ((a, c, t[:, :3]), {}, ValueError, r"targets must have shape \[G, M\] = \(3, 4\)"),
        ((a, c, t.int()), {}, TypeError, r"targets must be int64"),
        ((a, c, t.tolist()), {}, TypeError, r"targets must be a torch.Tensor"),
        ((a, c, bad_t), {}, ValueError, r"targets must be in \[0, N = 5\) or -100, got \[5\]"),
        ((a, c, neg_t), {}, ValueError, r"targets must be in \[0, N = 5\) or -100, got \[-1\]"),
        ((a, c.double(), t), {}, TypeError, r"candidates must have the dtype of anchors"),
        ((a, c[:, :0], t), {}, ValueError, r"candidates must not be empty"),
        ((a, c, t), {"temperature": 0.0}, ValueError, r"temperature must be a finite float > 0"),
        ((a, c, t), {"temperature": -1}, ValueError, r"temperature must be a finite float > 0"),
        ((a, c, t), {"temperature": float("inf")}, ValueError, r"temperature must be a finite"),
        ((a, c, t), {"reduction": "avg"}, ValueError, r"reduction must be one of"),
        ((a, c, t), {"normalize": "yes"}, TypeError, r"normalize must be a bool"),
        ((a, c.to("meta"), t), {}, ValueError, r"candidates must be on the device of anchors"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    if backend == "cpu":
        require_backend(OP, backend)
    args, kwargs, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        art_fast.info_nce(*args, backend=backend, **kwargs)


def test_cpp_kernel_checks_direct_calls():
    require_backend(OP, "cpu")
    a, c = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    t = torch.tensor([[0, 1, 7], [0, 1, 2]])  # 7 >= N
    with pytest.raises(RuntimeError, match="target"):
        torch.ops.art_fast.info_nce_fwd(a, c, t, 0.1, True)
