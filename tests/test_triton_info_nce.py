"""The Triton kernels of info_nce (kernels/info_nce.py), both regimes, against the float64
reference: on CPU under TRITON_INTERPRET=1 (tiny grids, see tests/conftest.py) and on CUDA
(marked gpu). ``regime`` forces the tiny-group kernels (several groups per program) or the
large-group kernels (online log-sum-exp over candidate tiles, split row/column backward) on the
same small shapes; under the interpreter the large kernels use 16 x 16 tiles, so M, N = 33
spans three tiles."""

from __future__ import annotations

import pytest
import torch

import art_fast
from tests import test_info_nce as suite
from tests.conftest import TRITON_CASES, require_triton
from tests.test_library import _check_compiled

OP = "info_nce"
REGIMES = [pytest.param(1, id="tiny"), pytest.param(2, id="large")]
check = suite.check


@pytest.fixture
def regime(request, monkeypatch):
    """Route art_fast.info_nce(backend="triton") to the kernels of one regime."""
    from art_fast.kernels import info_nce as kmod

    monkeypatch.setattr(kmod, "REGIME", request.param)
    return request.param


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
@pytest.mark.parametrize(
    "G,M,N,D,reduction,normalize",
    [(3, 1, 1, 8, "none", True), (2, 2, 7, 20, "mean", False), (2, 16, 33, 16, "sum", True),
     (1, 33, 2, 24, "mean", True), (2, 7, 16, 5, "none", False)],
)
def test_float32_vs_float64(device, regime, G, M, N, D, reduction, normalize):
    require_triton(OP, device)
    check(device, "triton", G, M, N, D, torch.float32, reduction=reduction, normalize=normalize,
          temperature=0.1 if normalize else 3.0, ignore_frac=0.3)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchors_are_the_candidates(device, regime, dtype):
    """The same tensor as anchors and candidates: both gradients add up."""
    require_triton(OP, device)
    check(device, "triton", 3, 9, 9, 12, dtype, same=True, reduction="sum")
    mn = 32 if regime == 1 and dtype == torch.float64 else 33  # the tiny limit in float64
    check(device, "triton", 1, mn, mn, 8, dtype, same=True, reduction="mean")


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, regime, dtype):
    require_triton(OP, device)
    check(device, "triton", 4, 16, 16, 64, dtype)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
@pytest.mark.parametrize(
    "case,args",
    [("test_all_rows_ignored", (8, 5, 6)),
     ("test_ignored_rows_have_zero_loss_and_gradient", (8, 5, 6)),
     ("test_large_logits_do_not_overflow", (16, 8)),
     ("test_zero_vectors_normalize_like_f_normalize", ())],
)
def test_general_suite_cases(device, regime, case, args):
    """Edge-case tests of tests/test_info_nce.py, on the triton backend, in each regime."""
    require_triton(OP, device)
    getattr(suite, case)(device, "triton", *args)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize(
    "case,args",
    [("test_all_rows_ignored", (1, 100, 120)), ("test_large_logits_do_not_overflow", (1, 150))],
)
def test_general_suite_cases_large_groups(device, case, args):
    """Larger groups, regime chosen automatically (the large kernels)."""
    require_triton(OP, device)
    getattr(suite, case)(device, "triton", *args)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
def test_reproducible_and_fully_written(device, regime):
    """Bitwise equal results on a second run with every new tensor NaN-filled first."""
    require_triton(OP, device)
    a, c, t = suite.make(2, 20, 33, 24, device)
    a, c = a.float(), c.float()

    def run():
        x = [a.clone().requires_grad_(), c.clone().requires_grad_()]
        loss = art_fast.info_nce(x[0], x[1], t, reduction="none", backend="triton")
        return [loss, *torch.autograd.grad(loss.sum(), x)]

    first = run()
    torch.use_deterministic_algorithms(True)
    second = run()
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    assert not any(torch.isnan(x).any() for x in first)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("regime", REGIMES, indirect=True)
@pytest.mark.parametrize(
    "G,M,N,D,dtype,normalize",
    [(2, 9, 17, 200, torch.float32, True), (1, 5, 3, 33, torch.float64, False),
     (1, 6, 18, 300, torch.float32, False), (1, 17, 4, 300, torch.float64, True)],
)
def test_d_chunks(device, regime, G, M, N, D, dtype, normalize):
    """D not a multiple of the D chunks and D over them: the logits K-loop over D (BLOCK_K,
    both regimes), the large backward's grid axis over D chunks and the tiny backward's loop
    over them (BLOCK_D). Ignored rows included."""
    require_triton(OP, device)
    from art_fast.kernels import info_nce as kmod

    if D == 300:  # several chunks of both kinds
        assert D > 2 * kmod._block_k(D, dtype) and D > 2 * kmod._block_d(D, dtype)
        assert D > 2 * kmod._tiny_meta(M, N, D, dtype, backward=True)["BLOCK_D"]
    check(device, "triton", G, M, N, D, dtype, reduction="none", normalize=normalize,
          temperature=0.1 if normalize else 3.0, ignore_frac=0.3)


def test_regime_choice():
    """Tiny: M, N <= 64 and a [pow2(M), pow2(N)] logits tile of <= TINY_MAX_BYTES in the
    accumulation dtype (so float64 stops at 32 x 64); D does not count (D chunks)."""
    from art_fast.kernels import info_nce as kmod

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


@pytest.mark.parametrize("device", TRITON_CASES)
def test_forced_tiny_beyond_the_limit_raises(device):
    require_triton(OP, device)
    from art_fast.kernels import info_nce as kmod

    a = torch.randn(1, 64, 4, device=device, dtype=torch.float64)
    t = torch.zeros(1, 64, dtype=torch.long, device=device)
    with pytest.raises(RuntimeError, match=str(kmod.TINY_MAX_BYTES)):
        kmod._fwd_host(a, a, t, 0.1, True, kmod.TINY)
    loss, _lse = kmod._fwd_host(a, a, t, 0.1, True, kmod.AUTO)  # auto: the large kernels
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("device", TRITON_CASES)
def test_opcheck(device, monkeypatch):
    """The per-row and the fused entries, in both regimes (schema, fake kernel, autograd)."""
    require_triton(OP, device)
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


@pytest.mark.parametrize("device", TRITON_CASES)
def test_compile_fullgraph(device):
    require_triton(OP, device)
    a = torch.randn(3, 5, 16, device=device, requires_grad=True)
    c = torch.randn(3, 7, 16, device=device, requires_grad=True)
    t = torch.randint(0, 7, (3, 5), device=device)
    t[0, 0] = -100
    same = torch.arange(5, device=device).expand(3, 5)

    def fn(a, c):
        return art_fast.info_nce(a, c, t, temperature=0.2, backend="triton") + art_fast.info_nce(
            a, a, same, reduction="sum", backend="triton")

    _check_compiled(fn, (a, c), (a, c))


# ---- GPU: the paper shapes (DESIGN §7): tiny regime G = B x T = 32 x 16 frames, M = N = K
# (2 and 16), d = 256; large regime one group of M = N = B x K x T = 8192, d = 256 ------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G,M", [(512, 2), (512, 16), (1, 8192)])
@pytest.mark.parametrize("same", [False, True])
def test_paper_shapes_gpu(dtype, G, M, same):
    require_triton(OP, "cuda")
    check("cuda", "triton", G, M, M, 256, dtype, same=same, ignore_frac=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_large_regime_memory_is_linear_gpu():
    """M = N = 8192: forward + backward allocate O(M + N) beyond the inputs and their
    gradients, far below the 256 MiB of the float32 [M, N] logits."""
    require_triton(OP, "cuda")
    M, D = 8192, 256
    a = torch.randn(1, M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, M, (1, M), device="cuda")
    art_fast.info_nce(a, c, t, backend="triton").backward()  # compile + autotune first
    a.grad = c.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    art_fast.info_nce(a, c, t, backend="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grads = 2 * M * D * 2  # bfloat16 gradients of a and c
    assert extra <= grads + 64 * M * 4 + (1 << 20), extra
