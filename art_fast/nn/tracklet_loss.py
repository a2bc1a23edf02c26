"""The multi-level tracklet contrastive loss as a module (see
:func:`art_fast.losses.mtc_losses` and :func:`art_fast.losses.mtc_losses_paper`)."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import (
    DEFAULT_MTC_FORM,
    DEFAULT_MTC_LAMBDA,
    MTC_FORMS,
    MTC_LEVELS,
    check_mtc_lambda,
    mtc_losses,
    mtc_losses_paper,
)


class TrackletContrastiveLoss(nn.Module):
    """Weighted sum of the spatial, temporal and tracklet MTC levels over tracklets.

    Args:
        weights: per-level weights ``(spatial, temporal, tracklet)``, each >= 0.
        temperature: InfoNCE temperature (> 0; used by the ``"infonce"`` form only).
        temporal_negatives: ``"frame"`` or ``"batch"`` (see :func:`art_fast.losses.mtc_losses`;
            ``"infonce"`` form only).
        form: ``"infonce"`` (:func:`art_fast.losses.mtc_losses`) or ``"paper"``
            (:func:`art_fast.losses.mtc_losses_paper`, squared-cosine penalties).
        lam: the correlation degree of adjacent responses in (0, 1] (``"paper"`` form only).

    ``forward(tracklets [B, K, T, d])`` returns ``(total, {"spatial", "temporal",
    "tracklet"})``: the weighted sum and the unweighted levels, all 0-dim.
    """

    def __init__(
        self,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        temperature: float = 0.1,
        temporal_negatives: str = "frame",
        form: str = DEFAULT_MTC_FORM,
        lam: float = DEFAULT_MTC_LAMBDA,
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
        if not isinstance(form, str) or form not in MTC_FORMS:
            raise ValueError(f"TrackletContrastiveLoss: form must be one of {MTC_FORMS}, "
                             f"got {form!r}")
        self.weights, self.temperature = weights, float(temperature)
        self.temporal_negatives = temporal_negatives
        self.form, self.lam = form, check_mtc_lambda(lam, "TrackletContrastiveLoss: lam")

    def forward(self, tracklets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.form == "paper":
            levels = mtc_losses_paper(tracklets, lam=self.lam)
        else:
            levels = mtc_losses(
                tracklets, temperature=self.temperature,
                temporal_negatives=self.temporal_negatives,
            )
        total = sum(w * levels[name] for w, name in zip(self.weights, MTC_LEVELS))
        return total, levels

    def extra_repr(self) -> str:
        extra = (f"lam={self.lam}" if self.form == "paper" else
                 f"temperature={self.temperature}, temporal_negatives={self.temporal_negatives!r}")
        return f"form={self.form!r}, weights={self.weights}, {extra}"
