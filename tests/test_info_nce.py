"""art_fast.info_nce (DESIGN §3.3, §8) on every backend (tests/_util.py): torch, cpu and triton
(under TRITON_INTERPRET=1 on CPU tensors), and cuda and triton on a GPU (marked gpu), in both
regimes: many tiny groups (M, N <= 64) and few large groups (the tiled online log-sum-exp
path).

- against the float64 reference: the spec's sample cases, tiny and large groups, 16-bit,
  anchors that are the candidates, large logits, zero vectors, D over several chunks, the fused
  mean / sum path; gradcheck;
- edge cases: ignored rows (-100), all rows ignored, poisoned outputs and reproducibility, bad
  inputs;
- the Triton kernels' own cases: the regime choice and launch parameters, the tiny limit,
  torch.compile, the paper shapes and the large regime's memory on a GPU.

``regime`` (an indirect parameter): on the triton backend the small shapes run twice, with the
tiny-group kernels (several groups per program) and with the large-group kernels (online
log-sum-exp over candidate tiles, split row / column backward) forced
(art_fast.kernels.info_nce.REGIME); under the interpreter the large kernels use 16 x 16 tiles,
so M, N = 33 spans three tiles. The other backends and the larger shapes: the automatic choice.

Backends: ``FAST_CASES`` (cpu, triton, cuda) where a test compares with the float64 reference
(the torch backend is that reference); ``BACKEND_CASES`` (torch too) for the bad inputs. The
ignored rows' semantics on every backend (torch included): tests/test_autograd_contracts.py.
The Triton interpreter runs the small shapes only (``grid``); the other backends run those too.
The cuda backend's paper shapes, regime boundaries and tensor-core path:
tests/test_cuda_ops.py; opcheck of every entry (the spec's samples) on every backend and
torch.compile on cpu / torch: tests/test_library.py.
"""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests import _util as U
from tests._util import check_info_nce as check
from tests._util import make_nce as make

OP = "info_nce"
AUTO, TINY, LARGE = 0, 1, 2  # art_fast.kernels.info_nce's (test_regime_choice checks them)


def _regimes(cases, forced: bool) -> list:
    """(device, backend, regime): the triton cases once per forced regime (tiny, large) when
    ``forced``; the others (and every case when not ``forced``) with the automatic choice."""
    out = []
    for c in cases:
        device, backend = c.values
        if forced and backend == "triton":
            out += [pytest.param(device, backend, r, id=f"{c.id}-{name}", marks=c.marks)
                    for r, name in ((TINY, "tiny"), (LARGE, "large"))]
        else:
            out.append(pytest.param(device, backend, AUTO, id=c.id, marks=c.marks))
    return out


# REGIME_CASES: for shapes both regimes can run (M, N <= 64; float64 up to 32 x 64)
REGIME_CASES = _regimes(U.FAST_CASES, forced=True)
AUTO_CASES = _regimes(U.FAST_CASES, forced=False)
BACKENDS = "device,backend,regime"


@pytest.fixture
def regime(request, monkeypatch):
    """Route art_fast.info_nce(backend="triton") to the kernels of one regime (AUTO: as is)."""
    if request.param != AUTO:
        from art_fast.kernels import info_nce as kmod

        monkeypatch.setattr(kmod, "REGIME", request.param)
    return request.param


def params(names: str, *grids) -> dict:
    """The parametrize arguments of a test over ``grids`` (from ``grid``), regime indirect."""
    return dict(argnames=f"{BACKENDS},{names}" if names else BACKENDS,
                argvalues=[p for g in grids for p in g], indirect=["regime"])


# ---- the spec's sample cases ----------------------------------------------------------------

@pytest.mark.parametrize(**params("dtype", U.grid(AUTO_CASES, **U.SPEC_DTYPES)))
def test_spec_cases(device, backend, regime, dtype):
    """Every sample case of the spec (art_fast/ops/info_nce.py: SPEC): the loss, and the
    gradients of a random cotangent on it, against the reference on float64 copies of the
    inputs."""
    U.check_spec_cases(OP, device, backend, dtype)


# ---- against the float64 reference -------------------------------------------------------------

# Not on the Triton interpreter (~0.1 s an evaluation; gradcheck needs hundreds): its backward
# is held to the float64 reference by the other tests.
@pytest.mark.parametrize(**params("reduction,normalize,G,M,N,D", U.grid(
    AUTO_CASES,
    [(r, n, *s) for s in [(3, 4, 6, 5), (1, 1, 1, 3), (1, 70, 90, 9)]
     for n in (True, False) for r in ("mean", "sum", "none")])))
def test_gradcheck_float64(device, backend, regime, reduction, normalize, G, M, N, D):
    U.require(OP, device, backend)
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


@pytest.mark.parametrize(**params("G,M,N,D,reduction,normalize", U.grid(
    REGIME_CASES, interpret=[
        (3, 1, 1, 8, "none", True), (2, 2, 7, 20, "mean", False), (2, 16, 33, 16, "sum", True),
        (1, 33, 2, 24, "mean", True), (2, 7, 16, 5, "none", False)])))
def test_float32_vs_float64(device, backend, regime, G, M, N, D, reduction, normalize):
    U.require(OP, device, backend)
    check(device, backend, G, M, N, D, torch.float32, reduction=reduction, normalize=normalize,
          temperature=0.1 if normalize else 3.0, ignore_frac=0.3)


@pytest.mark.parametrize(**params("MN,normalize,reduction", U.grid(
    AUTO_CASES,
    # reduction: the fused path, the per-row path
    [(mn, n, r) for r in ("mean", "none") for n in (True, False) for mn in [1, 2, 7, 16, 33, 64]])))
def test_tiny_groups_float32(device, backend, regime, MN, normalize, reduction):
    U.require(OP, device, backend)
    check(device, backend, 50, MN, MN, 256, torch.float32, normalize=normalize,
          temperature=0.1 if normalize else 5.0, reduction=reduction)


@pytest.mark.parametrize(**params("M,N,D,reduction", U.grid(
    AUTO_CASES, [(*s, r) for r in ("mean", "none")
                 for s in [(300, 300, 67), (65, 7, 67), (100, 130, 256), (1000, 1000, 67)]])))
def test_large_groups_float32(device, backend, regime, M, N, D, reduction):
    U.require(OP, device, backend)
    check(device, backend, 2 if M < 500 else 1, M, N, D, torch.float32, reduction=reduction)


LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize(**params(
    "dtype,G,M,N,D",
    U.grid(AUTO_CASES, [(dt, *s) for dt in LOW for s in [(64, 16, 16, 256), (1, 200, 260, 64)]]),
    U.grid(REGIME_CASES, interpret=[(dt, 4, 16, 16, 64) for dt in LOW])))
def test_low_precision(device, backend, regime, dtype, G, M, N, D):
    U.require(OP, device, backend)
    check(device, backend, G, M, N, D, dtype)


@pytest.mark.parametrize(**params("G,M,D", U.grid(AUTO_CASES, [(20, 8, 32), (1, 150, 40)])))
def test_anchors_are_the_candidates(device, backend, regime, G, M, D):
    """The spatial MTC level: anchors and candidates are the very same tensor; the gradient
    of both uses adds up."""
    U.require(OP, device, backend)
    check(device, backend, G, M, M, D, torch.float32, same=True)
    check(device, backend, G, M, M, D, torch.float64, same=True, reduction="sum")


@pytest.mark.parametrize(**params("dtype", U.grid(
    REGIME_CASES, interpret=[(torch.float32,), (torch.float64,)])))
def test_anchors_are_the_candidates_small(device, backend, regime, dtype):
    """The same tensor as anchors and candidates, in groups both regimes can run."""
    U.require(OP, device, backend)
    check(device, backend, 3, 9, 9, 12, dtype, same=True, reduction="sum")
    mn = 32 if regime == TINY and dtype == torch.float64 else 33  # the tiny limit in float64
    check(device, backend, 1, mn, mn, 8, dtype, same=True, reduction="mean")


@pytest.mark.parametrize(**params("G,M,N,D,dtype,normalize", U.grid(REGIME_CASES, interpret=[
    (2, 9, 17, 200, torch.float32, True), (1, 5, 3, 33, torch.float64, False),
    (1, 6, 18, 300, torch.float32, False), (1, 17, 4, 300, torch.float64, True)])))
def test_d_chunks(device, backend, regime, G, M, N, D, dtype, normalize):
    """D not a multiple of the D chunks and D over them (Triton: the logits K-loop over D
    (BLOCK_K, both regimes), the large backward's grid axis over D chunks and the tiny
    backward's loop over them (BLOCK_D)). Ignored rows included."""
    U.require(OP, device, backend)
    if backend == "triton" and D == 300:  # several chunks of both kinds
        from art_fast.kernels import info_nce as kmod

        assert D > 2 * kmod._block_k(D, dtype) and D > 2 * kmod._block_d(D, dtype)
        assert D > 2 * kmod._tiny_meta(M, N, D, dtype, backward=True)["BLOCK_D"]
    check(device, backend, G, M, N, D, dtype, reduction="none", normalize=normalize,
          temperature=0.1 if normalize else 3.0, ignore_frac=0.3)


@pytest.mark.parametrize(**params(
    "G,M", U.grid(REGIME_CASES, interpret=[(16, 8)]), U.grid(AUTO_CASES, interpret=[(1, 150)])))
def test_large_logits_do_not_overflow(device, backend, regime, G, M):
    """Logits of magnitude ~1e4 (no normalisation, temperature 1e-3). The gradients are
    ill-conditioned in float32 (eager itself is far from float64), so float32 is held to 2x
    eager float32's error; float64 to the usual tolerance."""
    U.require(OP, device, backend)
    outs, grads = check(device, backend, G, M, M, 16, torch.float32, normalize=False,
                        temperature=1e-3, scale=2.5, eager_rule=True, reduction="none")
    assert all(torch.isfinite(x).all() for x in outs + grads)
    check(device, backend, G, M, M, 16, torch.float64, normalize=False, temperature=1e-3,
          scale=2.5, reduction="none")


@pytest.mark.parametrize(**params("", REGIME_CASES))
def test_zero_vectors_normalize_like_f_normalize(device, backend, regime):
    U.require(OP, device, backend)
    a, c, t = make(4, 6, 6, 8, device)
    a[0, 1] = 0.0
    c[2, 3] = 0.0
    for reduction in ("mean", "none"):
        check(device, backend, 4, 6, 6, 8, torch.float64, reduction=reduction, inputs=(a, c, t))
        check(device, backend, 4, 6, 6, 8, torch.float32, reduction=reduction, inputs=(a, c, t))


# ---- ignored rows (their semantics on every backend, torch included, with NaN / inf anchors:
# tests/test_autograd_contracts.py) -----------------------------------------------------------

@pytest.mark.parametrize(**params("G,M,N", U.grid(REGIME_CASES, interpret=[(8, 5, 6)]),
                                  U.grid(AUTO_CASES, interpret=[(1, 100, 120)])))
def test_all_rows_ignored(device, backend, regime, G, M, N):
    U.require(OP, device, backend)
    a = torch.randn(G, M, 16, device=device, requires_grad=True)
    c = torch.randn(G, N, 16, device=device, requires_grad=True)
    t = torch.full((G, M), U.IGNORE, device=device)
    for reduction in ("mean", "sum"):
        loss = art_fast.info_nce(a, c, t, reduction=reduction, backend=backend)
        ga, gc = torch.autograd.grad(loss, (a, c))
        assert loss.item() == 0.0
        assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gc, torch.zeros_like(gc))
    per_row = art_fast.info_nce(a, c, t, reduction="none", backend=backend)
    assert torch.equal(per_row, torch.zeros_like(per_row))


@pytest.mark.parametrize(**params(
    "G,M,N", U.grid(REGIME_CASES, interpret=[(8, 5, 6)]), U.grid(AUTO_CASES, [(1, 100, 120)])))
def test_ignored_rows_have_zero_loss_and_gradient(device, backend, regime, G, M, N):
    U.require(OP, device, backend)
    a, c, t = make(G, M, N, 16, device, ignore_frac=0.5)
    a = a.float().requires_grad_()
    c = c.float()
    loss = art_fast.info_nce(a, c, t, reduction="none", backend=backend)
    (ga,) = torch.autograd.grad(loss.sum(), (a,))
    ignored = t == U.IGNORE
    assert ignored.any() and (~ignored).any()
    assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))
    assert torch.equal(ga[ignored], torch.zeros_like(ga[ignored]))
    assert (loss[~ignored] > 0).all()


# The kernels' outputs and reproducibility (not torch's: FAST_CASES).
@pytest.mark.parametrize(**params(
    "G,M,N,D", U.grid(AUTO_CASES, [(40, 16, 16, 48), (1, 300, 280, 48)]),
    U.grid(REGIME_CASES, interpret=[(2, 20, 33, 24)])))
def test_reproducible_and_fully_written(device, backend, regime, G, M, N, D):
    """Bitwise equal results on a second run with every new tensor NaN-filled first."""
    U.require(OP, device, backend)
    a, c, t = make(G, M, N, D, device)
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


@pytest.mark.parametrize(**params("G,M,N,D,reduction,same", U.grid(
    AUTO_CASES, [(*s, r, same) for same in (False, True) for r in ("mean", "sum")
                 for s in FUSED_SHAPES])))
def test_fused_reductions(device, backend, regime, G, M, N, D, reduction, same):
    U.require(OP, device, backend)
    if same:
        N = M
    check(device, backend, G, M, N, D, torch.float32, reduction=reduction, same=same)
    check(device, backend, G, M, N, D, torch.float32, reduction=reduction, same=same,
          normalize=False, temperature=3.0)


@pytest.mark.parametrize(**params("G,M,N,D", U.grid(AUTO_CASES, FUSED_SHAPES)))
def test_fused_without_grad_matches(device, backend, regime, G, M, N, D):
    """No autograd (no_grad, or no input requiring grad): the loss alone, bitwise the loss that
    the gradient-computing pass returns."""
    U.require(OP, device, backend)
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


@pytest.mark.parametrize(**params("G,M,N,D", U.grid(AUTO_CASES, FUSED_SHAPES)))
def test_fused_backward_scales_and_repeats(device, backend, regime, G, M, N, D):
    """The backward scales the saved gradients by the upstream gradient, and may run twice."""
    U.require(OP, device, backend)
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


@pytest.mark.parametrize(**params("G,M,N", U.grid(AUTO_CASES, [(40, 16, 16), (1, 300, 280)])))
def test_fused_reproducible(device, backend, regime, G, M, N):
    U.require(OP, device, backend)
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


@pytest.mark.parametrize(**params("G,M", U.grid(AUTO_CASES, [(16, 8), (1, 150)])))
def test_fused_large_logits(device, backend, regime, G, M):
    U.require(OP, device, backend)
    outs, grads = check(device, backend, G, M, M, 16, torch.float32, normalize=False,
                        temperature=1e-3, scale=2.5, eager_rule=True, reduction="mean")
    assert all(torch.isfinite(x).all() for x in outs + grads)


@pytest.mark.parametrize(**params("G,M,N,D", U.grid(
    AUTO_CASES, [(1, 100, 90, 16)], interpret=[(4, 8, 8, 16), (4, 6, 5, 8)])))
def test_fused_zero_vectors(device, backend, regime, G, M, N, D):
    """Zero anchor and candidate rows (tiny direct, tiny with padded copies, large)."""
    U.require(OP, device, backend)
    a, c, t = make(G, M, N, D, device)
    a[0, 1] = 0.0
    c[0, 3] = 0.0
    t[0, 1] = 3
    kw = dict(temperature=0.5, reduction="mean")

    def fast(a, c):
        return art_fast.info_nce(a, c, t, backend=backend, **kw)

    def ref(a, c):
        return reference.info_nce(a, c, t, **kw)

    cot = (torch.tensor(1.0, dtype=torch.float64, device=device),)
    outs, grads = U.fwd_bwd(fast, (a, c), cot, torch.float32)
    t_outs, t_grads = U.fwd_bwd(ref, (a, c), cot, torch.float64)
    U.assert_close_fp(outs[0], t_outs[0], None, "loss")
    for x, y in zip(grads, t_grads):
        U.assert_close_fp(x, y, None, "grads")
    assert float(grads[0][0, 1].abs().max()) > 0  # the zero row's gradient is g / eps


# ---- bad inputs ------------------------------------------------------------------------------

def _bad_cases(device):
    a = torch.randn(3, 4, 8, device=device)
    c = torch.randn(3, 5, 8, device=device)
    t = torch.randint(0, 5, (3, 4), device=device)
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


@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
@pytest.mark.parametrize("bad", range(len(_bad_cases("cpu"))))
def test_bad_input(device, backend, bad):
    U.require(OP, device, backend)
    args, kwargs, exc, match = _bad_cases(device)[bad]
    with pytest.raises(exc, match=match):
        art_fast.info_nce(*args, backend=backend, **kwargs)


def test_cpp_kernel_checks_direct_calls():
    U.require_backend(OP, "cpu")
    a, c = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    t = torch.tensor([[0, 1, 7], [0, 1, 2]])  # 7 >= N
    with pytest.raises(RuntimeError, match="target"):
        torch.ops.art_fast.info_nce_fwd(a, c, t, 0.1, True)


# ---- torch.compile (the cpu and torch backends: tests/test_library.py) -----------------------

@pytest.mark.parametrize("device,backend", U.COMPILE_CASES)
def test_compile_fullgraph(device, backend):
    U.require(OP, device, backend)
    a = torch.randn(3, 5, 16, device=device, requires_grad=True)
    c = torch.randn(3, 7, 16, device=device, requires_grad=True)
    t = torch.randint(0, 7, (3, 5), device=device)
    t[0, 0] = -100
    same = torch.arange(5, device=device).expand(3, 5)

    def fn(a, c):
        return art_fast.info_nce(a, c, t, temperature=0.2, backend=backend) + art_fast.info_nce(
            a, a, same, reduction="sum", backend=backend)

    U.check_compiled(fn, (a, c), (a, c))


# ---- Triton: the regimes -------------------------------------------------------------------

def test_regime_choice():
    """Tiny: M, N <= 64 and a [pow2(M), pow2(N)] logits tile of <= TINY_MAX_BYTES in the
    accumulation dtype (so float64 stops at 32 x 64); D does not count (D chunks)."""
    from art_fast.kernels import info_nce as kmod

    assert (kmod.AUTO, kmod.TINY, kmod.LARGE) == (AUTO, TINY, LARGE)
    f32, bf16, f64 = torch.float32, torch.bfloat16, torch.float64
    assert kmod.TINY_MAX_BYTES == 16384
    for dtype in (f32, bf16, torch.float16, f64):
        assert kmod._regime(16, 16, 256, dtype, kmod.AUTO) == kmod.TINY  # the paper shape
        assert kmod._regime(2, 2, 256, dtype, kmod.AUTO) == kmod.TINY
        assert kmod._regime(32, 64, 4096, dtype, kmod.AUTO) == kmod.TINY
        assert kmod._regime(65, 8, 32, dtype, kmod.AUTO) == kmod.LARGE
        assert kmod._regime(8, 8, 32, dtype, kmod.LARGE) == kmod.LARGE
    assert kmod._regime(64, 64, 256, f32, kmod.AUTO) == kmod.TINY
    assert kmod._regime(64, 64, 256, bf16, kmod.AUTO) == kmod.TINY
    assert kmod._regime(64, 64, 256, f64, kmod.AUTO) == kmod.LARGE  # 32 KiB of fp64 logits
    assert kmod._regime(33, 64, 8, f64, kmod.AUTO) == kmod.LARGE  # pow2(33) = 64
    with pytest.raises(RuntimeError, match="tiny regime"):
        kmod._regime(65, 8, 32, f32, kmod.TINY)
    with pytest.raises(RuntimeError, match="TINY_MAX_BYTES"):  # names the limit in bytes
        kmod._regime(64, 64, 8, f64, kmod.TINY)


def test_tiny_launch_parameters():
    """Warps (4 to 16) from the bytes a tiny program keeps live; power-of-two D chunks; groups
    per program shrink with the logits tile. The paper shape (M = N = 16, D = 256): 4 warps,
    8 groups a program, 32-wide D chunks in the backward (fp32 / bf16)."""
    from art_fast.kernels import info_nce as kmod

    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for M, N in [(1, 1), (2, 2), (16, 16), (64, 16), (16, 64), (32, 32), (32, 64), (64, 64)]:
            for D in (1, 5, 33, 256, 3000):
                if not kmod._tiny_fits(M, N, D, dtype):
                    continue
                for backward in (False, True):
                    meta = kmod._tiny_meta(M, N, D, dtype, backward)
                    assert meta["num_warps"] in (4, 8, 16), (M, N, D, dtype, meta)
                    assert 1 <= meta["GROUPS"] <= 8
                    assert meta["BLOCK_K"] in (16, 32, 64)
                    if backward:
                        assert meta["BLOCK_D"] in (16, 32, 64), (M, N, D, dtype, meta)
    for dtype in (torch.float32, torch.bfloat16):
        meta = kmod._tiny_meta(16, 16, 256, dtype, True)
        assert (meta["num_warps"], meta["GROUPS"], meta["BLOCK_D"]) == (4, 8, 32)


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_forced_tiny_beyond_the_limit_raises(device, backend):
    U.require(OP, device, backend)
    from art_fast.kernels import info_nce as kmod

    a = torch.randn(1, 64, 4, device=device, dtype=torch.float64)
    t = torch.zeros(1, 64, dtype=torch.long, device=device)
    with pytest.raises(RuntimeError, match=str(kmod.TINY_MAX_BYTES)):
        kmod._fwd_host(a, a, t, 0.1, True, kmod.TINY)
    loss, _lse = kmod._fwd_host(a, a, t, 0.1, True, kmod.AUTO)  # auto: the large kernels
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_opcheck_regimes(device, backend, monkeypatch):
    """The per-row and the fused entries, in both regimes (schema, fake kernel, autograd); the
    spec's samples in the automatic regime on every backend: tests/test_library.py."""
    U.require(OP, device, backend)
    from art_fast.kernels import info_nce as kmod

    a = torch.randn(3, 4, 8, device=device, requires_grad=True)
    c = torch.randn(3, 6, 8, device=device, requires_grad=True)
    t = torch.tensor([[0, 5, -100, 2]] * 3, device=device)
    for regime in (kmod.TINY, kmod.LARGE):
        monkeypatch.setattr(kmod, "REGIME", regime)
        for args in [(a, c, t, 0.1, True), (a, c, t, 2.0, False),
                     (a, a, t.clamp(max=3), 0.5, True)]:
            torch.library.opcheck(kmod.info_nce_fwd, args)
            for mean in (True, False):
                torch.library.opcheck(kmod.info_nce_fused, (*args, mean, True))


# ---- GPU, Triton: the paper shapes (DESIGN §7): tiny regime G = B x T = 32 x 16 frames,
# M = N = K (2 and 16), d = 256; large regime one group of M = N = B x K x T = 8192, d = 256 ----
@pytest.mark.parametrize("device,backend", [U.case("cuda", "triton")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G,M", [(512, 2), (512, 16), (1, 8192)])
@pytest.mark.parametrize("same", [False, True])
def test_paper_shapes_gpu(device, backend, dtype, G, M, same):
    U.require(OP, device, backend)
    check(device, backend, G, M, M, 256, dtype, same=same, ignore_frac=0.05)


@pytest.mark.parametrize("device,backend", [U.case("cuda", "triton")])
def test_large_regime_memory_is_linear_gpu(device, backend):
    """M = N = 8192: forward + backward allocate O(M + N) beyond the inputs and their
    gradients, far below the 256 MiB of the float32 [M, N] logits."""
    U.require(OP, device, backend)
    M, D = 8192, 256
    a = torch.randn(1, M, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, M, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, M, (1, M), device=device)
    art_fast.info_nce(a, c, t, backend=backend).backward()  # compile + autotune first
    a.grad = c.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    art_fast.info_nce(a, c, t, backend=backend).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grads = 2 * M * D * 2  # bfloat16 gradients of a and c
    assert extra <= grads + 64 * M * 4 + (1 << 20), extra
