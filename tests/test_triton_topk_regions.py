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


# ---- GPU: the paper shapes (DESIGN §7): scores = q k^T per head, B = 32 x 16 frames x 8
# heads, M = K = 2 and 16 queries, N = 196 patches, k_region = 16, C = head dim 32 -----------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [2, 16])
def test_paper_shapes_gpu(dtype, M):
    require_triton(OP, "cuda")
    check("cuda", "triton", 32 * 16 * 8, M, 196, 32, 16, dtype)
