"""torch.library registration: opcheck (schema, fake kernel, autograd, AOT dispatch) on every
compiled op, and torch.compile(fullgraph=True) over every public op with no graph break."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from tests.conftest import require_backend


def _samples(op: str):
    if op == "cross_attention_fwd":
        q = torch.randn(2, 3, 4, 8, requires_grad=True)
        k = torch.randn(2, 3, 9, 8, requires_grad=True)
        v = torch.randn(2, 3, 9, 8, requires_grad=True)
        qs = torch.randn(1, 3, 4, 8, requires_grad=True)
        return [(q, k, v, 0.35, False), (q, k, v, 0.35, True), (qs, k, v, 0.2, True),
                (q.double(), k.double(), v.double(), 0.35, True)]
    if op == "topk_regions_fwd":
        s = torch.randn(2, 3, 11, requires_grad=True)
        v = torch.randn(2, 11, 5, requires_grad=True)
        return [(s, v, 4), (s, v, 11), (s.detach().bfloat16().requires_grad_(),
                                        v.detach().bfloat16().requires_grad_(), 1)]
    a = torch.randn(3, 4, 8, requires_grad=True)
    c = torch.randn(3, 6, 8, requires_grad=True)
    t = torch.tensor([[0, 5, -100, 2]] * 3)
    big_a = torch.randn(1, 80, 8, requires_grad=True)
    big_t = torch.randint(0, 80, (1, 80))
    if op == "info_nce_fused":
        a16 = torch.randn(2, 4, 16, requires_grad=True)
        c16 = torch.randn(2, 8, 16, requires_grad=True)
        t16 = torch.tensor([[0, 7, -100, 2]] * 2)
        return [(a, c, t, 0.1, True, True, True), (a, c, t, 2.0, False, False, True),
                (a16, c16, t16, 0.3, True, True, True),  # the tiny direct path
                (big_a, big_a, big_t, 0.1, True, True, True),
                (a.detach(), c.detach(), t, 0.1, True, True, False),
                (big_a.detach(), big_a.detach(), big_t, 0.5, True, False, False)]
    return [(a, c, t, 0.1, True), (a, c, t, 2.0, False), (big_a, big_a, big_t, 0.1, True)]


@pytest.mark.parametrize(
    "op", ["cross_attention_fwd", "topk_regions_fwd", "info_nce_fwd", "info_nce_fused"]
)
def test_opcheck(op):
    require_backend(op.rsplit("_", 1)[0], "cpu")
    for args in _samples(op):
        torch.library.opcheck(getattr(torch.ops.art_fast, op), args)


def _check_compiled(fn, args, grads_of):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    expected = fn(*args)
    got = compiled(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    ge = torch.autograd.grad(expected[0].sum(), grads_of)
    gg = torch.autograd.grad(got[0].sum(), grads_of)
    for e, g in zip(ge, gg):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_compile_fullgraph_cross_attention(backend):
    require_backend("cross_attention", backend)
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    k = torch.randn(4, 2, 9, 8, requires_grad=True)
    v = torch.randn(4, 2, 9, 8, requires_grad=True)

    def fn(q, k, v):
        out, w = art_fast.cross_attention(q.expand(4, -1, -1, -1), k, v, return_weights=True,
                                          backend=backend)
        return out * 2, w

    _check_compiled(fn, (q, k, v), (q, k, v))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_compile_fullgraph_topk_regions(backend):
    require_backend("topk_regions", backend)
    s = torch.randn(2, 3, 20, requires_grad=True)
    v = torch.randn(2, 20, 6, requires_grad=True)

    def fn(s, v):
        pooled, idx, w = art_fast.topk_regions(s * 1.5, v, 5, backend=backend)
        return pooled, idx, w

    _check_compiled(fn, (s, v), (s, v))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_compile_fullgraph_info_nce(backend):
    require_backend("info_nce", backend)
    a = torch.randn(3, 5, 16, requires_grad=True)
    c = torch.randn(3, 7, 16, requires_grad=True)
    t = torch.randint(0, 7, (3, 5))
    t[0, 0] = -100

    def fn(a, c):
        return art_fast.info_nce(a, c, t, temperature=0.2) + art_fast.info_nce(
            a, a, torch.arange(5).expand(3, 5), reduction="sum", backend=backend)

    _check_compiled(fn, (a, c), (a, c))


def test_compile_traces_the_scoped_backend():
    """The backend in force when a function is traced is the one compiled in."""
    require_backend("cross_attention", "cpu")
    q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    with art_fast.use_backend("torch"):
        out = torch.compile(lambda q, k: art_fast.cross_attention(q, k, k), fullgraph=True)(q, k)
    torch.testing.assert_close(out, reference.cross_attention(q, k, k))
