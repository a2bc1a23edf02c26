"""The Triton kernels of topk_regions (kernels/topk_regions.py) against the float64 reference
and the independent ranking oracle of tests/test_topk_regions.py: on CPU under
TRITON_INTERPRET=1 (tiny grids, see tests/conftest.py) and on CUDA (marked gpu)."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests import test_topk_regions as suite
from tests._util import fwd_bwd
from tests.conftest import TRITON_CASES, assert_close_fp, require_triton
from tests.test_library import _check_compiled

OP = "topk_regions"
check = suite.check


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize(
    "N,k,M", [(1, 1, 2), (7, 1, 16), (7, 7, 1), (33, 1, 2), (33, 33, 2), (33, 16, 16)]
)
def test_float32_vs_float64(device, N, k, M):
    require_triton(OP, device)
    check(device, "triton", 2, M, N, 24, k, torch.float32)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_float64_and_wide_values(device):
    """float64; C = 150 > the 128-wide value chunk of the kernels; B * M rows not a multiple
    of the row block."""
    require_triton(OP, device)
    check(device, "triton", 3, 3, 9, 150, 4, torch.float64)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, dtype):
    require_triton(OP, device)
    check(device, "triton", 2, 3, 33, 24, 8, dtype)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_ties_small(device):
    """Many equal scores (and -0.0 == +0.0): ties go to the lower index, k = 1 and k = N."""
    require_triton(OP, device)
    scores = torch.randint(0, 3, (2, 3, 12)).double()
    scores[0, 0] = 0.0
    scores[0, 1, ::2] = -0.0
    check(device, "triton", 2, 3, 12, 4, 1, torch.float32, scores=scores)
    check(device, "triton", 2, 3, 12, 4, 5, torch.float32, scores=scores)
    check(device, "triton", 2, 3, 12, 4, 12, torch.float64, scores=scores)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize(
    "case",
    ["test_ties_go_to_the_lower_index", "test_nan_ranks_lowest",
     "test_large_magnitude_and_noncontiguous", "test_outputs_fully_written_and_reproducible"],
)
def test_general_suite_cases(device, case):
    """The edge-case tests of tests/test_topk_regions.py, on the triton backend."""
    require_triton(OP, device)
    getattr(suite, case)(device, "triton")


@pytest.mark.parametrize("device", TRITON_CASES)
def test_only_one_output_used(device):
    """Backward with no gradient for the weights (None: no dw input), or none for pooled."""
    require_triton(OP, device)
    s = torch.randn(2, 3, 9, device=device, dtype=torch.float64)
    v = torch.randn(2, 9, 5, device=device, dtype=torch.float64)
    g_pool = torch.randn(2, 3, 5, device=device, dtype=torch.float64)
    g_w = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    for cot in [(g_pool, None, None), (None, None, g_w)]:
        grads = fwd_bwd(lambda s, v: art_fast.topk_regions(s, v, 4, backend="triton"),
                        (s, v), cot)[1]
        truth = fwd_bwd(lambda s, v: reference.topk_regions(s, v, 4), (s, v), cot)[1]
        for g, t in zip(grads, truth):
            assert_close_fp(g, t)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_opcheck(device):
    require_triton(OP, device)
    from art_fast.kernels import topk_regions as kmod

    s = torch.randn(2, 3, 11, device=device, requires_grad=True)
    v = torch.randn(2, 11, 5, device=device, requires_grad=True)
    for args in [(s, v, 4), (s, v, 11), (s, v, 1)]:
        torch.library.opcheck(kmod.topk_regions_fwd, args)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_compile_fullgraph(device):
    require_triton(OP, device)
    s = torch.randn(2, 3, 20, device=device, requires_grad=True)
    v = torch.randn(2, 20, 6, device=device, requires_grad=True)

    def fn(s, v):
        return art_fast.topk_regions(s * 1.5, v, 5, backend="triton")

    _check_compiled(fn, (s, v), (s, v))


# ---- direct calls of the custom ops with non-contiguous inputs (issue 11) ------------------
# art_fast.topk_regions makes its inputs contiguous, but the ops themselves are public: the
# backward must read the same contiguous tensors as the forward, whatever autograd saved.

def _views(kind, s, v):
    B = s.shape[0]
    if kind == "scores transposed":
        return s.transpose(1, 2), v
    if kind == "values step-sliced":
        return s, v[..., ::2]
    if kind == "values expanded over B (stride 0)":
        return s, v.expand(B, -1, -1)
    if kind == "scores expanded over M (stride 0), values transposed":
        return s.expand(-1, 4, -1), v.transpose(1, 2)
    raise ValueError(kind)


def _leaves(kind, B, M, N, C, device, dtype):
    shapes = {
        "scores transposed": ((B, N, M), (B, N, C)),
        "values step-sliced": ((B, M, N), (B, N, 2 * C)),
        "values expanded over B (stride 0)": ((B, M, N), (1, N, C)),
        "scores expanded over M (stride 0), values transposed": ((B, 1, N), (B, C, N)),
    }[kind]
    return [torch.randn(*sh, device=device, dtype=dtype, requires_grad=True) for sh in shapes]


NONCONTIG_KINDS = ["scores transposed", "values step-sliced", "values expanded over B (stride 0)",
                   "scores expanded over M (stride 0), values transposed"]


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", NONCONTIG_KINDS)
def test_direct_op_noncontiguous(device, dtype, kind):
    """art_fast_triton::topk_regions_fwd called directly with non-contiguous scores/values and
    non-contiguous cotangents: outputs and gradients (torch.autograd.grad through the op's
    autograd) match the float64 reference on the same views."""
    require_triton(OP, device)
    from art_fast.kernels import topk_regions as kmod

    B, M, N, C, k = 2, 4, 11, 5, 4
    leaves = _leaves(kind, B, M, N, C, device, dtype)
    s, v = _views(kind, *leaves)
    g_pool = torch.randn(B, C, M, device=device, dtype=dtype).transpose(1, 2)
    g_w = torch.randn(B, M, 2 * k, device=device, dtype=dtype)[..., ::2]
    pooled, idx, w = kmod.topk_regions_fwd(s, v, k)
    grads = torch.autograd.grad((pooled, w), leaves, (g_pool, g_w))
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    t_pooled, t_idx, t_w = reference.topk_regions(*_views(kind, *leaves64), k)
    t_grads = torch.autograd.grad((t_pooled, t_w), leaves64, (g_pool.double(), g_w.double()))
    assert torch.equal(idx, t_idx)
    assert_close_fp(pooled, t_pooled, what=f"pooled ({kind})")
    assert_close_fp(w, t_w, what=f"weights ({kind})")
    for name, g, t in zip(["grad scores", "grad values"], grads, t_grads):
        assert_close_fp(g, t, what=f"{name} ({kind})")


@pytest.mark.parametrize("device", TRITON_CASES)
def test_direct_bwd_op_noncontiguous(device):
    """art_fast_triton::topk_regions_bwd called directly with non-contiguous inputs, indices
    and cotangents gives bitwise what it gives for their contiguous copies."""
    require_triton(OP, device)
    from art_fast.kernels import topk_regions as kmod

    B, M, N, C, k = 2, 4, 11, 5, 4
    for kind in NONCONTIG_KINDS:
        s, v = (x.detach() for x in _views(kind, *_leaves(kind, B, M, N, C, device,
                                                          torch.float64)))
        _, idx, _ = kmod.topk_regions_fwd(s, v, k)
        idx_nc = idx.transpose(1, 2).contiguous().transpose(1, 2)
        g_pool = torch.randn(B, C, M, device=device, dtype=torch.float64).transpose(1, 2)
        g_w = torch.randn(B, M, 2 * k, device=device, dtype=torch.float64)[..., ::2]
        got = kmod.topk_regions_bwd(g_pool, g_w, s, v, idx_nc)
        want = kmod.topk_regions_bwd(*(x.contiguous() for x in (g_pool, g_w, s, v, idx)))
        for g, t in zip(got, want):
            assert g.is_contiguous() and torch.equal(g, t), kind


@pytest.mark.parametrize("device", TRITON_CASES)
def test_opcheck_noncontiguous(device):
    """opcheck (fake kernels' strides, autograd registration) with non-contiguous inputs."""
    require_triton(OP, device)
    from art_fast.kernels import topk_regions as kmod

    for kind in ["scores transposed", "scores expanded over M (stride 0), values transposed"]:
        s, v = _views(kind, *_leaves(kind, 2, 4, 11, 5, device, torch.float32))
        torch.library.opcheck(kmod.topk_regions_fwd, (s, v, 4))


# ---- launch parameters: rows in registers (issue 11) -----------------------------------------

def test_launch_params():
    """The register budget rule (docs/kernels/topk_regions.md): the forward holds at most 16
    elements of its [BLOCK_R, BLOCK_N] score tile per thread up to N = 16384 (4 warps and up
    to 16 rows per program for rows up to 2048 wide, then one row and 8 / 16 / 32 warps), 32
    at N = 32768 (= MAX_N: spills, still correct); the backward's dense rows are built in
    chunks of at most 2048 columns at 4 warps, whatever N."""
    pytest.importorskip("triton")
    from art_fast.kernels import topk_regions as kmod

    # the paper shape: scores [4096, 16, 196], values [4096, 196, 32], k = 16
    assert tuple(kmod._fwd_params(196, 16, 32)) == (8, 256, 16, 32, 4)
    assert tuple(kmod._bwd_rows_params(196, 16, 32)) == (8, 256, 16, 32, 4)
    for N in [1, 2, 7, 33, 196, 1000, 2048, 2049, 4096, 8192, 16384, 32768]:
        f = kmod._fwd_params(N, 16, 32)
        assert f.block_n >= N and f.block_n == kmod.pow2(N, 2)
        per_thread = f.block_r * f.block_n / (32 * f.num_warps)
        assert per_thread <= (16 if N <= 16384 else 32), (N, f)
        assert f.num_warps in (4, 8, 16, 32)
        b = kmod._bwd_rows_params(N, 16, 32)
        assert b.block_n <= 2048 and b.block_r * b.block_n <= 2048 and b.num_warps == 4
    with pytest.raises(RuntimeError, match="N <= 32768"):
        kmod._check_n(kmod.MAX_N + 1)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_long_rows(device):
    """N = 2100: the forward's one-row-per-program path (BLOCK_N = 4096) and the backward's
    dense rows in two chunks (2048 + 52 columns); the top scores placed on both sides of the
    chunk boundary (and ties across it: the lower index wins)."""
    require_triton(OP, device)
    N = 2100
    scores = torch.randn(1, 3, N, dtype=torch.float64)
    scores[0, 0, [5, 2047, 2048, 2099]] = 10.0  # ties across the chunk boundary
    scores[0, 1, 2050:2060] = 20.0 + torch.arange(10.0)  # all selected in the second chunk
    check(device, "triton", 1, 3, N, 6, 6, torch.float32, scores=scores)
    check(device, "triton", 1, 3, N, 6, 3, torch.float64, scores=scores)


# ---- GPU: the paper shapes (DESIGN §7): scores = q k^T per head, B = 32 x 16 frames x 8
# heads, M = K = 2 and 16 queries, N = 196 patches, k_region = 16, C = head dim 32 -----------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [2, 16])
def test_paper_shapes_gpu(dtype, M):
    require_triton(OP, "cuda")
    check("cuda", "triton", 32 * 16 * 8, M, 196, 32, 16, dtype)
