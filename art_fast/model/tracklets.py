"""Tracklets and tracklet aggregation (DESIGN §4.6, §4.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_tracklets(responses: torch.Tensor, batch: int) -> torch.Tensor:
    """Stack region responses by query index: ``[B*T, K, d]`` -> tracklets ``[B, K, T, d]``
    (tracklet k of a video = the responses of query k in each frame)."""
    G, K, d = responses.shape
    return responses.view(batch, G // batch, K, d).transpose(1, 2)


def aggregate_tracklets(
    tracklets: torch.Tensor, semantics: torch.Tensor, temperature: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracklet aggregation: a saliency over time from the cosine between each response and its
    tracklet's selected semantics, softmax over t (temperature ours), weighted sum.

    Args:
        tracklets: ``[B, K, T, d]``. semantics: ``[B, K, d]`` (S_topk). temperature: > 0.

    Returns:
        ``(aggregated [B, K, d], saliency [B, K, T])``.
    """
    cos = torch.einsum(
        "bktd,bkd->bkt", F.normalize(tracklets, dim=-1), F.normalize(semantics, dim=-1)
    )
    w = torch.softmax(cos.float() / temperature, dim=-1).to(tracklets.dtype)
    return torch.einsum("bkt,bktd->bkd", w, tracklets), w
