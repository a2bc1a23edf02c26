"""Query-to-patch cross-attention (DESIGN §3.1): the public function and the op's contract
(``art_fast._contract``): one fake kernel per entry, one setup_context and one backward,
registered for every backend (``art_fast::`` C++ on cpu/cuda, ``art_fast_triton::``).

Entries (the schema of ``csrc/cpu/cross_attention.cpp``, its contract in
``csrc/cross_attention.h``; the Triton ops match it):

- ``cross_attention_fwd(q, k, v, scale, return_weights) -> (out, lse, weights)``: q
  ``[Bq, H, M, D]`` with Bq in {1, B} (1: one query set shared by the B groups), k, v
  ``[B, H, N, D]``, contiguous, one floating dtype; out ``[B, H, M, D]``, lse ``[B, H, M]`` (the
  per-row log-sum-exp of the scaled scores, float32, float64 for float64 inputs), weights
  ``[B, H, M, N]`` when return_weights, else ``[0]``.
- ``cross_attention_bwd(grad_out, grad_weights?, q, k, v, out, lse, scale) -> (dq, dk, dv)``:
  dq like q (summed over B in a fixed order when Bq = 1).
"""

from __future__ import annotations

import torch

from .. import _autograd, _backend, reference
from .._contract import OpContract
from .._spec import Case, OpSpec, randn
from ._validate import acc_dtype as _acc_dtype
from ._validate import check_dim, check_float, check_same, check_tensor

_OP = "cross_attention"
_SHAPE_Q, _SHAPE_KV = "[B, H, M, D]", "[B, H, N, D]"


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    return_weights: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale) v`` for a few queries over many patches.

    Args:
        q: ``[B, H, M, D]`` queries (M small, 1..64). May be broadcast over B (stride 0 in
            dim 0, e.g. ``queries.expand(B, -1, -1, -1)``) or given as ``[1, H, M, D]``: one
            query set shared by every group; its gradient is then summed over B in a fixed
            order (deterministic). A broadcast q that requires grad gets its gradient per row
            (summed by the expand's backward for its base).
        k, v: ``[B, H, N, D]`` keys and values (N patches, any N >= 1).
        scale: multiplies the scores; ``D ** -0.5`` when None.
        return_weights: also return the probabilities ``[B, H, M, N]`` (gradients flow
            through them too).
        backend: ``torch``, ``cpu``, ``triton``, ``cuda`` or ``auto``; None uses the backend in
            force (see :func:`art_fast.set_backend`).

    Dtypes: float16, bfloat16, float32, float64 (one dtype for all three); fp32 accumulation
    for the 16-bit types. Any strides: inputs are made contiguous where a kernel needs it.

    Returns:
        out ``[B, H, M, D]`` in the dtype of q, and the weights when ``return_weights``.
    """
    check_tensor(_OP, "q", q, _SHAPE_Q)
    check_tensor(_OP, "k", k, _SHAPE_KV)
    check_tensor(_OP, "v", v, _SHAPE_KV)
    check_same(_OP, ("q", "k", "v"), (q, k, v))
    B, H, N, D = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            f"art_fast.{_OP}: v must have the shape of k {_SHAPE_KV} = {tuple(k.shape)}, "
            f"got {tuple(v.shape)}"
        )
    if q.shape[0] not in (B, 1):
        raise ValueError(
            f"art_fast.{_OP}: q must have shape {_SHAPE_Q} with B = {B} (or 1 to share the "
            f"queries), got {tuple(q.shape)}"
        )
    check_dim(_OP, "q", q.shape[1], H, "H", _SHAPE_Q)
    check_dim(_OP, "q", q.shape[3], D, "D", _SHAPE_Q)
    scale = D**-0.5 if scale is None else check_float(_OP, "scale", scale)
    if not isinstance(return_weights, bool):
        raise TypeError(f"art_fast.{_OP}: return_weights must be a bool, got {return_weights!r}")

    name = _backend.resolve(_OP, backend, q.device, q.dtype)
    if name == "torch":
        if q.shape[0] != B:
            q = q.expand(B, -1, -1, -1)
        return reference.cross_attention(q, k, v, scale, return_weights)
    if _autograd.transforms_active():
        # 1. torch.func: the op through an autograd.Function torch.func accepts.
        out, _lse, weights = CONTRACT.function(name).apply(
            q.contiguous(), k.contiguous(), v.contiguous(), scale, return_weights
        )
        return (out, weights) if return_weights else out
    # 2. A query set broadcast over B (stride 0) reaches the kernel once ([1, H, M, D]), whose
    # dq is summed over B, only when q's gradient is not asked for. Otherwise the gradient of
    # q itself is observable per row (a stride-0 leaf, or autograd.grad w.r.t. an expanded
    # view), and a slice q[:1] would put the whole sum in row 0: the kernel then gets
    # the rows ([B, H, M, D], made contiguous) and the expand's backward sums them for the base.
    if (q.shape[0] == B and B > 1 and q.stride(0) == 0
            and not (torch.is_grad_enabled() and q.requires_grad)):
        q = q[:1]
    out, _lse, weights = CONTRACT.impl(name).fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), scale, return_weights
    )
    return (out, weights) if return_weights else out


CONTRACT = OpContract(_OP, ("fwd", "bwd"))


@CONTRACT.fake("fwd")
def _fake_fwd(q, k, v, scale, return_weights):
    B, H, N, D = k.shape
    M = q.shape[2]
    out = q.new_empty((B, H, M, D))
    lse = q.new_empty((B, H, M), dtype=_acc_dtype(q.dtype))
    weights = q.new_empty((B, H, M, N)) if return_weights else q.new_empty((0,))
    return out, lse, weights


@CONTRACT.fake("bwd")
def _fake_bwd(grad_out, grad_weights, q, k, v, out, lse, scale):
    # contiguous, whatever the inputs' strides (as the kernels return them)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, return_weights = inputs
    out, lse, _weights = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    # Unused outputs get None, not zero-filled gradients (no dW pass when weights are unused).
    ctx.set_materialize_grads(False)
    ctx.scale = scale
    ctx.return_weights = return_weights


def _backward(impl, ctx, grad_out, _grad_lse, grad_weights):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    gw = grad_weights if ctx.return_weights else None  # None when the weights were unused
    # 3. The bwd entry is not differentiated itself (no_grad: under create_graph=True the
    #    Triton custom op would otherwise build a node torch.func refuses); a second derivative
    #    raises instead of being a silent 0.
    with torch.no_grad():
        dq, dk, dv = impl.bwd(grad_out.contiguous(), None if gw is None else gw.contiguous(),
                              q, k, v, out, lse, ctx.scale)
    dq, dk, dv = _autograd.once_differentiable(
        _OP, impl.backend(q.device), (dq, dk, dv), (grad_out, grad_weights, q, k, v)
    )
    return dq, dk, dv, None, None


def _vmap_rule(apply, info, in_dims, q, k, v, scale, return_weights):
    """The vmap rule of the fwd entry (see ``_autograd.transformable``): the vmapped dim folded
    into B."""
    V = info.batch_size
    q, k, v = (_autograd.batch_first(x, d, V) for x, d in zip((q, k, v), in_dims))
    B = k.shape[1]
    if q.shape[1] != B:  # [V, 1, H, M, D]: one query set per vmapped sample
        q = q.expand(V, B, *q.shape[2:])
    out, lse, weights = apply(_autograd.fold(q), _autograd.fold(k), _autograd.fold(v),
                              scale, return_weights)
    outs = [_autograd.unfold(out, V), _autograd.unfold(lse, V),
            _autograd.unfold(weights, V) if return_weights else (weights, None)]
    return tuple(o for o, _ in outs), tuple(d for _, d in outs)


def _bwd_vmap_rule(bwd):
    """The vmap rule of the bwd entry ``bwd`` (vmap over torch.func.grad: the backward runs on
    batched tensors), folding the vmapped dim into B; a query set shared over B
    (``[1, H, M, D]`` per sample) is expanded, and its gradient summed back over B."""

    def rule(info, in_dims, grad_out, grad_weights, q, k, v, out, lse, scale):
        V = info.batch_size
        go, q, k, v, out, lse = (_autograd.batch_first(x, in_dims[i], V) for i, x in
                                 ((0, grad_out), (2, q), (3, k), (4, v), (5, out), (6, lse)))
        B = k.shape[1]
        shared = q.shape[1] != B
        if shared:
            q = q.expand(V, B, *q.shape[2:])
        gw = (None if grad_weights is None
              else _autograd.fold(_autograd.batch_first(grad_weights, in_dims[1], V)))
        dq, dk, dv = bwd(_autograd.fold(go), gw, _autograd.fold(q), _autograd.fold(k),
                         _autograd.fold(v), _autograd.fold(out), _autograd.fold(lse), scale)
        dq = dq.unflatten(0, (V, B))
        if shared:
            dq = dq.sum(1, keepdim=True, dtype=_acc_dtype(dq.dtype)).to(dq.dtype)
        return (dq, dk.unflatten(0, (V, B)), dv.unflatten(0, (V, B))), (0, 0, 0)

    return rule


CONTRACT.differentiable("fwd", _setup_context, _backward)
CONTRACT.vmap(_vmap_rule, _bwd_vmap_rule)
CONTRACT.seal()


def _case(p: dict[str, int], dtype: torch.dtype, device, gen: torch.Generator) -> Case:
    """q ``[Bq, H, M, D]`` (Bq = p.get("Bq", B): 1 shares the queries), k, v ``[B, H, N, D]``;
    the weights returned when p["weights"]."""
    B, H, M, N, D = p["B"], p["H"], p["M"], p["N"], p["D"]
    Bq = p.get("Bq", B)
    q = randn(gen, (Bq, H, M, D), dtype, device)
    k = randn(gen, (B, H, N, D), dtype, device)
    v = randn(gen, (B, H, N, D), dtype, device)
    kwargs = {"return_weights": True} if p.get("weights") else {}
    return Case(f"q[{Bq},{H},{M},{D}] kv[{B},{H},{N},{D}]", (q, k, v), kwargs)


def _entry_samples(device) -> dict[str, list[tuple]]:
    def t(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    q, k, v, qs = t(2, 3, 4, 8), t(2, 3, 9, 8), t(2, 3, 9, 8), t(1, 3, 4, 8)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    return {"fwd": [(q, k, v, 0.35, False), (q, k, v, 0.35, True), (qs, k, v, 0.2, True),
                    (qd, kd, vd, 0.35, True)]}


def _ca(B: int, M: int, N: int = 196, H: int = 8, D: int = 32) -> dict[str, int]:
    return {"B": B, "H": H, "M": M, "N": N, "D": D}


# DESIGN §7 paper shapes: B x T = 8 x 16 frames on CPU (32 x 16 on GPU), N = 196 patches,
# 8 heads of 32, K = 16 and 2 queries.
SPEC = OpSpec.of(
    CONTRACT, cross_attention, _case, _entry_samples,
    sample_shapes=(
        {"B": 2, "H": 3, "M": 4, "N": 9, "D": 8, "weights": 1},
        {"B": 3, "H": 2, "M": 5, "N": 33, "D": 16, "Bq": 1},
        {"B": 1, "H": 1, "M": 1, "N": 1, "D": 5},
        {"B": 2, "H": 2, "M": 17, "N": 70, "D": 24, "weights": 1},
    ),
    bench_shapes={"cpu": (_ca(128, 16), _ca(128, 2)), "cuda": (_ca(512, 16), _ca(512, 2)),
                  "quick": (_ca(4, 4, N=49, H=2), _ca(4, 2, N=49, H=2)),
                  "small": (_ca(16, 16),)},
)
