"""art_fast.cross_attention (DESIGN §3.1, §8) on every backend (tests/_util.py): torch, cpu and
triton (under TRITON_INTERPRET=1 on CPU tensors), and cuda and triton on a GPU (marked gpu).

- against the float64 reference: the spec's sample cases, shapes, head dims, 16-bit, shared
  queries, non-contiguous inputs, large logits; gradcheck;
- edge cases: ties and -inf keys, NaN, poisoned outputs, bitwise reproducibility, one output
  unused, bad inputs;
- the Triton kernels' own cases: row blocks (M > BLOCK_M), direct calls of the
  art_fast_triton:: entries with non-contiguous inputs, the parallel sum over b of a shared
  query set's gradient, torch.compile, the paper shapes on a GPU.

Backends: ``FAST_CASES`` (cpu, triton, cuda) where a test compares with the float64 reference
(the torch backend is that reference: comparing it with itself proves nothing);
``BACKEND_CASES`` (torch too) where a test checks behaviour. The Triton interpreter runs the
small shapes only (``grid``); the other backends run those too. The cuda backend's paper
shapes and kernel paths: tests/test_cuda_ops.py; opcheck of every entry (the spec's samples) on
every backend and torch.compile on cpu / torch: tests/test_library.py.
"""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests import _util as U
from tests._util import check_cross_attention as check
from tests._util import make_qkv as make

OP = "cross_attention"


# ---- the spec's sample cases ----------------------------------------------------------------

@pytest.mark.parametrize("device,backend,dtype", U.grid(U.FAST_CASES, **U.SPEC_DTYPES))
def test_spec_cases(device, backend, dtype):
    """Every sample case of the spec (art_fast/ops/cross_attention.py: SPEC): outputs, and the
    gradients of a random cotangent on out, against the reference on float64 copies of the
    inputs."""
    U.check_spec_cases(OP, device, backend, dtype)


# ---- against the float64 reference -------------------------------------------------------------

# Not on the Triton interpreter (~0.1 s an evaluation; gradcheck needs hundreds): its backward
# is held to the float64 reference by the other tests.
@pytest.mark.parametrize("device,backend,B,H,M,N,D", U.grid(
    U.FAST_CASES, [(2, 2, 3, 7, 5), (1, 1, 1, 1, 4), (2, 1, 5, 33, 8)]))
def test_gradcheck_float64(device, backend, B, H, M, N, D):
    U.require(OP, device, backend)
    q, k, v = (x.requires_grad_() for x in make(B, H, M, N, D, device))

    def f(q, k, v):
        return art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)

    assert torch.autograd.gradcheck(f, (q, k, v))
    qs = torch.randn(1, H, M, D, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda qs, k, v: f(qs.expand(B, -1, -1, -1), k, v),
                                    (qs, k, v))


def test_reference_gradcheck_float64():
    q, k, v = (x.requires_grad_() for x in make(2, 2, 3, 7, 5))
    assert torch.autograd.gradcheck(
        lambda q, k, v: reference.cross_attention(q, k, v, None, True), (q, k, v)
    )


@pytest.mark.parametrize("device,backend,B,H,M,N,D,weights,shared_q", U.grid(
    U.FAST_CASES,
    [(2, 3, M, N, 32, M % 2 == 0, False) for N in [1, 7, 196, 197, 257] for M in [1, 2, 16, 64]],
    interpret=[(2, 2, M, N, 8, M != 1, N == 7) for N in [1, 7, 33] for M in [1, 2, 16]]
    # M = 70 > BLOCK_M = 64: the Triton backward accumulates dk/dv over two row blocks
    + [(1, 2, 70, 7, 4, w, w) for w in (False, True)]))
def test_float32_vs_float64(device, backend, B, H, M, N, D, weights, shared_q):
    U.require(OP, device, backend)
    check(device, backend, B, H, M, N, D, torch.float32, weights=weights, shared_q=shared_q)


@pytest.mark.parametrize("device,backend,B,H,M,N,D,noncontig", U.grid(
    U.FAST_CASES, [(2, 2, 5, 37, D, False) for D in [1, 24, 40, 64]],
    interpret=[(2, 1, 3, 9, D, True) for D in [1, 40]]))
def test_head_dims(device, backend, B, H, M, N, D, noncontig):
    U.require(OP, device, backend)
    check(device, backend, B, H, M, N, D, torch.float32, weights=True, noncontig=noncontig)


LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("device,backend,dtype,B,H,M,N,shared_q", U.grid(
    U.FAST_CASES,
    [(dt, 2, 4, M, N, False) for dt in LOW for M, N in [(2, 196), (16, 197), (64, 7)]],
    interpret=[(dt, 2, 2, 16, 33, True) for dt in LOW]))
def test_low_precision(device, backend, dtype, B, H, M, N, shared_q):
    U.require(OP, device, backend)
    check(device, backend, B, H, M, N, 32, dtype, weights=True, shared_q=shared_q)


@pytest.mark.parametrize("device,backend,dtype", U.grid(
    U.FAST_CASES, [(torch.float32,), (torch.bfloat16,)]))
def test_shared_query_and_noncontiguous(device, backend, dtype):
    U.require(OP, device, backend)
    check(device, backend, 5, 2, 4, 33, 16, dtype, weights=True, shared_q=True, noncontig=True)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_float64_shared_query(device, backend):
    """q shared by B = 3 groups (stride 0): dq summed over B in a fixed order."""
    U.require(OP, device, backend)
    check(device, backend, 3, 2, 5, 9, 4, torch.float64, weights=True, shared_q=True)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_shared_query_odd_sizes(device, backend):
    """A shared query set with B = 37 groups and H M D = 15 (Triton: dq summed by two tree
    levels)."""
    U.require(OP, device, backend)
    check(device, backend, 37, 1, 3, 6, 5, torch.float64, weights=True, shared_q=True)
    check(device, backend, 37, 1, 3, 6, 5, torch.float32, weights=False, shared_q=True)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_explicit_scale_and_large_logits(device, backend):
    U.require(OP, device, backend)
    # scores of magnitude ~1e3..1e4: no overflow; the gradients are ill-conditioned (eager
    # float32 is ~1% off float64 on dq), so float32 is held to 2x eager float32's error.
    check(device, backend, 2, 2, 3, 50, 16, torch.float32, weights=True, scale=300.0,
          eager_rule=True)
    check(device, backend, 2, 2, 3, 50, 16, torch.float64, weights=True, scale=-2.5)


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_only_one_output_used(device, backend):
    """Backward with no gradient for the weights (None, no dW pass), or none for out."""
    U.require(OP, device, backend)
    q, k, v = make(2, 2, 3, 9, 4, device)
    g_out = torch.randn(2, 2, 3, 4, device=device, dtype=torch.float64)
    g_w = torch.randn(2, 2, 3, 9, device=device, dtype=torch.float64)
    for cot in [(g_out, None), (None, g_w)]:
        grads = U.fwd_bwd(lambda q, k, v: art_fast.cross_attention(
            q, k, v, return_weights=True, backend=backend), (q, k, v), cot)[1]
        truth = U.fwd_bwd(lambda q, k, v: reference.cross_attention(q, k, v, None, True),
                        (q, k, v), cot)[1]
        for g, t in zip(grads, truth):
            U.assert_close_fp(g, t)


# ---- edge cases ----------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
def test_ties_and_masked_patches(device, backend):
    """Equal scores and -inf keys: weights split evenly, masked patches get exactly 0."""
    U.require(OP, device, backend)
    q = torch.zeros(1, 1, 2, 4, device=device)
    k = torch.randn(1, 1, 6, 4, device=device)
    v = torch.randn(1, 1, 6, 4, device=device)
    out, w = art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 6))
    q2 = torch.ones(1, 1, 1, 4, device=device)
    k2 = k.clone()
    k2[..., 2:, :] = float("-inf")  # q . k = -inf for patches 2..5
    out2, w2 = art_fast.cross_attention(q2, k2, v, return_weights=True, backend=backend)
    ref_out2, ref_w2 = reference.cross_attention(q2, k2, v, None, True)
    assert torch.equal(w2[..., 2:], torch.zeros_like(w2[..., 2:]))
    torch.testing.assert_close(w2, ref_w2)
    torch.testing.assert_close(out2, ref_out2)


@pytest.mark.parametrize("device,backend", U.BACKEND_CASES)
def test_nan_propagates_like_softmax(device, backend):
    U.require(OP, device, backend)
    q, k, v = make(1, 1, 3, 9, 4, device, torch.float32)
    k[0, 0, 4, 1] = float("nan")
    out, w = art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)
    ref_out, ref_w = reference.cross_attention(q, k, v, None, True)
    assert torch.isnan(out).all() and torch.isnan(w).all()
    assert torch.isnan(ref_out).all() and torch.isnan(ref_w).all()


# The kernels' outputs and reproducibility (not torch's: FAST_CASES).
@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_outputs_fully_written(device, backend):
    """Outputs are poisoned (NaN-filled on allocation in deterministic mode) before the call;
    every element must be overwritten."""
    U.require(OP, device, backend)
    q, k, v = make(3, 2, 5, 29, 8, device, torch.float32)
    expected = reference.cross_attention(q, k, v, None, True)
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    poison = torch.empty(1 << 20, device=device)
    assert torch.isnan(poison).all()  # the poisoning is active
    out, w = art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)
    grads = torch.autograd.grad(
        art_fast.cross_attention(*(x.requires_grad_() for x in (q, k, v)), backend=backend).sum(),
        (q, k, v),
    )
    assert not any(torch.isnan(t).any() for t in (out, w, *grads))
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(w, expected[1])


@pytest.mark.parametrize("device,backend", U.FAST_CASES)
def test_bitwise_reproducible(device, backend):
    U.require(OP, device, backend)
    q, k, v = make(4, 2, 5, 31, 8, device, torch.float32, shared_q=True)
    g = torch.randn(4, 2, 5, 8, device=device)

    def run():
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        out = art_fast.cross_attention(x[0].expand(4, -1, -1, -1), x[1], x[2], backend=backend)
        return [out, *torch.autograd.grad(out, x, g)]

    first = run()
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            assert all(torch.equal(a, b) for a, b in zip(first, run()))
    finally:
        torch.set_num_threads(threads)


# ---- bad inputs ------------------------------------------------------------------------------

BAD = [
    (lambda q, k, v: (q[0], k, v), {}, ValueError, r"q must have shape \[B, H, M, D\]"),
    (lambda q, k, v: (q, k[..., :3], v), {}, ValueError, r"v must have the shape of k"),
    (lambda q, k, v: (q[:, :1], k, v), {}, ValueError, r"q must have shape .* H = 2"),
    (lambda q, k, v: (q[..., :3], k, v), {}, ValueError, r"q must have shape .* D = 4"),
    (lambda q, k, v: (q[:2].repeat(2, 1, 1, 1)[:2], k, v), {}, ValueError, r"B = 3"),
    (lambda q, k, v: (q.double(), k, v), {}, TypeError, r"k must have the dtype of q"),
    (lambda q, k, v: (q.int(), k, v), {}, TypeError, r"q must be float16, bfloat16"),
    (lambda q, k, v: (q.cpu().numpy(), k, v), {}, TypeError, r"q must be a torch.Tensor"),
    (lambda q, k, v: (q[:, :, :0], k, v), {}, ValueError, r"q must not be empty"),
    (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), {}, ValueError, r"k must not be empty"),
    (lambda q, k, v: (q, k, v.to("meta")), {}, ValueError, r"v must be on the device of q"),
    (lambda q, k, v: (q, k, v), {"scale": float("nan")}, ValueError, r"scale must be a finite"),
    (lambda q, k, v: (q, k, v), {"scale": "0.5"}, TypeError, r"scale must be a float"),
    (lambda q, k, v: (q, k, v), {"return_weights": 1}, TypeError, r"return_weights must be a"),
    (lambda q, k, v: (q, k, v), {"backend": "nope"}, ValueError, r"backend must be one of"),
]


@pytest.mark.parametrize("device,backend", [*U.BACKEND_CASES, U.case("cpu", "auto")])
@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_input(device, backend, bad):
    U.require(OP, device, backend)
    make_args, kwargs, exc, match = BAD[bad]
    q, k, v = make(3, 2, 4, 5, 4, device, torch.float32)
    with pytest.raises(exc, match=match):
        art_fast.cross_attention(*make_args(q, k, v), **{"backend": backend, **kwargs})


def test_cpp_kernel_checks_direct_calls():
    """The compiled op re-checks what it relies on (a direct torch.ops call bypasses the
    Python validation): a wrong shape is an error, never an out-of-bounds read."""
    U.require_backend(OP, "cpu")
    q, k, v = make(2, 2, 3, 5, 4, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="v must have the shape of k"):
        torch.ops.art_fast.cross_attention_fwd(q, k, v[:, :, :4].contiguous(), 0.5, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.art_fast.cross_attention_fwd(q, k.transpose(2, 3), v, 0.5, False)


# ---- torch.compile (the cpu and torch backends: tests/test_library.py) -----------------------

@pytest.mark.parametrize("device,backend", U.COMPILE_CASES)
def test_compile_fullgraph(device, backend):
    U.require(OP, device, backend)
    q = torch.randn(1, 2, 3, 8, device=device, requires_grad=True)
    k = torch.randn(4, 2, 9, 8, device=device, requires_grad=True)
    v = torch.randn(4, 2, 9, 8, device=device, requires_grad=True)

    def fn(q, k, v):
        out, w = art_fast.cross_attention(q.expand(4, -1, -1, -1), k, v, return_weights=True,
                                          backend=backend)
        return out * 2, w

    U.check_compiled(fn, (q, k, v), (q, k, v))


# ---- Triton: direct calls of the custom ops with non-contiguous inputs -------------
# (tests/_util.py; the C++ ops reject non-contiguous inputs: test_cpp_kernel_checks_direct_calls)

def _kernels():
    from art_fast.kernels import cross_attention as kmod

    return kmod


# kind -> (the shapes of the leaves q, k, v at (B, H, M, N, D), the views given to the op)
NONCONTIG = {
    "k transposed": (
        lambda B, H, M, N, D: [(B, H, M, D), (B, H, D, N), (B, H, N, D)],
        lambda q, k, v: (q, k.transpose(2, 3), v)),
    "v step-sliced, q transposed": (
        lambda B, H, M, N, D: [(B, H, D, M), (B, H, N, D), (B, H, 2 * N, D)],
        lambda q, k, v: (q.transpose(2, 3), k, v[:, :, ::2])),
    "q expanded over B (stride 0)": (
        lambda B, H, M, N, D: [(1, H, M, D), (B, H, N, D), (B, H, N, D)],
        lambda q, k, v: (q.expand(k.shape[0], -1, -1, -1), k, v)),
    "shared q transposed, k and v permuted": (
        lambda B, H, M, N, D: [(1, H, D, M), (H, B, N, D), (B, N, H, D)],
        lambda q, k, v: (q.transpose(2, 3), k.transpose(0, 1), v.permute(0, 2, 1, 3))),
}


@pytest.mark.parametrize("device,backend,dtype,kind", U.view_cases(NONCONTIG))
def test_direct_op_noncontiguous(device, backend, dtype, kind):
    """art_fast_triton::cross_attention_fwd called directly with non-contiguous q/k/v and
    non-contiguous cotangents: forward and gradients (torch.autograd.grad through the op's
    autograd) match the float64 reference on the same views."""
    U.require(OP, device, backend)
    kmod = _kernels()
    B, H, M, N, D = 2, 2, 3, 9, 8
    leaves, _ = U.noncontig_inputs(NONCONTIG, kind, (B, H, M, N, D), device, dtype)
    # cotangents with strides of their own: dO transposed, dW sliced with a step
    g_out = torch.randn(B, H, D, M, device=device, dtype=dtype).transpose(2, 3)
    g_w = torch.randn(B, H, M, 2 * N, device=device, dtype=dtype)[..., ::2]
    U.check_views(lambda q, k, v: kmod.cross_attention_fwd(q, k, v, 0.3, True)[0::2],
                  lambda q, k, v: reference.cross_attention(q, k, v, 0.3, True),
                  NONCONTIG, kind, leaves, (g_out, g_w), ["out", "weights"], ["dq", "dk", "dv"])


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_direct_bwd_op_noncontiguous(device, backend):
    """art_fast_triton::cross_attention_bwd called directly with non-contiguous inputs and
    cotangents gives what it gives for their contiguous copies (bitwise) and the float64
    reference's gradients."""
    U.require(OP, device, backend)
    kmod = _kernels()
    B, H, M, N, D = 2, 2, 3, 9, 8
    for kind in NONCONTIG:
        _, (q, k, v) = U.noncontig_inputs(NONCONTIG, kind, (B, H, M, N, D), device,
                                          torch.float64)
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
            U.assert_close_fp(g, t, what=f"{name} ({kind})")


@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
def test_opcheck_noncontiguous(device, backend):
    """opcheck of art_fast_triton::cross_attention_fwd with k transposed, and with a shared
    query set transposed and k, v permuted."""
    U.require(OP, device, backend)
    U.opcheck_views(_kernels().cross_attention_fwd, NONCONTIG,
                    ["k transposed", "shared q transposed, k and v permuted"], (2, 3, 4, 9, 8),
                    device, 0.35, True)


# ---- Triton: _sum_over_b, dq of a shared query set summed over b ------------------------------

@pytest.mark.parametrize("device,backend", U.TRITON_CASES)
@pytest.mark.parametrize(
    "B,L,dtype,out_dtype",
    [(37, 333, torch.float32, torch.float32),  # two levels: 37 -> 2 -> 1 rows
     (2, 15, torch.float32, torch.bfloat16),  # one level, L < one column block
     (1100, 33, torch.float32, torch.float32),  # three levels: 1100 -> 35 -> 2 -> 1
     (64, 257, torch.float64, torch.float64)],  # two full chunks, L one past a block
)
def test_sum_over_b(device, backend, B, L, dtype, out_dtype):
    """The parallel tree sum against torch's float64 sum, and bitwise equal across runs."""
    U.require(OP, device, backend)
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
        U.assert_close_fp(runs[0], truth, x.sum(0).to(out_dtype), what="sum over b")
    else:
        # a sum of B terms: float32 rounding at most ~log2(B) ulps of sum |x| per column
        tol = B * torch.finfo(dtype).eps * x.double().abs().sum(0)
        assert ((runs[0].double() - truth).abs() <= tol).all()


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
    res = U.run_python(code)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "refused" in res.stdout


# ---- GPU, Triton: the paper shapes (DESIGN §7): B x T = 32 x 16 frames, 8 heads, head dim 32,
# N = 196 patches, K = 2 and 16 shared queries; float32 / bfloat16 / float16 ------------------
@pytest.mark.parametrize("device,backend", [U.case("cuda", "triton")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [2, 16])
def test_paper_shapes_gpu(device, backend, dtype, M):
    U.require(OP, device, backend)
    check(device, backend, 32 * 16, 8, M, 196, 32, dtype, weights=M == 16, shared_q=True)


@pytest.mark.parametrize("device,backend", [U.case("cuda", "triton")])
def test_sum_over_b_int64_offsets_gpu(device, backend):
    """B x L = 2^31 + 4096 elements (8.6 GB float32): the row offsets r * L and the partial
    buffer's c * L pass 2^31 and must be int64 (the old kernel's b * L was int32). Small
    integers: every sum is exact, so the check is bitwise."""
    U.require(OP, device, backend)
    kmod = _kernels()
    L = 4096
    B = (1 << 31) // L + 1
    x = torch.empty(B, L, device=device, dtype=torch.float32)
    cols = torch.arange(L, device=device)
    for r0 in range(0, B, 1 << 16):
        rows = torch.arange(r0, min(B, r0 + (1 << 16)), device=device)
        x[r0:r0 + len(rows)] = ((rows[:, None] + cols[None, :]) % 5 - 2).float()
    out = torch.empty(L, device=device, dtype=torch.float32)
    kmod._sum_over_b_host(x, out)
    truth = x.sum(0, dtype=torch.float64)
    assert torch.equal(out.double(), truth)
