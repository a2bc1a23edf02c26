"""art_fast.topk_regions against the reference and an independent ranking oracle
(DESIGN §3.2, §8)."""

from __future__ import annotations

import math

import pytest
import torch

import art_fast
from art_fast import reference
from tests._util import fwd_bwd
from tests.conftest import FAST_CASES, assert_close_fp, require_backend

OP = "topk_regions"


def oracle_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The documented rule, written independently of the code under test: descending score,
    ties by lower index, NaN below everything (by lower index among NaNs)."""
    B, M, N = scores.shape
    out = torch.empty(B, M, k, dtype=torch.int64)
    rows = scores.detach().double().cpu().tolist()
    for b in range(B):
        for m in range(M):
            row = rows[b][m]
            order = sorted(range(N), key=lambda n: (math.isnan(row[n]),
                                                    -row[n] if not math.isnan(row[n]) else 0, n))
            out[b, m] = torch.tensor(order[:k])
    return out


def check(device, backend, B, M, N, C, k, dtype, scores=None, noncontig=False, eager_rule=False):
    s = torch.randn(B, M, N, dtype=torch.float64) if scores is None else scores.double()
    v = torch.randn(B, N, C, dtype=torch.float64)
    s, v = s.to(device), v.to(device)
    g_pool = torch.randn(B, M, C, dtype=torch.float64, device=device)
    g_w = torch.randn(B, M, k, dtype=torch.float64, device=device)

    def fast(s, v):
        if noncontig:
            s = s.transpose(0, 2).contiguous().transpose(0, 2)
            v = v.transpose(1, 2).contiguous().transpose(1, 2)
        return art_fast.topk_regions(s, v, k, backend=backend)

    def ref(s, v):
        return reference.topk_regions(s, v, k)

    outs, grads = fwd_bwd(fast, (s, v), (g_pool, None, g_w), dtype)
    t_outs, t_grads = fwd_bwd(ref, (s.to(dtype), v.to(dtype)), (g_pool, None, g_w), torch.float64)
    e_outs = e_grads = None
    if dtype in (torch.float16, torch.bfloat16) or eager_rule:
        e_outs, e_grads = fwd_bwd(ref, (s, v), (g_pool, None, g_w), dtype)
    pooled, idx, w = outs
    assert idx.dtype == torch.int64 and idx.shape == (B, M, k)
    assert torch.equal(idx.cpu(), oracle_indices(s.to(dtype), k))
    assert torch.equal(idx, t_outs[1])
    assert pooled.dtype == dtype and w.dtype == dtype
    assert_close_fp(pooled, t_outs[0], e_outs[0] if e_outs else None, f"pooled {dtype}",
                    eager_rule)
    assert_close_fp(w, t_outs[2], e_outs[2] if e_outs else None, f"weights {dtype}", eager_rule)
    for i, name in enumerate(["grad scores", "grad values"]):
        assert_close_fp(grads[i], t_grads[i], e_grads[i] if e_grads else None, f"{name} {dtype}",
                        eager_rule)
    # the scores' gradient is exactly zero outside the selection
    outside = torch.ones_like(grads[0], dtype=torch.bool).scatter_(-1, idx, False)
    assert torch.equal(grads[0][outside], torch.zeros_like(grads[0][outside]))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("N,k", [(1, 1), (7, 1), (7, 3), (7, 7), (37, 16)])
def test_gradcheck_float64(device, backend, N, k):
    require_backend(OP, backend)
    s = torch.randn(2, 3, N, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn(2, N, 5, dtype=torch.float64, device=device, requires_grad=True)
    f = lambda s, v: art_fast.topk_regions(s, v, k, backend=backend)[0::2]  # noqa: E731
    assert torch.autograd.gradcheck(f, (s, v))


def test_reference_gradcheck_float64():
    s = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: reference.topk_regions(s, v, 4)[0::2], (s, v))


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("N", [1, 7, 196, 197, 257])
@pytest.mark.parametrize("M", [1, 3, 64])
@pytest.mark.parametrize("kind", ["1", "N", "16"])
def test_float32_vs_float64(device, backend, N, M, kind):
    require_backend(OP, backend)
    k = {"1": 1, "N": N, "16": min(16, N)}[kind]
    check(device, backend, 2, M, N, 32, k, torch.float32)


@pytest.mark.parametrize("device,backend", FAST_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,k", [(196, 16), (7, 7), (257, 1)])
def test_low_precision(device, backend, dtype, N, k):
    require_backend(OP, backend)
    check(device, backend, 3, 5, N, 24, k, dtype)


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_ties_go_to_the_lower_index(device, backend):
    require_backend(OP, backend)
    scores = torch.randint(0, 3, (4, 6, 50)).double()  # many equal scores
    scores[0, 0] = 0.0
    scores[0, 1, ::2] = -0.0  # -0.0 == +0.0: still a tie
    check(device, backend, 4, 6, 50, 8, 10, torch.float32, scores=scores)
    check(device, backend, 4, 6, 50, 8, 50, torch.float64, scores=scores)
    idx = art_fast.topk_regions(scores[:1, :1].float(), torch.randn(1, 50, 2), 5,
                                backend=backend)[1]
    assert idx.tolist() == [[[0, 1, 2, 3, 4]]]


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_nan_ranks_lowest(device, backend):
    require_backend(OP, backend)
    s = torch.tensor([[[0.5, float("nan"), -float("inf"), 2.0, float("nan"), -1.0]]])
    v = torch.randn(1, 6, 3)
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


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_large_magnitude_and_noncontiguous(device, backend):
    require_backend(OP, backend)
    # scores ~1e4: the selected softmax is one-hot to float32 precision and the scores'
    # gradient is ~1e-10, below float32's reach at rtol 1e-5: held to 2x eager float32's error.
    check(device, backend, 3, 4, 197, 16, 16, torch.float32,
          scores=1e4 * torch.randn(3, 4, 197), noncontig=True, eager_rule=True)
    check(device, backend, 3, 4, 197, 16, 16, torch.float64,
          scores=1e4 * torch.randn(3, 4, 197), noncontig=True)


@pytest.mark.parametrize("device,backend", FAST_CASES)
def test_outputs_fully_written_and_reproducible(device, backend):
    require_backend(OP, backend)
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


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    if backend == "cpu":
        require_backend(OP, backend)
    make_args, exc, match = BAD[case]
    s, v = torch.randn(3, 4, 7), torch.randn(3, 7, 5)
    with pytest.raises(exc, match=match):
        art_fast.topk_regions(*make_args(s, v), backend=backend)


def test_cpp_kernel_checks_direct_calls():
    require_backend(OP, "cpu")
    s, v = torch.randn(3, 4, 7), torch.randn(3, 7, 5)
    with pytest.raises(RuntimeError, match="k"):
        torch.ops.art_fast.topk_regions_fwd(s, v, 9)
    pooled, idx, w = torch.ops.art_fast.topk_regions_fwd(s, v, 2)
    with pytest.raises(RuntimeError):
        torch.ops.art_fast.topk_regions_bwd(pooled, None, s, v, idx + 7)  # indices >= N
