"""Top-k region selection and softmax pooling (DESIGN §3.2): public function, backend
dispatch, and the torch.library registration of ``art_fast::topk_regions_fwd``."""

from __future__ import annotations

import torch

from .. import _autograd, _backend, _ext, reference
from ._validate import check_dim, check_same, check_tensor

_OP = "topk_regions"
_SHAPE_S, _SHAPE_V = "[B, M, N]", "[B, N, C]"


def topk_regions(
    scores: torch.Tensor,
    values: torch.Tensor,
    k: int,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each row's k highest-scoring patches and softmax-pool their values.

    For each (b, m): ``I`` = the k highest ``scores[b, m]``, in descending order, ties broken
    by the lower index; NaN ranks below every number (-inf included). ``weights`` = softmax
    over ``scores[b, m, I]`` only; ``pooled[b, m] = sum_j weights_j * values[b, I_j]``.
    A row whose selection includes a NaN score (k larger than its count of numbers) gets NaN
    weights and pooled values, as a softmax over NaN does.

    Args:
        scores: ``[B, M, N]`` logits (per group b, per query m, one per patch n).
        values: ``[B, N, C]`` patch values, same dtype and device as scores.
        k: patches kept per row, ``1 <= k <= N`` (k = N is dense softmax pooling).
        backend: as for :func:`art_fast.cross_attention`.

    Returns:
        pooled ``[B, M, C]`` (dtype of values), indices ``[B, M, k]`` int64 (not
        differentiable), weights ``[B, M, k]`` (dtype of scores). Gradients reach scores
        (zero outside the selection) and values (summed per patch in a fixed order), through
        both pooled and weights.
    """
    check_tensor(_OP, "scores", scores, _SHAPE_S)
    check_tensor(_OP, "values", values, _SHAPE_V)
    check_same(_OP, ("scores", "values"), (scores, values))
    B, M, N = scores.shape
    check_dim(_OP, "values", values.shape[0], B, "B", _SHAPE_V)
    check_dim(_OP, "values", values.shape[1], N, "N", _SHAPE_V)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"art_fast.{_OP}: k must be an int in [1, N = {N}], got {k!r}")
    if not 1 <= k <= N:
        raise ValueError(f"art_fast.{_OP}: k must be in [1, N = {N}] (scores {_SHAPE_S}), got {k}")

    name = _backend.resolve(_OP, backend, scores.device, scores.dtype)
    if name == "torch":
        return reference.topk_regions(scores, values, k)
    if _autograd.transforms_active():
        # 1. torch.func (issue 14): the op through an autograd.Function torch.func accepts.
        return _transformable(name).apply(scores.contiguous(), values.contiguous(), k)
    fwd = (
        _backend.triton_kernels(_OP).forward
        if name == "triton"
        else torch.ops.art_fast.topk_regions_fwd
    )
    return fwd(scores.contiguous(), values.contiguous(), k)


def _vmap_rule(apply, info, in_dims, scores, values, k):
    """The vmap rule of the op (see ``_autograd.transformable``): the vmapped dim folded into B;
    every output has it first."""
    V = info.batch_size
    scores, values = (_autograd.batch_first(x, d, V) for x, d in zip((scores, values), in_dims))
    outs = apply(_autograd.fold(scores), _autograd.fold(values), k)
    return tuple(_autograd.unfold(o, V)[0] for o in outs), (0, 0, 0)


def _bwd_vmap_rule(bwd):
    """A vmap rule for the backward op ``bwd`` (vmap over torch.func.grad), folding the
    vmapped dim into B."""

    def rule(info, in_dims, grad_pooled, grad_weights, scores, values, indices):
        V = info.batch_size
        args = [None if x is None else _autograd.fold(_autograd.batch_first(x, d, V))
                for x, d in zip((grad_pooled, grad_weights, scores, values, indices), in_dims)]
        gs, gv = bwd(*args)
        return (_autograd.unfold(gs, V)[0], _autograd.unfold(gv, V)[0]), (0, 0)

    return rule


def _transformable(name: str) -> type[torch.autograd.Function]:
    """The autograd.Function of backend ``name`` for torch.func (see
    ``_autograd.backend_function``; topk_regions has no softmax statistics)."""
    return _autograd.backend_function(
        _OP, name, lambda: (torch.ops.art_fast.topk_regions_fwd, _setup_context, _backward),
        lambda _stats_dim: (_vmap_rule, _bwd_vmap_rule),
    )


if _ext.EXT_LOADED:

    @torch.library.register_fake("art_fast::topk_regions_fwd")
    def _fake_fwd(scores, values, k):
        B, M, _N = scores.shape
        C = values.shape[2]
        pooled = values.new_empty((B, M, C))
        indices = scores.new_empty((B, M, k), dtype=torch.int64)
        weights = scores.new_empty((B, M, k))
        return pooled, indices, weights

    @torch.library.register_fake("art_fast::topk_regions_bwd")
    def _fake_bwd(grad_pooled, grad_weights, scores, values, indices):
        return torch.empty_like(scores), torch.empty_like(values)

    def _setup_context(ctx, inputs, output):
        scores, values, _k = inputs
        _pooled, indices, _weights = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(scores, values, indices)

    def _backward(ctx, grad_pooled, _grad_indices, grad_weights):
        scores, values, indices = ctx.saved_tensors
        if grad_pooled is None:
            B, M, _ = scores.shape
            grad_pooled = values.new_zeros((B, M, values.shape[2]))
        gw = grad_weights.contiguous() if grad_weights is not None else None
        gs, gv = torch.ops.art_fast.topk_regions_bwd(
            grad_pooled.contiguous(), gw, scores, values, indices
        )
        # 2. create_graph=True: a second derivative raises instead of being a silent 0.
        gs, gv = _autograd.once_differentiable(
            _OP, scores.device.type, (gs, gv), (grad_pooled, grad_weights, scores, values)
        )
        return gs, gv, None

    torch.library.register_autograd(
        "art_fast::topk_regions_fwd", _backward, setup_context=_setup_context
    )
