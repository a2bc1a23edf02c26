"""The Triton kernels of cross_attention (kernels/cross_attention.py) against the float64
reference: on CPU under TRITON_INTERPRET=1 (tiny grids, see tests/conftest.py) and on CUDA
(marked gpu). The general suites (tests/test_cross_attention.py) also run the triton backend on
CUDA through FAST_CASES; here: the interpreter, the kernel's own edge cases and the paper shapes.
"""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests import test_cross_attention as suite
from tests._util import fwd_bwd
from tests.conftest import TRITON_CASES, assert_close_fp, require_triton
from tests.test_backends import _run
from tests.test_library import _check_compiled

OP = "cross_attention"
check = suite.check_against_reference


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("N", [1, 7, 33])
@pytest.mark.parametrize("M", [1, 2, 16])
def test_float32_vs_float64(device, N, M):
    require_triton(OP, device)
    check(device, "triton", 2, 2, M, N, 8, torch.float32, weights=M != 1, shared_q=N == 7)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_float64_shared_query(device):
    """q shared by B = 3 groups (stride 0): dq summed over B in a fixed order."""
    require_triton(OP, device)
    check(device, "triton", 3, 2, 5, 9, 4, torch.float64, weights=True, shared_q=True)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("weights", [False, True])
def test_rows_over_one_block(device, weights):
    """M = 70 > BLOCK_M = 64: dk/dv are accumulated over two row blocks by one program."""
    require_triton(OP, device)
    check(device, "triton", 1, 2, 70, 7, 4, torch.float32, weights=weights, shared_q=weights)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("D", [1, 40])
def test_head_dims(device, D):
    require_triton(OP, device)
    check(device, "triton", 2, 1, 3, 9, D, torch.float32, weights=True, noncontig=True)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, dtype):
    require_triton(OP, device)
    check(device, "triton", 2, 2, 16, 33, 32, dtype, weights=True, shared_q=True)


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize(
    "case",
    ["test_explicit_scale_and_large_logits", "test_ties_and_masked_patches",
     "test_nan_propagates_like_softmax", "test_outputs_fully_written",
     "test_bitwise_reproducible"],
)
def test_general_suite_cases(device, case):
    """The edge-case tests of tests/test_cross_attention.py, on the triton backend."""
    require_triton(OP, device)
    getattr(suite, case)(device, "triton")


@pytest.mark.parametrize("device", TRITON_CASES)
def test_only_one_output_used(device):
    """Backward with no gradient for the weights (None, no dW pass), or none for out."""
    require_triton(OP, device)
    q, k, v = suite.make(2, 2, 3, 9, 4, device)
    g_out = torch.randn(2, 2, 3, 4, device=device, dtype=torch.float64)
    g_w = torch.randn(2, 2, 3, 9, device=device, dtype=torch.float64)
    for cot in [(g_out, None), (None, g_w)]:
        grads = fwd_bwd(lambda q, k, v: art_fast.cross_attention(
            q, k, v, return_weights=True, backend="triton"), (q, k, v), cot)[1]
        truth = fwd_bwd(lambda q, k, v: reference.cross_attention(q, k, v, None, True),
                        (q, k, v), cot)[1]
        for g, t in zip(grads, truth):
            assert_close_fp(g, t)


def _kernels():
    from art_fast.kernels import cross_attention as kmod

    return kmod


@pytest.mark.parametrize("device", TRITON_CASES)
def test_opcheck(device):
    require_triton(OP, device)
    kmod = _kernels()
    q = torch.randn(2, 3, 4, 8, device=device, requires_grad=True)
    k = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    v = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    qs = torch.randn(1, 3, 4, 8, device=device, requires_grad=True)
    for args in [(q, k, v, 0.35, False), (q, k, v, 0.35, True), (qs, k, v, 0.2, True)]:
        torch.library.opcheck(kmod.cross_attention_fwd, args)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_compile_fullgraph(device):
    require_triton(OP, device)
    q = torch.randn(1, 2, 3, 8, device=device, requires_grad=True)
    k = torch.randn(4, 2, 9, 8, device=device, requires_grad=True)
    v = torch.randn(4, 2, 9, 8, device=device, requires_grad=True)

    def fn(q, k, v):
        out, w = art_fast.cross_attention(q.expand(4, -1, -1, -1), k, v, return_weights=True,
                                          backend="triton")
        return out * 2, w

    _check_compiled(fn, (q, k, v), (q, k, v))


def test_cpu_tensors_need_the_interpreter():
    """Without TRITON_INTERPRET=1 and without CUDA, the triton backend says why it cannot run
    (and importing art_fast does not import triton)."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is visible: triton is usable without the interpreter")
    code = """
import sys, torch, art_fast
assert "triton" not in sys.modules
try:
    art_fast.cross_attention(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4),
                             torch.randn(1, 1, 3, 4), backend="triton")
except RuntimeError as e:
    assert "TRITON_INTERPRET=1" in str(e), e
    print("refused")
"""
    res = _run(code)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "refused" in res.stdout


# ---- GPU: the paper shapes (DESIGN §7): B x T = 32 x 16 frames, 8 heads, head dim 32,
# N = 196 patches, K = 2 and 16 shared queries; float32 / bfloat16 / float16 ----------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [2, 16])
def test_paper_shapes_gpu(dtype, M):
    require_triton(OP, "cuda")
    check("cuda", "triton", 32 * 16, 8, M, 196, 32, dtype, weights=M == 16, shared_q=True)
