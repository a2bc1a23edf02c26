"""art_fast.cross_attention against the reference (DESIGN §3.1, §8)."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests._util import fwd_bwd
from tests.conftest import FAST_CASES, assert_close_fp, require_backend

OP = "cross_attention"


def make(B, H, M, N, D, device="cpu", dtype=torch.float64, shared_q=False):
    q = torch.randn(1 if shared_q else B, H, M, D, device=device, dtype=dtype)
    k = torch.randn(B, H, N, D, device=device, dtype=dtype)
    v = torch.randn(B, H, N, D, device=device, dtype=dtype)
    return q, k, v


def check_against_reference(device, backend, B, H, M, N, D, dtype, *, weights, shared_q=False,
                            scale=None, noncontig=False, eager_rule=False):
    q, k, v = make(B, H, M, N, D, device, torch.float64, shared_q)
    g_out = torch.randn(B, H, M, D, device=device, dtype=torch.float64)
    g_w = torch.randn(B, H, M, N, device=device, dtype=torch.float64) if weights else None

    def fast(q, k, v):
        if shared_q:
            q = q.expand(B, -1, -1, -1)  # stride 0 over B
        if noncontig:
            k = k.transpose(2, 3).contiguous().transpose(2, 3)
            v = v.transpose(0, 1).contiguous().transpose(0, 1)
        return art_fast.cross_attention(q, k, v, scale=scale, return_weights=weights,
                                        backend=backend)

    def ref(q, k, v):
        if shared_q:
            q = q.expand(B, -1, -1, -1)
        return reference.cross_attention(q, k, v, scale, weights)

    outs, grads = fwd_bwd(fast, (q, k, v), (g_out, g_w), dtype)
    t_outs, t_grads = fwd_bwd(ref, (q, k, v), (g_out, g_w), torch.float64)
    e_outs, e_grads = (None, None)
    if dtype in (torch.float16, torch.bfloat16) or eager_rule:
        e_outs, e_grads = fwd_bwd(ref, (q, k, v), (g_out, g_w), dtype)
    names = ["out", "weights"][: len(outs)]
    for i, name in enumerate(names):
        assert outs[i].dtype == dtype
        assert_close_fp(outs[i], t_outs[i], e_outs[i] if e_outs else None, f"{name} {dtype}",
                        eager_rule)
    for i, name in enumerate(["dq", "dk", "dv"]):
        assert grads[i].shape == (q, k, v)[i].shape
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("shape", [(2, 2, 3, 7, 5), (1, 1, 1, 1, 4), (2, 1, 5, 33, 8)])
def test_gradcheck_float64(device, backend, shape):
    require_backend(OP, backend)
    B, H, M, N, D = shape
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


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("N", [1, 7, 196, 197, 257])
@pytest.mark.parametrize("M", [1, 2, 16, 64])
def test_float32_vs_float64(device, backend, N, M):
    require_backend(OP, backend)
    check_against_reference(device, backend, 2, 3, M, N, 32, torch.float32, weights=(M % 2 == 0))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("D", [1, 24, 40, 64])
def test_head_dims(device, backend, D):
    require_backend(OP, backend)
    check_against_reference(device, backend, 2, 2, 5, 37, D, torch.float32, weights=True)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N", [(2, 196), (16, 197), (64, 7)])
def test_low_precision(device, backend, dtype, M, N):
    require_backend(OP, backend)
    check_against_reference(device, backend, 2, 4, M, N, 32, dtype, weights=True)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_query_and_noncontiguous(device, backend, dtype):
    require_backend(OP, backend)
    check_against_reference(device, backend, 5, 2, 4, 33, 16, dtype, weights=True, shared_q=True,
                            noncontig=True)


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_explicit_scale_and_large_logits(device, backend):
    require_backend(OP, backend)
    # scores of magnitude ~1e3..1e4: no overflow; the gradients are ill-conditioned (eager
    # float32 is ~1% off float64 on dq), so float32 is held to 2x eager float32's error.
    check_against_reference(device, backend, 2, 2, 3, 50, 16, torch.float32, weights=True,
                            scale=300.0, eager_rule=True)
    check_against_reference(device, backend, 2, 2, 3, 50, 16, torch.float64, weights=True,
                            scale=-2.5)


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_ties_and_masked_patches(device, backend):
    """Equal scores and -inf keys: weights split evenly, masked patches get exactly 0."""
    require_backend(OP, backend)
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


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_nan_propagates_like_softmax(device, backend):
    require_backend(OP, backend)
    q, k, v = make(1, 1, 3, 9, 4, device, torch.float32)
    k[0, 0, 4, 1] = float("nan")
    out, w = art_fast.cross_attention(q, k, v, return_weights=True, backend=backend)
    ref_out, ref_w = reference.cross_attention(q, k, v, None, True)
    assert torch.isnan(out).all() and torch.isnan(w).all()
    assert torch.isnan(ref_out).all() and torch.isnan(ref_w).all()


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_outputs_fully_written(device, backend):
    """Outputs are poisoned (NaN-filled on allocation in deterministic mode) before the call;
    every element must be overwritten."""
    require_backend(OP, backend)
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


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_bitwise_reproducible(device, backend):
    require_backend(OP, backend)
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


BAD = [
    (lambda q, k, v: (q[0], k, v), {}, ValueError, r"q must have shape \[B, H, M, D\]"),
    (lambda q, k, v: (q, k[..., :3], v), {}, ValueError, r"v must have the shape of k"),
    (lambda q, k, v: (q[:, :1], k, v), {}, ValueError, r"q must have shape .* H = 2"),
    (lambda q, k, v: (q[..., :3], k, v), {}, ValueError, r"q must have shape .* D = 4"),
    (lambda q, k, v: (q[:2].repeat(2, 1, 1, 1)[:2], k, v), {}, ValueError, r"B = 3"),
    (lambda q, k, v: (q.double(), k, v), {}, TypeError, r"k must have the dtype of q"),
    (lambda q, k, v: (q.int(), k, v), {}, TypeError, r"q must be float16, bfloat16"),
    (lambda q, k, v: (q.numpy(), k, v), {}, TypeError, r"q must be a torch.Tensor"),
    (lambda q, k, v: (q[:, :, :0], k, v), {}, ValueError, r"q must not be empty"),
    (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), {}, ValueError, r"k must not be empty"),
    (lambda q, k, v: (q, k, v.to("meta")), {}, ValueError, r"v must be on the device of q"),
    (lambda q, k, v: (q, k, v), {"scale": float("nan")}, ValueError, r"scale must be a finite"),
    (lambda q, k, v: (q, k, v), {"scale": "0.5"}, TypeError, r"scale must be a float"),
    (lambda q, k, v: (q, k, v), {"return_weights": 1}, TypeError, r"return_weights must be a"),
    (lambda q, k, v: (q, k, v), {"backend": "nope"}, ValueError, r"backend must be one of"),
]


@pytest.mark.parametrize("backend", ["torch", "cpu", "auto"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    if backend == "cpu":
        require_backend(OP, backend)
    make_args, kwargs, exc, match = BAD[case]
    q, k, v = make(3, 2, 4, 5, 4, "cpu", torch.float32)
    with pytest.raises(exc, match=match):
        art_fast.cross_attention(*make_args(q, k, v), **{"backend": backend, **kwargs})


def test_cpp_kernel_checks_direct_calls():
    """The compiled op re-checks what it relies on (a direct torch.ops call bypasses the
    Python validation): a wrong shape is an error, never an out-of-bounds read."""
    require_backend(OP, "cpu")
    q, k, v = make(2, 2, 3, 5, 4, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="v must have the shape of k"):
        torch.ops.art_fast.cross_attention_fwd(q, k, v[:, :, :4].contiguous(), 0.5, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.art_fast.cross_attention_fwd(q, k.transpose(2, 3), v, 0.5, False)
