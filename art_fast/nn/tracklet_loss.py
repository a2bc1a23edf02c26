"""The multi-level tracklet contrastive loss as a module (see
:func:`art_fast.losses.mtc_losses`)."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import MTC_LEVELS, mtc_losses


class TrackletContrastiveLoss(nn.Module):
    """Weighted sum of the spatial, temporal and tracklet InfoNCE levels over tracklets.

    Args:
        weights: per-level weights ``(spatial, temporal, tracklet)``, each >= 0.
        temperature: InfoNCE temperature (> 0).
        temporal_negatives: ``"frame"`` or ``"batch"`` (see :func:`art_fast.losses.mtc_losses`).

    ``forward(tracklets [B, K, T, d])`` returns ``(total, {"spatial", "temporal",
    "tracklet"})``: the weighted sum and the unweighted levels, all 0-dim.
    """

    def __init__(
        self,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        temperature: float = 0.1,
        temporal_negatives: str = "frame",
    ) -> None:
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(
                f"TrackletContrastiveLoss: weights must be 3 numbers >= 0 (spatial, temporal, "
                f"tracklet), got {weights}"
            )
        if not temperature > 0:
            raise ValueError(f"TrackletContrastiveLoss: temperature must be > 0, got {temperature}")
        self.weights, self.temperature = weights, float(temperature)
        self.temporal_negatives = temporal_negatives

    def forward(self, tracklets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        levels = mtc_losses(
            tracklets, temperature=self.temperature, temporal_negatives=self.temporal_negatives
        )
        total = sum(w * levels[name] for w, name in zip(self.weights, MTC_LEVELS))
        return total, levels
