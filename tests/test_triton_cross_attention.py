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


# ---- direct calls of the custom ops with non-contiguous inputs (issue 11) ------------------
# art_fast.cross_attention makes its inputs contiguous, but the ops themselves are public
# (torch.ops.art_fast_triton.*): the backward must read the same contiguous tensors as the
# forward, whatever the strides autograd saved.

def _noncontig(kind, B, H, M, N, D, device, dtype):
    """(q, k, v) leaves and the (possibly non-contiguous) views given to the op."""
    def leaf(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    if kind == "k transposed":
        q, k, v = leaf(B, H, M, D), leaf(B, H, D, N), leaf(B, H, N, D)
        return (q, k, v), (q, k.transpose(2, 3), v)
    if kind == "v step-sliced, q transposed":
        q, k, v = leaf(B, H, D, M), leaf(B, H, N, D), leaf(B, H, 2 * N, D)
        return (q, k, v), (q.transpose(2, 3), k, v[:, :, ::2])
    if kind == "q expanded over B (stride 0)":
        q, k, v = leaf(1, H, M, D), leaf(B, H, N, D), leaf(B, H, N, D)
        return (q, k, v), (q.expand(B, -1, -1, -1), k, v)
    if kind == "shared q transposed, k and v permuted":
        q, k, v = leaf(1, H, D, M), leaf(H, B, N, D), leaf(B, N, H, D)
        return (q, k, v), (q.transpose(2, 3), k.transpose(0, 1), v.permute(0, 2, 1, 3))
    raise ValueError(kind)


NONCONTIG_KINDS = ["k transposed", "v step-sliced, q transposed", "q expanded over B (stride 0)",
                   "shared q transposed, k and v permuted"]


@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", NONCONTIG_KINDS)
def test_direct_op_noncontiguous(device, dtype, kind):
    """art_fast_triton::cross_attention_fwd called directly with non-contiguous q/k/v and
    non-contiguous cotangents: forward and gradients (torch.autograd.grad through the op's
    autograd) match the float64 reference on the same views."""
    require_triton(OP, device)
    kmod = _kernels()
    B, H, M, N, D = 2, 2, 3, 9, 8
    leaves, (q, k, v) = _noncontig(kind, B, H, M, N, D, device, dtype)
    scale = 0.3
    # cotangents with strides of their own: dO transposed, dW sliced with a step
    g_out = torch.randn(B, H, D, M, device=device, dtype=dtype).transpose(2, 3)
    g_w = torch.randn(B, H, M, 2 * N, device=device, dtype=dtype)[..., ::2]
    out, _stats, w = kmod.cross_attention_fwd(q, k, v, scale, True)
    grads = torch.autograd.grad((out, w), leaves, (g_out, g_w))
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    views64 = _same_views(kind, leaves64)  # the same views of float64 copies
    t_out, t_w = reference.cross_attention(*views64, scale, True)
    t_grads = torch.autograd.grad((t_out, t_w), leaves64, (g_out.double(), g_w.double()))
    assert_close_fp(out, t_out, what=f"out ({kind})")
    assert_close_fp(w, t_w, what=f"weights ({kind})")
    for name, g, t in zip(["dq", "dk", "dv"], grads, t_grads):
        assert_close_fp(g, t, what=f"{name} ({kind})")


def _same_views(kind, leaves):
    q, k, v = leaves
    if kind == "k transposed":
        return q, k.transpose(2, 3), v
    if kind == "v step-sliced, q transposed":
        return q.transpose(2, 3), k, v[:, :, ::2]
    if kind == "q expanded over B (stride 0)":
        return q.expand(k.shape[0], -1, -1, -1), k, v
    return q.transpose(2, 3), k.transpose(0, 1), v.permute(0, 2, 1, 3)


@pytest.mark.parametrize("device", TRITON_CASES)
def test_direct_bwd_op_noncontiguous(device):
    """art_fast_triton::cross_attention_bwd called directly with non-contiguous inputs and
    cotangents gives what it gives for their contiguous copies (bitwise) and the float64
    reference's gradients."""
    require_triton(OP, device)
    kmod = _kernels()
    B, H, M, N, D = 2, 2, 3, 9, 8
    for kind in NONCONTIG_KINDS:
        leaves, (q, k, v) = _noncontig(kind, B, H, M, N, D, device, torch.float64)
        q, k, v = q.detach(), k.detach(), v.detach()
        if q.shape[0] == B and q.stride(0) == 0:
            q = q[:1]  # the shared-query form (what art_fast.cross_attention passes)
        g_out = torch.randn(B, H, D, M, device=device, dtype=torch.float64).transpose(2, 3)
        g_w = torch.randn(B, H, M, 2 * N, device=device, dtype=torch.float64)[..., ::2]
        out, stats, _ = kmod.cross_attention_fwd(q, k, v, 0.3, True)
        got = kmod.cross_attention_bwd(g_out, g_w, q, k, v, out, stats, 0.3)
        contig = [x.contiguous() for x in (g_out, g_w, q, k, v)]
        want = kmod.cross_attention_bwd(*contig, out, stats, 0.3)
        for g, t in zip(got, want):
            assert g.is_contiguous()
            assert torch.equal(g, t), kind
        qe, ke, ve = (x.detach().requires_grad_() for x in (q, k, v))
        t_out, t_w = reference.cross_attention(qe.expand(B, -1, -1, -1), ke, ve, 0.3, True)
        truth = torch.autograd.grad((t_out, t_w), (qe, ke, ve), (g_out, g_w))
        for name, g, t in zip(["dq", "dk", "dv"], got, truth):
            assert_close_fp(g, t, what=f"{name} ({kind})")


@pytest.mark.parametrize("device", TRITON_CASES)
def test_opcheck_noncontiguous(device):
    """opcheck (fake kernels' strides, autograd registration) with non-contiguous inputs."""
    require_triton(OP, device)
    kmod = _kernels()
    for kind in ["k transposed", "shared q transposed, k and v permuted"]:
        _, (q, k, v) = _noncontig(kind, 2, 3, 4, 9, 8, device, torch.float32)
        torch.library.opcheck(kmod.cross_attention_fwd, (q, k, v, 0.35, True))


# ---- _sum_over_b: dq of a shared query set, summed over b -----------------------------------

@pytest.mark.parametrize("device", TRITON_CASES)
@pytest.mark.parametrize(
    "B,L,dtype,out_dtype",
    [(37, 333, torch.float32, torch.float32),  # two levels: 37 -> 2 -> 1 rows
     (2, 15, torch.float32, torch.bfloat16),  # one level, L < one column block
     (1100, 33, torch.float32, torch.float32),  # three levels: 1100 -> 35 -> 2 -> 1
     (64, 257, torch.float64, torch.float64)],  # two full chunks, L one past a block
)
def test_sum_over_b(device, B, L, dtype, out_dtype):
    """The parallel tree sum against torch's float64 sum, and bitwise equal across runs."""
    require_triton(OP, device)
    kmod = _kernels()
    x = torch.randn(B, L, device=device, dtype=dtype)
    x[:, :3] *= 1e4  # columns of very different magnitudes
    runs = []
    for _ in range(2):
        out = torch.full((L,), float("nan"), device=device, dtype=out_dtype)
        kmod._sum_over_b_host(x, out)
        runs.append(out)
    assert torch.equal(runs[0], runs[1])
    truth = x.double().sum(0)
    if out_dtype == torch.bfloat16:
        assert_close_fp(runs[0], truth, x.sum(0).to(out_dtype), what="sum over b")
    else:
        # a sum of B terms: float32 rounding at most ~log2(B) ulps of sum |x| per column
        tol = B * torch.finfo(dtype).eps * x.double().abs().sum(0)
        assert ((runs[0].double() - truth).abs() <= tol).all()


@pytest.mark.parametrize("device", TRITON_CASES)
def test_shared_query_odd_sizes(device):
    """A shared query set with B = 37 groups and H M D = 15: dq summed by two tree levels."""
    require_triton(OP, device)
    check(device, "triton", 37, 1, 3, 6, 5, torch.float64, weights=True, shared_q=True)
    check(device, "triton", 37, 1, 3, 6, 5, torch.float32, weights=False, shared_q=True)


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sum_over_b_int64_offsets_gpu():
    """B x L = 2^31 + 4096 elements (8.6 GB float32): the row offsets r * L and the partial
    buffer's c * L pass 2^31 and must be int64 (the old kernel's b * L was int32). Small
    integers: every sum is exact, so the check is bitwise."""
    require_triton(OP, "cuda")
    kmod = _kernels()
    L = 4096
    B = (1 << 31) // L + 1
    x = torch.empty(B, L, device="cuda", dtype=torch.float32)
    cols = torch.arange(L, device="cuda")
    for r0 in range(0, B, 1 << 16):
        rows = torch.arange(r0, min(B, r0 + (1 << 16)), device="cuda")
        x[r0:r0 + len(rows)] = ((rows[:, None] + cols[None, :]) % 5 - 2).float()
    out = torch.empty(L, device="cuda", dtype=torch.float32)
    kmod._sum_over_b_host(x, out)
    truth = x.sum(0, dtype=torch.float64)
    assert torch.equal(out.double(), truth)
