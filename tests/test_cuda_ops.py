"""The CUDA backend on the paper's shapes and on the shapes that pick the kernels' other paths
(DESIGN §7, §8): the general top-k path beyond N = 1024, the tiny / large InfoNCE
regimes and their boundary, head dims that are not a multiple of the tiles, shared queries,
and bitwise reproducibility. The odd shapes, ties, NaN and poisoned outputs are covered by the
op tests, which are parametrised over cuda-cuda as well. Every test here needs a GPU."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests._util import (
    HAS_CUDA,
    IGNORE,
    check_cross_attention,
    check_info_nce,
    check_topk_regions,
    make_nce,
    make_qkv,
    require_backend,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [2, 16])
@pytest.mark.parametrize("shared_q", [False, True])
def test_cross_attention_paper_shapes(dtype, M, shared_q):
    """Frames x heads = 64 x 8 (a slice of 32 x 16 frames), N = 196 patches, head dim 32."""
    require_backend("cross_attention", "cuda")
    check_cross_attention("cuda", "cuda", 64, 8, M, 196, 32, dtype, weights=M == 16,
                          shared_q=shared_q)


@pytest.mark.parametrize("M,N,D", [(64, 257, 64), (3, 1000, 24), (1, 1, 1), (33, 65, 96)])
def test_cross_attention_tiles_and_head_dims(M, N, D):
    require_backend("cross_attention", "cuda")
    check_cross_attention("cuda", "cuda", 2, 3, M, N, D, torch.float32, weights=True,
                          shared_q=True)


def test_cross_attention_float64_tight():
    require_backend("cross_attention", "cuda")
    check_cross_attention("cuda", "cuda", 3, 2, 5, 130, 40, torch.float64, weights=True,
                          shared_q=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_regions_paper_shapes(dtype):
    """B = frames x heads (a slice), M = 16 queries, N = 196 patches, k = 16, C = 32."""
    require_backend("topk_regions", "cuda")
    check_topk_regions("cuda", "cuda", 64, 16, 196, 32, 16, dtype)


@pytest.mark.parametrize("N,k", [(1024, 7), (1025, 16), (3000, 1), (2048, 2048), (1500, 300)])
def test_topk_regions_general_path(N, k):
    """N > 1024 sorts in global scratch; N = 1024 is the last shared-memory row."""
    require_backend("topk_regions", "cuda")
    check_topk_regions("cuda", "cuda", 2, 3, N, 5, k, torch.float32)


def test_topk_regions_general_path_ties_and_nan():
    require_backend("topk_regions", "cuda")
    s = torch.randint(0, 4, (2, 3, 1500)).double()
    s[0, 0, ::7] = float("nan")
    s[1, 2, :] = float("nan")
    check_topk_regions("cuda", "cuda", 2, 3, 1500, 4, 20, torch.float64, scores=s)


def test_topk_regions_wide_channels():
    """C > 256 is split over several channel chunks in the values' backward."""
    require_backend("topk_regions", "cuda")
    check_topk_regions("cuda", "cuda", 3, 4, 50, 700, 9, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [2, 16])
def test_info_nce_tiny_paper_shapes(dtype, K):
    """Tiny regime: G = B*T = 512 groups of M = N = K, d = 256."""
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", 512, K, K, 256, dtype)
    check_info_nce("cuda", "cuda", 512, K, K, 256, dtype, reduction="none")


@pytest.mark.parametrize("dtype", DTYPES)
def test_info_nce_large_paper_shapes(dtype):
    """Large regime: one group of M = N = B*K*T (8 * 16 * 16 = 2048), d = 256."""
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", 1, 2048, 2048, 256, dtype, same=True)
    check_info_nce("cuda", "cuda", 1, 2048, 2048, 256, dtype, reduction="none")


@pytest.mark.parametrize("M,N,D", [(64, 64, 31), (65, 64, 33), (64, 65, 1), (97, 3, 40),
                                   (5, 200, 300)])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_info_nce_regime_boundaries(M, N, D, normalize, reduction):
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", 3, M, N, D, torch.float32, normalize=normalize,
                   reduction=reduction, temperature=0.5)


# The large regime's tensor-core path (csrc/cuda/info_nce.cu, path (b)): tails in
# M, N (not multiples of 16 / of the 32 x 64 tile) and in D (not a multiple of 16; 45 and 19
# also not of 8: the scalar loads; 72 and 200: the 16-byte loads with a partial d chunk).
TC_SHAPES = [(2, 97, 131, 45), (1, 150, 77, 72), (1, 65, 300, 200), (3, 70, 33, 19)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G,M,N,D", TC_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_large_tensor_cores(dtype, G, M, N, D, reduction):
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", G, M, N, D, dtype, reduction=reduction)
    check_info_nce("cuda", "cuda", G, M, N, D, dtype, reduction=reduction, normalize=False,
                   temperature=3.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_info_nce_large_tensor_cores_same_tensor_and_sum(dtype):
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", 1, 150, 150, 40, dtype, same=True)
    check_info_nce("cuda", "cuda", 2, 97, 131, 45, dtype, reduction="sum", temperature=0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_info_nce_large_tensor_cores_ignored_rows_and_bits(dtype):
    """Ignored rows: loss and gradient exactly 0; two runs: the same bits (no atomics)."""
    require_backend("info_nce", "cuda")
    a, c, t = make_nce(1, 150, 130, 45, "cuda", ignore_frac=0.5)
    a, c = a.to(dtype), c.to(dtype)

    def run():
        x = [a.clone().requires_grad_(), c.clone().requires_grad_()]
        loss = art_fast.info_nce(x[0], x[1], t, reduction="none", backend="cuda")
        return [loss, *torch.autograd.grad(loss.sum(), x)]

    first, second = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    ignored = t == IGNORE
    assert ignored.any() and (~ignored).any()
    assert torch.equal(first[0][ignored], torch.zeros_like(first[0][ignored]))
    assert torch.equal(first[1][ignored], torch.zeros_like(first[1][ignored]))
    assert all(torch.isfinite(x).all() for x in first)


def test_info_nce_tf32_switch():
    """float32 in the large regime: the exact FMA path by default (the tests run with TF32
    off), TF32 tensor cores when torch allows TF32 for CUDA matmuls: other bits, TF32
    accuracy (~1e-3 relative), and back to the exact bits when switched off again."""
    require_backend("info_nce", "cuda")
    a, c, t = make_nce(1, 200, 260, 72, "cuda")
    a, c = a.float(), c.float()
    ref = reference.info_nce(a.double(), c.double(), t, reduction="none")

    def run():
        return art_fast.info_nce(a, c, t, reduction="none", backend="cuda")

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = run()
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = run()
        torch.backends.cuda.matmul.allow_tf32 = False
        again = run()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert torch.equal(exact, again)
    torch.testing.assert_close(exact.double(), ref, rtol=1e-5, atol=1e-5)
    if torch.cuda.get_device_capability()[0] >= 8:
        assert not torch.equal(exact, tf32), "allow_tf32 is not read by the CUDA info_nce"
        scale = float(ref.abs().max())
        assert float((tf32.double() - ref).abs().max()) <= 1e-2 * scale


@pytest.mark.parametrize("M,N", [(16, 16), (300, 300)])
def test_info_nce_float64_tight(M, N):
    require_backend("info_nce", "cuda")
    check_info_nce("cuda", "cuda", 2, M, N, 20, torch.float64, reduction="sum")
    check_info_nce("cuda", "cuda", 2, M, N, 20, torch.float64, reduction="none")


def _bitwise_twice(fn):
    first = fn()
    second = fn()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_bitwise_reproducible_on_gpu():
    """No atomics anywhere: the same inputs give the same bits, run after run."""
    require_backend("cross_attention", "cuda")
    dev = "cuda"
    q = torch.randn(1, 8, 16, 32, device=dev, requires_grad=True)
    k = torch.randn(64, 8, 196, 32, device=dev, requires_grad=True)
    v = torch.randn(64, 8, 196, 32, device=dev, requires_grad=True)

    def ca():
        out, w = art_fast.cross_attention(q.expand(64, -1, -1, -1), k, v, return_weights=True,
                                          backend="cuda")
        return [out, w, *torch.autograd.grad((out.sum() + w.square().sum()), (q, k, v))]

    s = torch.randn(64, 16, 1500, device=dev, requires_grad=True)
    vals = torch.randn(64, 1500, 32, device=dev, requires_grad=True)

    def tk():
        pooled, idx, w = art_fast.topk_regions(s, vals, 16, backend="cuda")
        return [pooled, idx, w, *torch.autograd.grad(pooled.sum() + w.sum(), (s, vals))]

    a = torch.randn(1, 700, 96, device=dev, requires_grad=True)
    t = torch.randint(0, 700, (1, 700), device=dev)

    def nce():
        loss = art_fast.info_nce(a, a, t, backend="cuda")
        return [loss, *torch.autograd.grad(loss, (a,))]

    for fn in (ca, tk, nce):
        _bitwise_twice(fn)


def test_runs_on_the_current_stream_and_device_guard():
    require_backend("cross_attention", "cuda")
    q, k, v = make_qkv(2, 2, 3, 50, 16, "cuda", torch.float32)
    stream = torch.cuda.Stream()
    expected = art_fast.cross_attention(q, k, v, backend="cuda")
    with torch.cuda.stream(stream):
        got = art_fast.cross_attention(q, k, v, backend="cuda")
    stream.synchronize()
    assert torch.equal(got, expected)


def test_kernels_check_direct_calls():
    """The compiled CUDA ops re-check what they rely on (torch.ops calls bypass the Python
    validation): errors, never out-of-bounds accesses."""
    require_backend("cross_attention", "cuda")
    q, k, v = make_qkv(2, 2, 3, 5, 4, "cuda", torch.float32)
    with pytest.raises(RuntimeError, match="v must have the shape of k"):
        torch.ops.art_fast.cross_attention_fwd(q, k, v[:, :, :4].contiguous(), 0.5, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.art_fast.cross_attention_fwd(q, k.transpose(2, 3), v, 0.5, False)
    with pytest.raises(RuntimeError, match="must be on the device of"):
        torch.ops.art_fast.cross_attention_fwd(q, k.cpu(), v, 0.5, False)
    s, vals = torch.randn(2, 3, 9, device="cuda"), torch.randn(2, 9, 4, device="cuda")
    with pytest.raises(RuntimeError, match="1 <= k <= N"):
        torch.ops.art_fast.topk_regions_fwd(s, vals, 10)
    a = torch.randn(2, 3, 8, device="cuda")
    with pytest.raises(RuntimeError, match="targets must have shape"):
        torch.ops.art_fast.info_nce_fwd(a, a, torch.zeros(2, 4, dtype=torch.long,
                                                          device="cuda"), 0.1, True)
    # out-of-range targets / indices reaching the kernels directly: NaN, no bad access
    bad_t = torch.tensor([[0, 1, 7], [2, -100, 0]], device="cuda")
    loss, _ = torch.ops.art_fast.info_nce_fwd(a, a, bad_t, 0.1, True)
    assert torch.isnan(loss[0, 2]) and torch.isfinite(loss[0, :2]).all() and loss[1, 1] == 0
    pooled, idx, w = torch.ops.art_fast.topk_regions_fwd(s, vals, 3)
    idx_bad = idx.clone()
    idx_bad[0, 0, 0] = 99
    gs, gv = torch.ops.art_fast.topk_regions_bwd(torch.ones_like(pooled), None, s, vals, idx_bad)
    assert torch.isnan(gs[0, 0]).all() and torch.isfinite(gs[1]).all()
    torch.cuda.synchronize()
