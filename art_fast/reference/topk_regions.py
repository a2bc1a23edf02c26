"""Reference top-k region selection and pooling (DESIGN §3.2)."""

from __future__ import annotations

import torch


def topk_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[..., k]`` int64 of the k highest scores along the last dim.

    Order: descending score; equal scores by increasing index; NaN ranks below every number
    (-inf included), NaNs among themselves by increasing index. Two stable sorts make the rule
    explicit: by score (NaN read as -inf), then NaN-last.
    """
    nan = torch.isnan(scores)
    key = scores.masked_fill(nan, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    nan_last = torch.sort(nan.gather(-1, order).to(torch.uint8), dim=-1, stable=True).indices
    return order.gather(-1, nan_last)[..., :k]


def topk_regions(
    scores: torch.Tensor, values: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-pool each row's k highest-scoring patches, in plain PyTorch.

    Args:
        scores: ``[B, M, N]`` logits, one per patch n for each (group b, query m).
        values: ``[B, N, C]`` patch values.
        k: regions kept per row, ``1 <= k <= N``.

    Returns:
        pooled ``[B, M, C]`` = sum_j weights_j values[b, indices_j],
        indices ``[B, M, k]`` int64 (see :func:`topk_select` for the order),
        weights ``[B, M, k]`` = softmax over the selected scores only.

    A row whose selection holds a NaN score (k larger than its count of numbers) has NaN
    weights and pooled values, as a softmax over NaN has.
    """
    B, M, N = scores.shape
    C = values.shape[-1]
    idx = topk_select(scores.detach(), k)
    weights = torch.softmax(scores.gather(-1, idx), dim=-1)
    base = torch.arange(B, device=values.device).view(B, 1, 1) * N
    gathered = values.reshape(B * N, C)[(idx + base).reshape(-1)].view(B, M, k, C)
    pooled = torch.einsum("bmk,bmkc->bmc", weights, gathered)
    return pooled, idx, weights
