"""InfoNCE over groups of anchors and candidates (DESIGN §3.3): public function, backend
dispatch, and the torch.library registration of ``art_fast::info_nce_fwd`` / ``_fused``.

Two kernel paths:

- ``reduction="none"``: ``info_nce_fwd`` computes the per-row loss ``[G, M]`` (float32; float64
  for float64 inputs) and its log-sum-exp; autograd hands ``info_nce_bwd`` one upstream
  gradient per row, and it recomputes the logits.
- ``reduction="mean"`` / ``"sum"`` (training): the upstream gradient of every row is the same
  scalar (times 1/count or 1), so ``info_nce_fused`` returns the reduced loss together with its
  gradients, computed in the forward while the logits are hot (the Liger-Kernel fused
  cross-entropy trick); the autograd backward only multiplies them by the scalar upstream
  gradient. The gradients are computed only when autograd will need them
  (``torch.is_grad_enabled()`` and an input requires grad); they are held, in the dtype of the
  inputs, from the forward to the backward (the memory of one gradient per input).
"""

from __future__ import annotations

import torch

from .. import _backend, _ext, reference
from ..reference.info_nce import IGNORE_INDEX
from ._validate import acc_dtype, check_dim, check_float, check_same, check_tensor

_OP = "info_nce"
_SHAPE_A, _SHAPE_C, _SHAPE_T = "[G, M, D]", "[G, N, D]", "[G, M]"
REDUCTIONS = ("mean", "sum", "none")


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """InfoNCE: each anchor must pick its target among the candidates of its group.

    ``logits[g, i, j] = <a_gi, c_gj> / temperature`` (after L2 normalisation when
    ``normalize``); ``loss[g, i] = logsumexp_j logits[g, i, :] - logits[g, i, targets[g, i]]``.

    Args:
        anchors: ``[G, M, D]``.
        candidates: ``[G, N, D]``, same dtype and device; may be the same tensor as anchors.
        targets: ``[G, M]`` int64 in ``[0, N)``, or -100 to ignore the row.
        temperature: > 0.
        normalize: L2-normalise anchors and candidates (eps 1e-12, as ``F.normalize``).
        reduction: ``"mean"`` over non-ignored rows (0, with zero gradients, when every row is
            ignored), ``"sum"``, or ``"none"`` (``[G, M]``, 0 on ignored rows).
        backend: as for :func:`art_fast.cross_attention`.

    Two regimes: many tiny groups (G up to 1e5, M, N <= 64) and few large groups (M, N up to
    32768); the fused kernels never materialise the ``[M, N]`` logits of a large group.

    Returns:
        a 0-dim tensor, or ``[G, M]`` for ``"none"``, in the dtype of the inputs.
    """
    check_tensor(_OP, "anchors", anchors, _SHAPE_A)
    check_tensor(_OP, "candidates", candidates, _SHAPE_C)
    check_same(_OP, ("anchors", "candidates"), (anchors, candidates))
    G, M, D = anchors.shape
    check_dim(_OP, "candidates", candidates.shape[0], G, "G", _SHAPE_C)
    check_dim(_OP, "candidates", candidates.shape[2], D, "D", _SHAPE_C)
    N = candidates.shape[1]
    if not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"art_fast.{_OP}: targets must be a torch.Tensor {_SHAPE_T}, got {type(targets)}"
        )
    if targets.dtype != torch.int64:
        raise TypeError(f"art_fast.{_OP}: targets must be int64 {_SHAPE_T}, got {targets.dtype}")
    if tuple(targets.shape) != (G, M):
        raise ValueError(
            f"art_fast.{_OP}: targets must have shape {_SHAPE_T} = {(G, M)}, "
            f"got {tuple(targets.shape)}"
        )
    if targets.device != anchors.device:
        raise ValueError(
            f"art_fast.{_OP}: targets must be on the device of anchors ({anchors.device}), "
            f"got {targets.device}"
        )
    temperature = check_float(_OP, "temperature", temperature, positive=True)
    if not isinstance(normalize, bool):
        raise TypeError(f"art_fast.{_OP}: normalize must be a bool, got {normalize!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"art_fast.{_OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}"
        )
    if not torch.compiler.is_compiling():
        # A data-dependent check: skipped while tracing (the kernels check it again).
        bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= N))
        if bool(bad.any()):
            raise ValueError(
                f"art_fast.{_OP}: targets must be in [0, N = {N}) or {IGNORE_INDEX}, got "
                f"{targets[bad][:5].tolist()}"
            )

    name = _backend.resolve(_OP, backend, anchors.device, anchors.dtype)
    if name == "torch":
        return reference.info_nce(anchors, candidates, targets, temperature, normalize, reduction)
    if name == "triton":
        return _backend.triton_kernels(_OP).forward(
            anchors, candidates, targets, temperature, normalize, reduction
        )
    if reduction == "none":
        loss, _lse = torch.ops.art_fast.info_nce_fwd(
            anchors.contiguous(),
            candidates.contiguous(),
            targets.contiguous(),
            temperature,
            normalize,
        )
        return loss.to(anchors.dtype)
    compute_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
    total, _ga, _gc = torch.ops.art_fast.info_nce_fused(
        anchors.contiguous(),
        candidates.contiguous(),
        targets.contiguous(),
        temperature,
        normalize,
        reduction == "mean",
        compute_grad,
    )
    return total.to(anchors.dtype)


if _ext.EXT_LOADED:

    @torch.library.register_fake("art_fast::info_nce_fwd")
    def _fake_fwd(anchors, candidates, targets, temperature, normalize):
        G, M, _ = anchors.shape
        acc = acc_dtype(anchors.dtype)
        return anchors.new_empty((G, M), dtype=acc), anchors.new_empty((G, M), dtype=acc)

    @torch.library.register_fake("art_fast::info_nce_bwd")
    def _fake_bwd(grad_loss, anchors, candidates, targets, lse, temperature, normalize):
        return torch.empty_like(anchors), torch.empty_like(candidates)

    def _setup_context(ctx, inputs, output):
        anchors, candidates, targets, temperature, normalize = inputs
        _loss, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(anchors, candidates, targets, lse)
        ctx.temperature = temperature
        ctx.normalize = normalize

    def _backward(ctx, grad_loss, _grad_lse):
        anchors, candidates, targets, lse = ctx.saved_tensors
        ga, gc = torch.ops.art_fast.info_nce_bwd(
            grad_loss.to(lse.dtype).contiguous(),
            anchors,
            candidates,
            targets,
            lse,
            ctx.temperature,
            ctx.normalize,
        )
        return ga, gc, None, None, None

    torch.library.register_autograd(
        "art_fast::info_nce_fwd", _backward, setup_context=_setup_context
    )

    @torch.library.register_fake("art_fast::info_nce_fused")
    def _fake_fused(anchors, candidates, targets, temperature, normalize, mean, compute_grad):
        loss = anchors.new_empty((), dtype=acc_dtype(anchors.dtype))
        if compute_grad:
            return loss, torch.empty_like(anchors), torch.empty_like(candidates)
        return loss, anchors.new_empty((0,)), candidates.new_empty((0,))

    def _fused_setup_context(ctx, inputs, output):
        _loss, grad_anchors, grad_candidates = output
        ctx.mark_non_differentiable(grad_anchors, grad_candidates)
        # Otherwise autograd hands the backward two zero-filled tensors the size of the
        # gradients for the non-differentiable outputs (allocated and written every backward).
        ctx.set_materialize_grads(False)
        ctx.compute_grad = inputs[6]
        ctx.save_for_backward(grad_anchors, grad_candidates)

    def _fused_backward(ctx, grad_loss, _grad_ga, _grad_gc):
        if not ctx.compute_grad:
            raise RuntimeError(
                "art_fast.info_nce: backward through info_nce_fused(compute_grad=False); the "
                "gradients were not computed in the forward"
            )
        grad_anchors, grad_candidates = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None, None, None
        ga = (grad_loss * grad_anchors).to(grad_anchors.dtype)
        gc = (grad_loss * grad_candidates).to(grad_candidates.dtype)
        return ga, gc, None, None, None, None, None

    torch.library.register_autograd(
        "art_fast::info_nce_fused", _fused_backward, setup_context=_fused_setup_context
    )
