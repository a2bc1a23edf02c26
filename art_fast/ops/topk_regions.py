"""Top-k region selection and softmax pooling (DESIGN §3.2): the public function and the op's
contract (``art_fast._contract``): one fake kernel per entry, one setup_context and one
backward, registered for every backend (``art_fast::`` C++ on cpu/cuda, ``art_fast_triton::``).

Entries (the schema of ``csrc/cpu/topk_regions.cpp``, its contract in
``csrc/topk_regions.h``; the Triton ops match it):

- ``topk_regions_fwd(scores, values, k) -> (pooled, indices, weights)``: scores ``[B, M, N]``,
  values ``[B, N, C]``, contiguous, one floating dtype, 1 <= k <= N; pooled ``[B, M, C]``,
  indices ``[B, M, k]`` int64 (descending score, ties to the lower index, NaN ranks lowest),
  weights ``[B, M, k]``.
- ``topk_regions_bwd(grad_pooled, grad_weights?, scores, values, indices) -> (grad_scores,
  grad_values)``: grad_scores ``[B, M, N]`` (zero outside the selection), grad_values
  ``[B, N, C]``.
"""

from __future__ import annotations

import torch

from .. import _autograd, _backend, reference
from .._contract import OpContract
from .._spec import Case, OpSpec, randn
from ._validate import check_inputs

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
    N = check_inputs(_OP, ("scores", scores, _SHAPE_S), ("values", values, _SHAPE_V))["N"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"art_fast.{_OP}: k must be an int in [1, N = {N}], got {k!r}")
    if not 1 <= k <= N:
        raise ValueError(f"art_fast.{_OP}: k must be in [1, N = {N}] (scores {_SHAPE_S}), got {k}")

    name = _backend.resolve(_OP, backend, scores.device, scores.dtype)
    if name == "torch":
        return reference.topk_regions(scores, values, k)
    if _autograd.transforms_active():
        # 1. torch.func: the op through an autograd.Function torch.func accepts.
        return CONTRACT.function(name).apply(scores.contiguous(), values.contiguous(), k)
    return CONTRACT.impl(name).fwd(scores.contiguous(), values.contiguous(), k)


CONTRACT = OpContract(_OP, ("fwd", "bwd"))


@CONTRACT.fake("fwd")
def _fake_fwd(scores, values, k):
    B, M, _N = scores.shape
    pooled = values.new_empty((B, M, values.shape[2]))
    indices = scores.new_empty((B, M, k), dtype=torch.int64)
    weights = scores.new_empty((B, M, k))
    return pooled, indices, weights


@CONTRACT.fake("bwd")
def _fake_bwd(grad_pooled, grad_weights, scores, values, indices):
    # contiguous, whatever the inputs' strides (as the kernels return them)
    return scores.new_empty(scores.shape), values.new_empty(values.shape)


def _setup_context(ctx, inputs, output):
    scores, values, _k = inputs
    _pooled, indices, _weights = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(scores, values, indices)
    ctx.set_materialize_grads(False)  # unused weights: None, no zero-filled gradient to read


def _backward(impl, ctx, grad_pooled, _grad_indices, grad_weights):
    scores, values, indices = ctx.saved_tensors
    if grad_pooled is None:
        B, M, _ = scores.shape
        grad_pooled = values.new_zeros((B, M, values.shape[2]))
    # 2. The bwd entry is not differentiated itself (no_grad); a second derivative raises
    #    instead of being a silent 0.
    with torch.no_grad():
        gs, gv = impl.bwd(grad_pooled.contiguous(),
                          None if grad_weights is None else grad_weights.contiguous(),
                          scores, values, indices)
    gs, gv = _autograd.once_differentiable(
        _OP, impl.backend(scores.device), (gs, gv), (grad_pooled, grad_weights, scores, values)
    )
    return gs, gv, None


def _vmap_rule(apply, info, in_dims, scores, values, k):
    """The vmap rule of the fwd entry (see ``_autograd.transformable``): the vmapped dim folded
    into B; every output has it first."""
    V = info.batch_size
    scores, values = (_autograd.batch_first(x, d, V) for x, d in zip((scores, values), in_dims))
    outs = apply(_autograd.fold(scores), _autograd.fold(values), k)
    return tuple(_autograd.unfold(o, V)[0] for o in outs), (0, 0, 0)


def _bwd_vmap_rule(bwd):
    """The vmap rule of the bwd entry ``bwd`` (vmap over torch.func.grad), folding the vmapped
    dim into B."""

    def rule(info, in_dims, grad_pooled, grad_weights, scores, values, indices):
        V = info.batch_size
        args = [None if x is None else _autograd.fold(_autograd.batch_first(x, d, V))
                for x, d in zip((grad_pooled, grad_weights, scores, values, indices), in_dims)]
        gs, gv = bwd(*args)
        return (_autograd.unfold(gs, V)[0], _autograd.unfold(gv, V)[0]), (0, 0)

    return rule


CONTRACT.differentiable("fwd", _setup_context, _backward)
CONTRACT.vmap(_vmap_rule, _bwd_vmap_rule)
CONTRACT.seal()


def _case(p: dict[str, int], dtype: torch.dtype, device, gen: torch.Generator) -> Case:
    """scores ``[B, M, N]``, values ``[B, N, C]``, k = p["k"]."""
    B, M, N, C, k = p["B"], p["M"], p["N"], p["C"], p["k"]
    scores = randn(gen, (B, M, N), dtype, device)
    values = randn(gen, (B, N, C), dtype, device)
    return Case(f"s[{B},{M},{N}] v[{B},{N},{C}] k={k}", (scores, values), {"k": k})


def _entry_samples(device) -> dict[str, list[tuple]]:
    s = torch.randn(2, 3, 11, device=device, requires_grad=True)
    v = torch.randn(2, 11, 5, device=device, requires_grad=True)
    s16, v16 = (x.detach().bfloat16().requires_grad_() for x in (s, v))
    return {"fwd": [(s, v, 4), (s, v, 11), (s16, v16, 1)]}


def _tk(B: int, M: int = 16, N: int = 196, C: int = 32, k: int = 16) -> dict[str, int]:
    return {"B": B, "M": M, "N": N, "C": C, "k": k}


# DESIGN §7 paper shapes: B groups of K = 16 query rows over N = 196 patches, k_region = 16.
SPEC = OpSpec.of(
    CONTRACT, topk_regions, _case, _entry_samples,
    sample_shapes=(
        {"B": 2, "M": 3, "N": 11, "C": 5, "k": 4},
        {"B": 3, "M": 1, "N": 1, "C": 7, "k": 1},
        {"B": 2, "M": 5, "N": 70, "C": 9, "k": 70},
        {"B": 1, "M": 17, "N": 33, "C": 16, "k": 16},
    ),
    bench_shapes={"cpu": (_tk(1024),), "cuda": (_tk(4096),),
                  "quick": (_tk(16, M=4, N=49, C=16, k=8),),
                  "small": (_tk(128),)},
)
