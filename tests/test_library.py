"""torch.library registration: opcheck (schema, fake kernel, autograd, AOT dispatch) on every
compiled op, and torch.compile(fullgraph=True) over every public op with no graph break."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import reference
from art_fast._contract import _CONTRACTS as CONTRACTS
from art_fast.ops import SPECS
from tests._util import check_compiled, require_backend

# The compiled backends whose entries opcheck exercises: the C++ ops on the CPU, the Triton ops
# on CPU tensors under the interpreter, and both on a GPU.
_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                            reason="needs a CUDA device")]
ENTRY_BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("cpu", "triton", id="triton-interpret"),
    pytest.param("cuda", "cuda", id="cuda", marks=_GPU),
    pytest.param("cuda", "triton", id="cuda-triton", marks=_GPU),
]


@pytest.mark.parametrize("device,backend", ENTRY_BACKENDS)
@pytest.mark.parametrize("op", tuple(SPECS))
def test_opcheck(op, device, backend):
    """Every differentiable entry of every op (the spec's entry samples) on every compiled
    backend: schema, fake kernel, autograd registration, AOT dispatch."""
    spec = SPECS[op]
    require_backend(op, backend)
    impl = CONTRACTS[op].impl(backend)
    samples = spec.entry_samples(device)
    assert set(samples) <= set(spec.entries), f"{op}: samples for unknown entries"
    assert "fwd" in samples, f"{op}: the spec has no sample of the fwd entry"
    for entry, calls in samples.items():
        for args in calls:
            torch.library.opcheck(getattr(impl, entry), args)


def test_every_backend_has_the_same_schemas():
    """One contract: the Triton ops declare exactly the C++ ops' schemas (names, argument
    names and types, returns), entry by entry."""
    for op, spec in SPECS.items():
        for backend in ("cpu", "triton"):
            require_backend(op, backend)
        for entry in spec.entries:
            cpp = getattr(torch.ops.art_fast, f"{op}_{entry}").default._schema
            tri = getattr(torch.ops.art_fast_triton, f"{op}_{entry}").default._schema
            assert [(a.name, str(a.type)) for a in cpp.arguments] == \
                [(a.name, str(a.type)) for a in tri.arguments], f"{op}_{entry}: arguments"
            assert [str(r.type) for r in cpp.returns] == [str(r.type) for r in tri.returns], \
                f"{op}_{entry}: returns"


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

    check_compiled(fn, (q, k, v), (q, k, v))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_compile_fullgraph_topk_regions(backend):
    require_backend("topk_regions", backend)
    s = torch.randn(2, 3, 20, requires_grad=True)
    v = torch.randn(2, 20, 6, requires_grad=True)

    def fn(s, v):
        pooled, idx, w = art_fast.topk_regions(s * 1.5, v, 5, backend=backend)
        return pooled, idx, w

    check_compiled(fn, (s, v), (s, v))


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

    check_compiled(fn, (a, c), (a, c))


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
@pytest.mark.parametrize("op", tuple(SPECS))
def test_compile_fullgraph_spec_cases(op, backend):
    """torch.compile(fullgraph=True) of every op at every sample shape of its spec: the same
    outputs and input gradients as eager, no graph break."""
    spec = SPECS[op]
    require_backend(op, backend)
    for case in spec.cases("cpu", seed=3):
        def fn(*args, case=case):
            return spec.fn(*args, **case.kwargs, backend=backend)

        check_compiled(fn, case.args, case.grad_inputs)


def test_compile_traces_the_scoped_backend():
    """The backend in force when a function is traced is the one compiled in."""
    require_backend("cross_attention", "cpu")
    q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    with art_fast.use_backend("torch"):
        out = torch.compile(lambda q, k: art_fast.cross_attention(q, k, k), fullgraph=True)(q, k)
    torch.testing.assert_close(out, reference.cross_attention(q, k, k))
