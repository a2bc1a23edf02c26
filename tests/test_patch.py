"""art_fast.patch: the cross-attention calls of nn.MultiheadAttention in a model art_fast did
not build go through art_fast.cross_attention, with the outputs and gradients of the unpatched
module; every other call is the original forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import art_fast
from tests import _util as U

# fp64: the op and torch's MHA agree to rounding (1e-10); fp32 to the fp32 sums' rounding
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-6)}
BACKENDS = [c for c in U.BACKEND_CASES if c.values[0] == "cpu"]


def _pair(module: nn.Module, backend: str) -> tuple[nn.Module, nn.Module, list[str]]:
    """(unpatched copy, patched copy, names patched)."""
    ref, fast = copy.deepcopy(module), copy.deepcopy(module)
    return ref, fast, art_fast.patch(fast, backend=backend)


def _grads(module: nn.Module, inputs: list[torch.Tensor], out: torch.Tensor,
           cot: torch.Tensor) -> list[torch.Tensor]:
    leaves = [*inputs, *[p for p in module.parameters() if p.requires_grad]]
    return list(torch.autograd.grad(out, leaves, cot))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kvdim", [None, 24])
@pytest.mark.parametrize("same_kv", [True, False])
@pytest.mark.parametrize("weights", ["none", "mean", "heads"])
def test_patched_mha_matches_unpatched(device, backend, dtype, batch_first, kvdim, same_kv,
                                       weights):
    U.require("cross_attention", device, backend)
    if U.is_interpreter(device, backend) and (dtype != torch.float64 or kvdim or not same_kv):
        pytest.skip("the interpreter runs the fp64, shared-width, key-is-value cases only")
    torch.manual_seed(0)
    E, H, B, M, N = 32, 4, 3, 5, 37
    mha = nn.MultiheadAttention(E, H, kdim=kvdim, vdim=kvdim, batch_first=batch_first,
                                dtype=dtype)
    with torch.no_grad():  # a non-zero output projection bias, random biases
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref, fast, names = _pair(mha, backend)
    assert names == [""]
    kd = kvdim or E
    q = torch.randn(B, M, E, dtype=dtype, requires_grad=True)
    k = torch.randn(B, N, kd, dtype=dtype, requires_grad=True)
    v = k if same_kv else torch.randn(B, N, kd, dtype=dtype, requires_grad=True)
    if not batch_first:
        q, k, v = (t.detach().transpose(0, 1).contiguous().requires_grad_() for t in (q, k, v))
        if same_kv:
            v = k
    inputs = [q, k] if same_kv else [q, k, v]
    kw = dict(need_weights=weights != "none", average_attn_weights=weights == "mean")
    o_ref, w_ref = ref(q, k, v, **kw)
    o_fast, w_fast = fast(q, k, v, **kw)
    assert o_fast.shape == o_ref.shape and o_fast.dtype == o_ref.dtype
    torch.testing.assert_close(o_fast, o_ref, **TOL[dtype])
    if weights == "none":
        assert w_ref is None and w_fast is None
    else:
        assert w_fast.shape == w_ref.shape
        torch.testing.assert_close(w_fast, w_ref, **TOL[dtype])
    cot = torch.randn_like(o_ref)
    for a, b in zip(_grads(fast, inputs, o_fast, cot), _grads(ref, inputs, o_ref, cot)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_recognised_calls_reach_the_op_and_others_do_not(monkeypatch):
    """Which calls go to art_fast.cross_attention: cross-attention yes; self-attention, masks,
    causal, training dropout, bias_k, unbatched inputs no (the original forward, unchanged
    results)."""
    from art_fast import _patch as P

    calls = []
    real = P.cross_attention

    def counting(*a, **kw):
        calls.append(a[0].shape)
        return real(*a, **kw)

    monkeypatch.setattr(P, "cross_attention", counting)
    torch.manual_seed(1)
    E, H = 16, 2
    x, y = torch.randn(2, 3, E), torch.randn(2, 9, E)
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    art_fast.patch(mha, backend="torch")
    mha(x, y, y)
    assert calls == [torch.Size([2, H, 3, E // H])]
    calls.clear()
    reference = copy.deepcopy(mha)
    art_fast.unpatch(reference)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, -1] = True
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, 0] = True
    others = [
        ((x, x, x), {}),  # self-attention
        ((x, y, y), {"attn_mask": mask}),
        ((x, y, y), {"key_padding_mask": pad}),
        ((x[0], y[0], y[0]), {}),  # unbatched
    ]
    for args, kw in others:
        torch.testing.assert_close(mha(*args, **kw)[0], reference(*args, **kw)[0],
                                   rtol=0, atol=0)
    assert calls == []
    drop = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    art_fast.patch(drop, backend="torch")
    drop.train()
    drop(x, y, y)
    assert calls == []  # dropout in effect: the original
    drop.eval()
    drop(x, y, y)
    assert len(calls) == 1  # eval mode: no dropout, recognised
    bias_kv = nn.MultiheadAttention(E, H, add_bias_kv=True, batch_first=True)
    art_fast.patch(bias_kv, backend="torch")
    bias_kv(x, y, y)
    assert len(calls) == 1


def test_patch_keeps_state_dict_names_and_reports_what_it_replaced():
    class Decoder(nn.Module):  # an X-CLIP-like decoder block: a token over frame features
        def __init__(self):
            super().__init__()
            self.cross = nn.MultiheadAttention(16, 4)
            self.self_attn = nn.MultiheadAttention(16, 4)
            self.mlp = nn.Linear(16, 16)

    model = nn.Sequential(Decoder(), Decoder())
    before = list(model.state_dict())
    names = art_fast.patch(model)
    assert names == ["0.cross", "0.self_attn", "1.cross", "1.self_attn"]
    assert list(model.state_dict()) == before
    assert art_fast.patch(model) == []  # already patched: nothing new
    assert type(model[0].cross) is nn.MultiheadAttention
    clone = copy.deepcopy(model)  # a patched model copies (and its copies stay patched)
    assert art_fast.unpatch(clone) == names
    assert art_fast.unpatch(model) == names
    assert "forward" not in vars(model[0].cross)


def test_patch_open_clip_attentional_pooler():
    """open_clip's AttentionalPooler (CoCa): learned queries over the image tokens, an
    nn.MultiheadAttention with kdim/vdim and an expanded query."""
    from open_clip.transformer import AttentionalPooler

    torch.manual_seed(2)
    pool = AttentionalPooler(d_model=32, context_dim=24, n_head=4, n_queries=6).double()
    ref, fast, names = _pair(pool, "torch")
    assert names == ["attn"]
    x = torch.randn(3, 50, 24, dtype=torch.float64, requires_grad=True)
    o_ref, o_fast = ref(x), fast(x)
    torch.testing.assert_close(o_fast, o_ref, **TOL[torch.float64])
    cot = torch.randn_like(o_ref)
    for a, b in zip(_grads(fast, [x], o_fast, cot), _grads(ref, [x], o_ref, cot)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("bad, err, match", [
    ("model", TypeError, "model must be a torch.nn.Module"),
    ("backend", ValueError, "backend must be one of"),
])
def test_patch_rejects_bad_arguments(bad, err, match):
    with pytest.raises(err, match=match):
        if bad == "model":
            art_fast.patch(lambda x: x)  # type: ignore[arg-type]
        else:
            art_fast.patch(nn.MultiheadAttention(8, 2), backend="fastest")
