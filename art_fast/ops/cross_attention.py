"""Query-to-patch cross-attention (DESIGN §3.1): public function, backend dispatch, and the
torch.library registration (fake kernel + autograd) of ``art_fast::cross_attention_fwd``."""

from __future__ import annotations

import torch

from .. import _backend, _ext, reference
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
            order (deterministic).
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
    # A query set shared over B reaches the kernel once ([1, H, M, D]); the kernel sums its
    # gradient over B, and autograd's slice/expand backward routes that sum back to q.
    if q.shape[0] == B and B > 1 and q.stride(0) == 0:
        q = q[:1]
    fwd = (
        _backend.triton_kernels(_OP).forward
        if name == "triton"
        else torch.ops.art_fast.cross_attention_fwd
    )
    out, _lse, weights = fwd(q.contiguous(), k.contiguous(), v.contiguous(), scale, return_weights)
    return (out, weights) if return_weights else out


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
        return dq, dk, dv, None, None

    torch.library.register_autograd(
        "art_fast::cross_attention_fwd", _backward, setup_context=_setup_context
    )
