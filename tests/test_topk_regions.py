"""art_fast.topk_regions (DESIGN §3.2, §8) on every backend (tests/_util.py): torch, cpu and
triton (under TRITON_INTERPRET=1 on CPU tensors), and cuda and triton on a GPU (marked gpu),
against the float64 reference and an independent ranking oracle (``oracle_indices``).

- against the reference: the spec's sample cases, shapes, k = 1 / 16 / N, 16-bit, wide values,
  long rows, large magnitudes, non-contiguous inputs; gradcheck;
- edge cases: ties (to the lower index, -0.0 == +0.0), NaN (ranks lowest), poisoned outputs and
  reproducibility, one output unused, bad inputs;
- the Triton kernels' own cases: launch parameters, rows over one chunk, direct calls of the
  art_fast_triton:: entries with non-contiguous inputs, torch.compile, the paper shapes on a GPU.

Backends: ``FAST_CASES`` (cpu, triton, cuda) where a test compares with the float64 reference
(the torch backend is that reference); ``BACKEND_CASES`` (torch too) where it checks behaviour:
the tie and NaN rules against the oracle, bad inputs. The Triton interpreter runs the small
shapes only (``grid``); the other backends run those too. The cuda backend's paper shapes and
general path: tests/test_cuda_ops.py; opcheck of every entry (the spec's samples) on every
backend and torch.compile on cpu / torch: tests/test_library.py.
"""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests import _util as U
from tests._util import check_topk_regions as check

OP = "topk_regions"


# ---- the spec's sample cases ----------------------------------------------------------------

@pytest.mark.parametrize("device,backend,dtype", U.grid(U.FAST_CASES, **U.SPEC_DTYPES))
def test_spec_cases(device, backend, dtype):
    """Every sample case of the spec (art_fast/ops/topk_regions.py: SPEC): pooled, indices,
    weights, and the gradients of a random cotangent on pooled, against the reference on
    float64 copies of the inputs."""
    U.check_spec_cases(OP, device, backend, dtype)


# ---- against the float64 reference -------------------------------------------------------------

# Not on the Triton interpreter (~0.1 s an evaluation; gradcheck needs hundreds): its backward
# is held to the float64 reference by the other tests.
@pytest.mark.parametrize("device,backend,N,k", U.grid(
    U.FAST_CASES, [(1, 1), (7, 1), (7, 3), (7, 7), (37, 16)]))
def test_gradcheck_float64(device, backend, N, k):
    U.require(OP, device, backend)
    s = torch.randn(2, 3, N, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn(2, N, 5, dtype=torch.float64, device=device, requires_grad=True)
    f = lambda s, v: art_fast.topk_regions(s, v, k, backend=backend)[0::2]  # noqa: E731
    assert torch.autograd.gradcheck(f, (s, v))


def test_reference_gradcheck_float64():
    s = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: reference.topk_regions(s, v, 4)[0::2], (s, v))


# k = 1, 16, N at every (M, N) (the duplicates, e.g. k = 1 = N, once)
_F32 = sorted({(M, N, 32, k) for N in [1, 7, 196, 197, 257] for M in [1, 3, 64]
               for k in (1, N, min(16, N))}, key=lambda v: (v[1], v[0], v[3]))


@pytest.mark.parametrize("device,backend,M,N,C,k", U.grid(
    U.FAST_CASES, _F32,
    interpret=[(M, N, 24, k) for N, k, M in
               [(1, 1, 2), (7, 1, 16), (7, 7, 1), (33, 1, 2), (33, 33, 2), (33, 16, 16)]]))
def test_float32_vs_float64(device, backend, M, N, C, k):
    U.require(OP, device, backend)
    check(device, backend, 2, M, N, C, k, torch.float32)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_float64_and_wide_values(device, backend):
    """float64; C = 150 > the 128-wide value chunk of the Triton kernels; B * M rows not a
    multiple of the row block."""
    U.require(OP, device, backend)
    check(device, backend, 3, 3, 9, 150, 4, torch.float64)


LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("device,backend,dtype,B,M,N,k", U.grid(
    U.FAST_CASES, [(dt, 3, 5, N, k) for dt in LOW for N, k in [(196, 16), (7, 7), (257, 1)]],
    interpret=[(dt, 2, 3, 33, 8) for dt in LOW]))
def test_low_precision(device, backend, dtype, B, M, N, k):
    U.require(OP, device, backend)
    check(device, backend, B, M, N, 24, k, dtype)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_large_magnitude_and_noncontiguous(device, backend):
    U.require(OP, device, backend)
    # scores ~1e4: the selected softmax is one-hot to float32 precision and the scores'
    # gradient is ~1e-10, below float32's reach at rtol 1e-5: held to 2x eager float32's error.
    check(device, backend, 3, 4, 197, 16, 16, torch.float32,
          scores=1e4 * torch.randn(3, 4, 197), noncontig=True, eager_rule=True)
    check(device, backend, 3, 4, 197, 16, 16, torch.float64,
          scores=1e4 * torch.randn(3, 4, 197), noncontig=True)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_long_rows(device, backend):
    """N = 2100: the Triton forward's one-row-per-program path (BLOCK_N = 4096) and the
    backward's dense rows in two chunks (2048 + 52 columns); the top scores placed on both
    sides of the chunk boundary (and ties across it: the lower index wins)."""
    U.require(OP, device, backend)
    N = 2100
    scores = torch.randn(1, 3, N, dtype=torch.float64)
    scores[0, 0, [5, 2047, 2048, 2099]] = 10.0  # ties across the chunk boundary
    scores[0, 1, 2050:2060] = 20.0 + torch.arange(10.0)  # all selected in the second chunk
    check(device, backend, 1, 3, N, 6, 6, torch.float32, scores=scores)
    check(device, backend, 1, 3, N, 6, 3, torch.float64, scores=scores)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_only_one_output_used(device, backend):
    """Backward with no gradient for the weights (None: no dw input), or none for pooled."""
    U.require(OP, device, backend)
    s = torch.randn(2, 3, 9, device=device, dtype=torch.float64)
    v = torch.randn(2, 9, 5, device=device, dtype=torch.float64)
    g_pool = torch.randn(2, 3, 5, device=device, dtype=torch.float64)
    g_w = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    for cot in [(g_pool, None, None), (None, None, g_w)]:
        grads = U.fwd_bwd(lambda s, v: art_fast.topk_regions(s, v, 4, backend=backend),
                        (s, v), cot)[1]
        truth = U.fwd_bwd(lambda s, v: reference.topk_regions(s, v, 4), (s, v), cot)[1]
        for g, t in zip(grads, truth):
            U.assert_close_fp(g, t)


# ---- ties and NaN: the ranking rule, on every backend (the oracle is independent of torch) ---

@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
def test_ties_small(device, backend):
    """Many equal scores (and -0.0 == +0.0): ties go to the lower index, k = 1 and k = N."""
    U.require(OP, device, backend)
    scores = torch.randint(0, 3, (2, 3, 12)).double()
    scores[0, 0] = 0.0
    scores[0, 1, ::2] = -0.0
    check(device, backend, 2, 3, 12, 4, 1, torch.float32, scores=scores)
    check(device, backend, 2, 3, 12, 4, 5, torch.float32, scores=scores)
    check(device, backend, 2, 3, 12, 4, 12, torch.float64, scores=scores)


@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
def test_ties_go_to_the_lower_index(device, backend):
    U.require(OP, device, backend)
    scores = torch.randint(0, 3, (4, 6, 50)).double()  # many equal scores
    scores[0, 0] = 0.0
    scores[0, 1, ::2] = -0.0  # -0.0 == +0.0: still a tie
    check(device, backend, 4, 6, 50, 8, 10, torch.float32, scores=scores)
    check(device, backend, 4, 6, 50, 8, 50, torch.float64, scores=scores)
    idx = art_fast.topk_regions(scores[:1, :1].float().to(device),
                                torch.randn(1, 50, 2, device=device), 5, backend=backend)[1]
    assert idx.tolist() == [[[0, 1, 2, 3, 4]]]


@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
def test_nan_ranks_lowest(device, backend):
    U.require(OP, device, backend)
    s = torch.tensor([[[0.5, float("nan"), -float("inf"), 2.0, float("nan"), -1.0]]],
                     device=device)
    v = torch.randn(1, 6, 3, device=device)
    pooled, idx, w = art_fast.topk_regions(s, v, 4, backend=backend)
    assert idx.tolist() == [[[3, 0, 5, 2]]]  # NaN after -inf
    assert torch.isfinite(pooled).all() and torch.isfinite(w).all()
    assert w[0, 0, 3] == 0  # exp(-inf) = 0
    pooled, idx, w = art_fast.topk_regions(s, v, 6, backend=backend)
    assert idx.tolist() == [[[3, 0, 5, 2, 1, 4]]]
    # a NaN in the selection makes the row NaN, as the softmax over it does
    assert torch.isnan(w).all() and torch.isnan(pooled).all()
    ref = reference.topk_regions(s, v, 6)
    assert torch.equal(ref[1], idx) and torch.isnan(ref[2]).all()
    # a mixed batch: random NaN / -inf sprinkled in, against the oracle and the reference
    s = torch.randn(3, 7, 40, dtype=torch.float64)
    s[torch.rand_like(s) < 0.2] = float("nan")
    s[torch.rand_like(s) < 0.2] = -float("inf")
    check(device, backend, 3, 7, 40, 4, 12, torch.float64, scores=s)


# The kernels' outputs and reproducibility (not torch's: FAST_CASES).
@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_outputs_fully_written_and_reproducible(device, backend):
    U.require(OP, device, backend)
    s = torch.randn(6, 5, 77, device=device)
    v = torch.randn(6, 77, 9, device=device)
    g = torch.randn(6, 5, 9, device=device)

    def run():
        x = [s.clone().requires_grad_(), v.clone().requires_grad_()]
        pooled, idx, w = art_fast.topk_regions(*x, 11, backend=backend)
        return [pooled, idx, w, *torch.autograd.grad(pooled, x, g)]

    expected = run()
    torch.use_deterministic_algorithms(True)  # fills every new tensor with NaN first
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            got = run()
            assert all(torch.equal(a, b) for a, b in zip(expected, got))
    finally:
        torch.set_num_threads(threads)
    assert not any(torch.isnan(t.float()).any() for t in expected)


# ---- bad inputs ------------------------------------------------------------------------------

BAD = [
    (lambda s, v: (s[0], v, 3), ValueError, r"scores must have shape"),
    (lambda s, v: (s, v[:, :, 0], 3), ValueError, r"values must have shape \[B, N, C\]"),
    (lambda s, v: (s, v[:2], 3), ValueError, r"values must have shape .* B = 3"),
    (lambda s, v: (s, v[:, :5], 3), ValueError, r"values must have shape .* N = 7"),
    (lambda s, v: (s, v, 0), ValueError, r"k must be in \[1, N = 7\]"),
    (lambda s, v: (s, v, 8), ValueError, r"k must be in \[1, N = 7\]"),
    (lambda s, v: (s, v, 2.0), TypeError, r"k must be an int"),
    (lambda s, v: (s, v, True), TypeError, r"k must be an int"),
    (lambda s, v: (s, v.double(), 3), TypeError, r"values must have the dtype of scores"),
    (lambda s, v: (s.long(), v, 3), TypeError, r"scores must be float16"),
    (lambda s, v: (s[:, :0], v, 3), ValueError, r"scores must not be empty"),
    (lambda s, v: (s, v.to("meta"), 3), ValueError, r"values must be on the device of scores"),
]


@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_input(device, backend, bad):
    U.require(OP, device, backend)
    make_args, exc, match = BAD[bad]
    s, v = torch.randn(3, 4, 7, device=device), torch.randn(3, 7, 5, device=device)
    with pytest.raises(exc, match=match):
        art_fast.topk_regions(*make_args(s, v), backend=backend)


def test_cpp_kernel_checks_direct_calls():
    U.require_backend(OP, "cpu")
    s, v = torch.randn(3, 4, 7), torch.randn(3, 7, 5)
    with pytest.raises(RuntimeError, match="k"):
        torch.ops.art_fast.topk_regions_fwd(s, v, 9)
    pooled, idx, w = torch.ops.art_fast.topk_regions_fwd(s, v, 2)
    with pytest.raises(RuntimeError):
        torch.ops.art_fast.topk_regions_bwd(pooled, None, s, v, idx + 7)  # indices >= N


# ---- torch.compile (the cpu and torch backends: tests/test_library.py) -----------------------

@pytest.mark.parametrize("device,backend", U.COMPILE_CASES)
def test_compile_fullgraph(device, backend):
    U.require(OP, device, backend)
    s = torch.randn(2, 3, 20, device=device, requires_grad=True)
    v = torch.randn(2, 20, 6, device=device, requires_grad=True)

    def fn(s, v):
        return art_fast.topk_regions(s * 1.5, v, 5, backend=backend)

    U.check_compiled(fn, (s, v), (s, v))


# ---- Triton: direct calls of the custom ops with non-contiguous inputs -------------
# (tests/_util.py; the C++ ops reject non-contiguous inputs)

# kind -> (the shapes of the leaves scores, values at (B, M, N, C), the views given to the op)
NONCONTIG = {
    "scores transposed": (
        lambda B, M, N, C: [(B, N, M), (B, N, C)],
        lambda s, v: (s.transpose(1, 2), v)),
    "values step-sliced": (
        lambda B, M, N, C: [(B, M, N), (B, N, 2 * C)],
        lambda s, v: (s, v[..., ::2])),
    "values expanded over B (stride 0)": (
        lambda B, M, N, C: [(B, M, N), (1, N, C)],
        lambda s, v: (s, v.expand(s.shape[0], -1, -1))),
    "scores expanded over M (stride 0), values transposed": (
        lambda B, M, N, C: [(B, 1, N), (B, C, N)],
        lambda s, v: (s.expand(-1, 4, -1), v.transpose(1, 2))),
}


@pytest.mark.parametrize("device,backend,dtype,kind", U.view_cases(NONCONTIG))
def test_direct_op_noncontiguous(device, backend, dtype, kind):
    """art_fast_triton::topk_regions_fwd called directly with non-contiguous scores/values and
    non-contiguous cotangents: outputs and gradients (torch.autograd.grad through the op's
    autograd) match the float64 reference on the same views."""
    U.require(OP, device, backend)
    from art_fast.kernels import topk_regions as kmod

    B, M, N, C, k = 2, 4, 11, 5, 4
    leaves, _ = U.noncontig_inputs(NONCONTIG, kind, (B, M, N, C), device, dtype)
    g_pool = torch.randn(B, C, M, device=device, dtype=dtype).transpose(1, 2)
    g_w = torch.randn(B, M, 2 * k, device=device, dtype=dtype)[..., ::2]
    U.check_views(lambda s, v: kmod.topk_regions_fwd(s, v, k),
                  lambda s, v: reference.topk_regions(s, v, k), NONCONTIG, kind, leaves,
                  (g_pool, None, g_w), ["pooled", "indices", "weights"],
                  ["grad scores", "grad values"])


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_direct_bwd_op_noncontiguous(device, backend):
    """art_fast_triton::topk_regions_bwd called directly with non-contiguous inputs, indices
    and cotangents gives bitwise what it gives for their contiguous copies."""
    U.require(OP, device, backend)
    from art_fast.kernels import topk_regions as kmod

    B, M, N, C, k = 2, 4, 11, 5, 4
    for kind in NONCONTIG:
        _, views = U.noncontig_inputs(NONCONTIG, kind, (B, M, N, C), device, torch.float64)
        s, v = (x.detach() for x in views)
        _, idx, _ = kmod.topk_regions_fwd(s, v, k)
        idx_nc = idx.transpose(1, 2).contiguous().transpose(1, 2)
        g_pool = torch.randn(B, C, M, device=device, dtype=torch.float64).transpose(1, 2)
        g_w = torch.randn(B, M, 2 * k, device=device, dtype=torch.float64)[..., ::2]
        got = kmod.topk_regions_bwd(g_pool, g_w, s, v, idx_nc)
        want = kmod.topk_regions_bwd(*(x.contiguous() for x in (g_pool, g_w, s, v, idx)))
        for g, t in zip(got, want):
            assert g.is_contiguous() and torch.equal(g, t), kind


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_opcheck_noncontiguous(device, backend):
    """opcheck of art_fast_triton::topk_regions_fwd with the scores transposed, and expanded
    over M with the values transposed."""
    U.require(OP, device, backend)
    from art_fast.kernels import topk_regions as kmod

    U.opcheck_views(kmod.topk_regions_fwd, NONCONTIG,
                    ["scores transposed", "scores expanded over M (stride 0), values transposed"],
                    (2, 4, 11, 5), device, 4)


# ---- Triton: launch parameters, rows in registers ----------------------------------

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


# ---- GPU, Triton: the paper shapes (DESIGN §7): scores = q k^T per head, B = 32 x 16 frames x
# 8 heads, M = K = 2 and 16 queries, N = 196 patches, k_region = 16, C = head dim 32 ----------
@pytest.mark.parametrize("device,backend", [U.case("cuda", "triton")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [2, 16])
def test_paper_shapes_gpu(device, backend, dtype, M):
    U.require(OP, device, backend)
    check(device, backend, 32 * 16 * 8, M, 196, 32, 16, dtype)
