"""InfoNCE over groups of anchors and candidates (DESIGN §3.3): the public function and the
op's contract (``art_fast._contract``): one fake kernel per entry, one setup_context and one
backward per differentiable entry, registered for every backend (``art_fast::`` C++ on
cpu/cuda, ``art_fast_triton::``).

Entries (the schemas of ``csrc/cpu/info_nce.cpp``, their contract in ``csrc/info_nce.h``;
the Triton ops match them): anchors ``[G, M, D]``, candidates ``[G, N, D]`` (contiguous, one
floating dtype), targets ``[G, M]`` int64 in ``[0, N)`` or -100 (ignored):

- ``info_nce_fwd(anchors, candidates, targets, temperature, normalize) -> (loss, lse)``: both
  ``[G, M]`` in the accumulation dtype (float64 for float64 inputs, else float32); loss is 0 on
  ignored rows.
- ``info_nce_bwd(grad_loss, anchors, candidates, targets, lse, temperature, normalize) ->
  (grad_anchors, grad_candidates)``.
- ``info_nce_fused(anchors, candidates, targets, temperature, normalize, mean, compute_grad)
  -> (loss, grad_anchors, grad_candidates)``: the reduced loss ``[]`` (mean over kept rows, 0
  when none is kept; or the sum) and, when compute_grad, its gradients (else two ``[0]``).

Two paths:

- ``reduction="none"``: ``info_nce_fwd`` computes the per-row loss ``[G, M]`` (float32; float64
  for float64 inputs) and its log-sum-exp; autograd hands ``info_nce_bwd`` one upstream
  gradient per row, and it recomputes the logits.
- ``reduction="mean"`` / ``"sum"`` (training): the upstream gradient of every row is the same
  scalar (times 1/count or 1), so ``info_nce_fused`` returns the reduced loss together with its
  gradients, computed in the forward while the logits are hot (the Liger-Kernel fused
  cross-entropy trick); the autograd backward only multiplies them by the scalar upstream
  gradient. The gradients are computed only when autograd will need them
  (``torch.is_grad_enabled()`` and an input requires grad); they are held, in the dtype of the
  inputs, from the forward to the backward (the memory of one gradient per input). The C++
  kernels compute loss and gradients in one pass; the Triton entry runs its forward and
  backward kernels back to back.
"""

from __future__ import annotations

import torch

from .. import _autograd, _backend, reference
from .._contract import OpContract
from .._spec import Case, OpSpec, randn
from ..reference.info_nce import IGNORE_INDEX, mask_ignored
from ._validate import acc_dtype, check_float, check_inputs

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
    size = check_inputs(_OP, ("anchors", anchors, _SHAPE_A),
                        ("candidates", candidates, _SHAPE_C))
    G, M, N = size["G"], size["M"], size["N"]
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
    # 1. Ignored rows get exactly zero gradient whatever their anchors: their
    # anchors are replaced by a constant before the kernels (whose gradients of the candidates
    # sum 0 * a over the rows: NaN for a NaN or inf anchor), so the masked_fill's backward
    # zeroes theirs (see reference.info_nce.mask_ignored). Costs one pass over the anchors
    # forward and backward when a row is ignored (or always while tracing, under torch.func,
    # where the test is not data-dependent, and on GPUs, where the test would be a sync).
    ignored = targets == IGNORE_INDEX
    if (anchors.device.type != "cpu" or torch.compiler.is_compiling()
            or _autograd.transforms_active() or bool(ignored.any())):
        anchors = mask_ignored(anchors, ignored, normalize)
    impl = CONTRACT.impl(name)
    if _autograd.transforms_active():
        # 2. torch.func: the per-row entry through an autograd.Function torch.func
        # accepts (the fused entry's reduced loss cannot be vmapped), reduced here.
        loss, _lse = CONTRACT.function(name).apply(
            anchors.contiguous(), candidates.contiguous(), targets.contiguous(), temperature,
            normalize,
        )
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / ignored.logical_not().sum().clamp(min=1).to(loss.dtype)
        return loss.to(anchors.dtype)
    args = (anchors.contiguous(), candidates.contiguous(), targets.contiguous(), temperature,
            normalize)
    if reduction == "none":
        loss, _lse = impl.fwd(*args)
        return loss.to(anchors.dtype)
    compute_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
    total, _ga, _gc = impl.fused(*args, reduction == "mean", compute_grad)
    return total.to(anchors.dtype)


def _check_targets(targets: torch.Tensor, N: int) -> None:
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= N))
    if bool(bad.any()):
        raise ValueError(
            f"art_fast.{_OP}: targets must be in [0, N = {N}) or {IGNORE_INDEX}, got "
            f"{targets[bad][:5].tolist()}"
        )


CONTRACT = OpContract(_OP, ("fwd", "bwd", "fused"))


@CONTRACT.fake("fwd")
def _fake_fwd(anchors, candidates, targets, temperature, normalize):
    G, M, _ = anchors.shape
    acc = acc_dtype(anchors.dtype)
    return anchors.new_empty((G, M), dtype=acc), anchors.new_empty((G, M), dtype=acc)


@CONTRACT.fake("bwd")
def _fake_bwd(grad_loss, anchors, candidates, targets, lse, temperature, normalize):
    return torch.empty_like(anchors), torch.empty_like(candidates)


@CONTRACT.fake("fused")
def _fake_fused(anchors, candidates, targets, temperature, normalize, mean, compute_grad):
    loss = anchors.new_empty((), dtype=acc_dtype(anchors.dtype))
    if compute_grad:
        return loss, torch.empty_like(anchors), torch.empty_like(candidates)
    return loss, anchors.new_empty((0,)), candidates.new_empty((0,))


def _setup_context(ctx, inputs, output):
    anchors, candidates, targets, temperature, normalize = inputs
    _loss, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(anchors, candidates, targets, lse)
    ctx.set_materialize_grads(False)
    ctx.temperature = temperature
    ctx.normalize = normalize


def _backward(impl, ctx, grad_loss, _grad_lse):
    if grad_loss is None:
        return None, None, None, None, None
    anchors, candidates, targets, lse = ctx.saved_tensors
    # 3. The bwd entry is not differentiated itself (no_grad); a second derivative raises
    #    instead of being a silent 0 or None.
    with torch.no_grad():
        ga, gc = impl.bwd(grad_loss.to(lse.dtype).contiguous(), anchors, candidates, targets,
                          lse, ctx.temperature, ctx.normalize)
    ga, gc = _autograd.once_differentiable(
        _OP, impl.backend(anchors.device), (ga, gc), (grad_loss, anchors, candidates)
    )
    return ga, gc, None, None, None


def _fused_setup_context(ctx, inputs, output):
    _loss, grad_anchors, grad_candidates = output
    ctx.mark_non_differentiable(grad_anchors, grad_candidates)
    # Otherwise autograd hands the backward two zero-filled tensors the size of the
    # gradients for the non-differentiable outputs (allocated and written every backward).
    ctx.set_materialize_grads(False)
    ctx.compute_grad = inputs[6]
    ctx.device = inputs[0].device
    ctx.save_for_backward(grad_anchors, grad_candidates)


def _fused_backward(impl, ctx, grad_loss, _grad_ga, _grad_gc):
    if not ctx.compute_grad:
        raise RuntimeError(
            "art_fast.info_nce: backward through info_nce_fused(compute_grad=False); the "
            "gradients were not computed in the forward"
        )
    # 4. create_graph=True raises at once: the gradients were computed in the forward
    # (constants here), and the inputs they depend on are not saved.
    _autograd.no_double_backward(_OP, impl.backend(ctx.device))
    grad_anchors, grad_candidates = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None, None
    ga = (grad_loss * grad_anchors).to(grad_anchors.dtype)
    gc = (grad_loss * grad_candidates).to(grad_candidates.dtype)
    return ga, gc, None, None, None, None, None


def _vmap_rule(apply, info, in_dims, anchors, candidates, targets, temperature, normalize):
    """The vmap rule of the fwd entry (see ``_autograd.transformable``): the vmapped dim folded
    into G."""
    V = info.batch_size
    a, c, t = (_autograd.batch_first(x, d, V)
               for x, d in zip((anchors, candidates, targets), in_dims))
    t = _autograd.fold(t)
    if not _autograd.is_batched(t):
        _check_targets(t, c.shape[2])
    loss, lse = apply(_autograd.fold(a), _autograd.fold(c), t, temperature, normalize)
    (loss, dl), (lse, ds) = _autograd.unfold(loss, V), _autograd.unfold(lse, V)
    return (loss, lse), (dl, ds)


def _bwd_vmap_rule(bwd):
    """The vmap rule of the bwd entry ``bwd`` (vmap over torch.func.grad), folding the vmapped
    dim into G."""

    def rule(info, in_dims, grad_loss, anchors, candidates, targets, lse, *scalars):
        V = info.batch_size
        gl, a, c, t, st = (_autograd.fold(_autograd.batch_first(x, d, V)) for x, d in
                           zip((grad_loss, anchors, candidates, targets, lse), in_dims))
        ga, gc = bwd(gl, a, c, t, st, *scalars)
        return (_autograd.unfold(ga, V)[0], _autograd.unfold(gc, V)[0]), (0, 0)

    return rule


CONTRACT.differentiable("fwd", _setup_context, _backward)
CONTRACT.differentiable("fused", _fused_setup_context, _fused_backward)
CONTRACT.vmap(_vmap_rule, _bwd_vmap_rule)
CONTRACT.seal()


def _case(p: dict[str, int], dtype: torch.dtype, device, gen: torch.Generator) -> Case:
    """anchors ``[G, M, D]``, candidates ``[G, N, D]``, identity targets (row i's positive is
    candidate i mod N, as the ART losses use them; p["ignore"]: every third row ignored),
    temperature 0.1, normalised, mean (p["reduction"]: 0 mean, 1 sum, 2 none)."""
    G, M, N, D = p["G"], p["M"], p["N"], p["D"]
    anchors = randn(gen, (G, M, D), dtype, device)
    candidates = randn(gen, (G, N, D), dtype, device)
    targets = (torch.arange(M, device=device) % N).expand(G, M).contiguous()
    if p.get("ignore"):
        targets[:, ::3] = IGNORE_INDEX
    kwargs = {"temperature": 0.1, "normalize": True,
              "reduction": REDUCTIONS[p.get("reduction", 0)]}
    return Case(f"a[{G},{M},{D}] c[{G},{N},{D}]", (anchors, candidates, targets), kwargs)


def _entry_samples(device) -> dict[str, list[tuple]]:
    def t(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    a, c = t(3, 4, 8), t(3, 6, 8)
    tg = torch.tensor([[0, 5, -100, 2]] * 3, device=device)
    big_a = t(1, 80, 8)
    big_t = torch.randint(0, 80, (1, 80), device=device)
    a16, c16 = t(2, 4, 16), t(2, 8, 16)
    t16 = torch.tensor([[0, 7, -100, 2]] * 2, device=device)
    return {
        "fwd": [(a, c, tg, 0.1, True), (a, c, tg, 2.0, False), (big_a, big_a, big_t, 0.1, True)],
        "fused": [(a, c, tg, 0.1, True, True, True), (a, c, tg, 2.0, False, False, True),
                  (a16, c16, t16, 0.3, True, True, True),
                  (big_a, big_a, big_t, 0.1, True, True, True),
                  (a.detach(), c.detach(), tg, 0.1, True, True, False),
                  (big_a.detach(), big_a.detach(), big_t, 0.5, True, False, False)],
    }


def _nce(G: int, MN: int, D: int = 256) -> dict[str, int]:
    return {"G": G, "M": MN, "N": MN, "D": D}


# DESIGN §7 paper shapes: tiny groups G = B*T, M = N = K; one large group M = N = B*K*T.
SPEC = OpSpec.of(
    CONTRACT, info_nce, _case, _entry_samples,
    sample_shapes=(
        {"G": 3, "M": 4, "N": 6, "D": 8, "ignore": 1},
        {"G": 5, "M": 7, "N": 7, "D": 13, "reduction": 1},
        {"G": 1, "M": 80, "N": 80, "D": 24, "reduction": 2, "ignore": 1},
        {"G": 2, "M": 1, "N": 1, "D": 3},
    ),
    bench_shapes={"cpu": (_nce(128, 16), _nce(1, 2048)),
                  "cuda": (_nce(512, 16), _nce(1, 2048), _nce(1, 8192)),
                  "quick": (_nce(8, 8, D=32), _nce(1, 128, D=32)),
                  "small": (_nce(16, 16),)},
)
