"""Reference query-to-patch cross-attention (DESIGN §3.1)."""

from __future__ import annotations

import torch
from torch import Tensor


def cross_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                    return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T * scale) v in plain PyTorch, in the inputs' dtype.

    Args:
        q: ``[B, H, M, D]`` (or ``[1, H, M, D]`` / stride 0 over B: one query set for all B).
        k, v: ``[B, H, N, D]``.
        scale: multiplies the scores; ``D ** -0.5`` when None.
        return_weights: also return the probabilities ``[B, H, M, N]``.

    Returns:
        out ``[B, H, M, D]``, and the weights when ``return_weights``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights, v)
    return (out, weights) if return_weights else out
