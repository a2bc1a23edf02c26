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

from .. import _autograd, _backend, _ext, reference
from ..reference.info_nce import IGNORE_INDEX, mask_ignored
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
    if not torch.compiler.is_compiling() and not _autograd.is_batched(targets):
        # A data-dependent check: skipped while tracing (the kernels check it again) and for
        # targets batched by vmap (the vmap rule checks them).
        _check_targets(targets, N)

    name = _backend.resolve(_OP, backend, anchors.device, anchors.dtype)
    if name == "torch":
        return reference.info_nce(anchors, candidates, targets, temperature, normalize, reduction)
    # 1. Ignored rows get exactly zero gradient whatever their anchors (issue 14): their
    # anchors are replaced by a constant before the kernels (whose gradients of the candidates
    # sum 0 * a over the rows: NaN for a NaN or inf anchor), so the masked_fill's backward
    # zeroes theirs (see reference.info_nce.mask_ignored). Costs one pass over the anchors
    # forward and backward when a row is ignored (or always while tracing, under torch.func,
    # where the test is not data-dependent, and on GPUs, where the test would be a sync).
    ignored = targets == IGNORE_INDEX
    if (anchors.device.type != "cpu" or torch.compiler.is_compiling()
            or _autograd.transforms_active() or bool(ignored.any())):
        anchors = mask_ignored(anchors, ignored, normalize)
    if _autograd.transforms_active():
        # 2. torch.func (issue 14): the per-row op through an autograd.Function torch.func
        # accepts (the fused entry's reduced loss cannot be vmapped), reduced here.
        extra = (0,) if name == "triton" else ()  # the Triton op's regime: auto
        loss, _lse = _transformable(name).apply(
            anchors.contiguous(), candidates.contiguous(), targets.contiguous(), temperature,
            normalize, *extra,
        )
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / ignored.logical_not().sum().clamp(min=1).to(loss.dtype)
        return loss.to(anchors.dtype)
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


def _check_targets(targets: torch.Tensor, N: int) -> None:
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= N))
    if bool(bad.any()):
        raise ValueError(
            f"art_fast.{_OP}: targets must be in [0, N = {N}) or {IGNORE_INDEX}, got "
            f"{targets[bad][:5].tolist()}"
        )


def _vmap_rule(stats_dim: int):
    """The vmap rule of the per-row op (see ``_autograd.transformable``): the vmapped dim
    folded into G; ``stats_dim``: the batch dim of the log-sum-exp statistics (cpu/cuda:
    ``[G, M]``, 0; triton: ``[2, G, M]``, 1)."""

    def rule(apply, info, in_dims, anchors, candidates, targets, temperature, normalize,
             *extra):
        V = info.batch_size
        a, c, t = (_autograd.batch_first(x, d, V)
                   for x, d in zip((anchors, candidates, targets), in_dims))
        t = _autograd.fold(t)
        if not _autograd.is_batched(t):
            _check_targets(t, c.shape[2])
        loss, stats = apply(_autograd.fold(a), _autograd.fold(c), t, temperature, normalize,
                            *extra)
        (loss, dl), (stats, ds) = _autograd.unfold(loss, V), _autograd.unfold(stats, V, stats_dim)
        return (loss, stats), (dl, ds)

    return rule


def _bwd_vmap_rule(bwd, stats_dim: int):
    """A vmap rule for the per-row backward op ``bwd`` (vmap over torch.func.grad), folding the
    vmapped dim into G."""

    def rule(info, in_dims, grad_loss, anchors, candidates, targets, stats, *scalars):
        V = info.batch_size
        gl, a, c, t = (_autograd.fold(_autograd.batch_first(x, d, V))
                       for x, d in zip((grad_loss, anchors, candidates, targets), in_dims))
        st = _autograd.fold(_autograd.batch_first(stats, in_dims[4], V, stats_dim), stats_dim)
        ga, gc = bwd(gl, a, c, t, st, *scalars)
        return (_autograd.unfold(ga, V)[0], _autograd.unfold(gc, V)[0]), (0, 0)

    return rule


def _transformable(name: str) -> type[torch.autograd.Function]:
    """The autograd.Function of the per-row op of backend ``name`` for torch.func (see
    ``_autograd.backend_function``)."""
    return _autograd.backend_function(
        _OP, name, lambda: (torch.ops.art_fast.info_nce_fwd, _setup_context, _backward),
        lambda stats_dim: (_vmap_rule(stats_dim),
                           lambda op: _bwd_vmap_rule(op, stats_dim)),
    )


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
        # 3. create_graph=True: a second derivative raises instead of being a silent 0/None.
        ga, gc = _autograd.once_differentiable(
            _OP, anchors.device.type, (ga, gc), (grad_loss, anchors, candidates)
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
        ctx.device_type = inputs[0].device.type  # the backend's name: cpu or cuda
        ctx.save_for_backward(grad_anchors, grad_candidates)

    def _fused_backward(ctx, grad_loss, _grad_ga, _grad_gc):
        if not ctx.compute_grad:
            raise RuntimeError(
                "art_fast.info_nce: backward through info_nce_fused(compute_grad=False); the "
                "gradients were not computed in the forward"
            )
        # 4. create_graph=True raises at once: the gradients were computed in the forward
        # (constants here), and the inputs they depend on are not saved.
        _autograd.no_double_backward(_OP, ctx.device_type)
        grad_anchors, grad_candidates = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None, None, None
        ga = (grad_loss * grad_anchors).to(grad_anchors.dtype)
        gc = (grad_loss * grad_candidates).to(grad_candidates.dtype)
        return ga, gc, None, None, None, None, None

    torch.library.register_autograd(
        "art_fast::info_nce_fused", _fused_backward, setup_context=_fused_setup_context
    )
