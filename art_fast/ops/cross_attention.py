"""Query-to-patch cross-attention (DESIGN §3.1): public function, backend dispatch, and the
torch.library registration (fake kernel + autograd) of ``art_fast::cross_attention_fwd``."""

from __future__ import annotations

import torch

from .. import _autograd, _backend, _ext, reference
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
        # 1. torch.func (issue 14): the op through an autograd.Function torch.func accepts.
        out, _lse, weights = _transformable(name).apply(
            q.contiguous(), k.contiguous(), v.contiguous(), scale, return_weights
        )
        return (out, weights) if return_weights else out
    # 2. A query set broadcast over B (stride 0) reaches the kernel once ([1, H, M, D]), whose
    # dq is summed over B, only when q's gradient is not asked for. Otherwise the gradient of
    # q itself is observable per row (a stride-0 leaf, or autograd.grad w.r.t. an expanded
    # view: issue 14), and a slice q[:1] would put the whole sum in row 0: the kernel then gets
    # the rows ([B, H, M, D], made contiguous) and the expand's backward sums them for the base.
    if (q.shape[0] == B and B > 1 and q.stride(0) == 0
            and not (torch.is_grad_enabled() and q.requires_grad)):
        q = q[:1]
    fwd = (
        _backend.triton_kernels(_OP).forward
        if name == "triton"
        else torch.ops.art_fast.cross_attention_fwd
    )
    out, _lse, weights = fwd(q.contiguous(), k.contiguous(), v.contiguous(), scale, return_weights)
    return (out, weights) if return_weights else out


def _vmap_rule(stats_dim: int):
    """The vmap rule of the op (see ``_autograd.transformable``); ``stats_dim``: the batch dim
    of the softmax statistics (cpu/cuda: lse ``[B, H, M]``, 0; triton: ``[2, B, H, M]``, 1)."""

    def rule(apply, info, in_dims, q, k, v, scale, return_weights):
        V = info.batch_size
        q, k, v = (_autograd.batch_first(x, d, V) for x, d in zip((q, k, v), in_dims))
        B = k.shape[1]
        if q.shape[1] != B:  # [V, 1, H, M, D]: one query set per vmapped sample
            q = q.expand(V, B, *q.shape[2:])
        out, stats, weights = apply(_autograd.fold(q), _autograd.fold(k), _autograd.fold(v),
                                    scale, return_weights)
        outs = [_autograd.unfold(out, V), _autograd.unfold(stats, V, stats_dim),
                _autograd.unfold(weights, V) if return_weights else (weights, None)]
        return tuple(o for o, _ in outs), tuple(d for _, d in outs)

    return rule


def _bwd_vmap_rule(bwd, stats_dim: int):
    """A vmap rule for the backward op ``bwd`` (vmap over torch.func.grad: the backward runs on
    batched tensors), folding the vmapped dim into B; a query set shared over B
    (``[1, H, M, D]`` per sample) is expanded, and its gradient summed back over B."""

    def rule(info, in_dims, grad_out, grad_weights, q, k, v, out, stats, scale):
        V = info.batch_size
        go, q, k, v, out = (_autograd.batch_first(x, in_dims[i], V)
                            for i, x in ((0, grad_out), (2, q), (3, k), (4, v), (5, out)))
        B = k.shape[1]
        shared = q.shape[1] != B
        if shared:
            q = q.expand(V, B, *q.shape[2:])
        gw = (None if grad_weights is None
              else _autograd.fold(_autograd.batch_first(grad_weights, in_dims[1], V)))
        st = _autograd.fold(_autograd.batch_first(stats, in_dims[6], V, stats_dim), stats_dim)
        dq, dk, dv = bwd(_autograd.fold(go), gw, _autograd.fold(q), _autograd.fold(k),
                         _autograd.fold(v), _autograd.fold(out), st, scale)
        dq = dq.unflatten(0, (V, B))
        if shared:
            dq = dq.sum(1, keepdim=True, dtype=_acc_dtype(dq.dtype)).to(dq.dtype)
        return (dq, dk.unflatten(0, (V, B)), dv.unflatten(0, (V, B))), (0, 0, 0)

    return rule


def _transformable(name: str) -> type[torch.autograd.Function]:
    """The autograd.Function of backend ``name`` for torch.func (see
    ``_autograd.backend_function``)."""
    return _autograd.backend_function(
        _OP, name, lambda: (torch.ops.art_fast.cross_attention_fwd, _setup_context, _backward),
        lambda stats_dim: (_vmap_rule(stats_dim),
                           lambda op: _bwd_vmap_rule(op, stats_dim)),
    )


if _ext.EXT_LOADED:

    @torch.library.register_fake("art_fast::cross_attention_fwd")
    def _fake_fwd(q, k, v, scale, return_weights):
        B, H, N, D = k.shape
        M = q.shape[2]
        out = q.new_empty((B, H, M, D))
        lse = q.new_empty((B, H, M), dtype=_acc_dtype(q.dtype))
        weights = q.new_empty((B, H, M, N)) if return_weights else q.new_empty((0,))
        return out, lse, weights

    @torch.library.register_fake("art_fast::cross_attention_bwd")
    def _fake_bwd(grad_out, grad_weights, q, k, v, out, lse, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def _setup_context(ctx, inputs, output):
        q, k, v, scale, return_weights = inputs
        out, lse, _weights = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.return_weights = return_weights

    def _backward(ctx, grad_out, _grad_lse, grad_weights):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        gw = grad_weights.contiguous() if ctx.return_weights and grad_weights is not None else None
        dq, dk, dv = torch.ops.art_fast.cross_attention_bwd(
            grad_out.contiguous(), gw, q, k, v, out, lse, ctx.scale
        )
        # 3. create_graph=True: a second derivative raises instead of being a silent 0.
        dq, dk, dv = _autograd.once_differentiable(
            _OP, q.device.type, (dq, dk, dv), (grad_out, grad_weights, q, k, v)
        )
        return dq, dk, dv, None, None

    torch.library.register_autograd(
        "art_fast::cross_attention_fwd", _backward, setup_context=_setup_context
    )
