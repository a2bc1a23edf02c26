"""Reference InfoNCE over groups of anchors and candidates (DESIGN §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def mask_ignored(anchors: torch.Tensor, ignored: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``anchors`` with the rows of ``ignored`` ``[G, M]`` replaced by a constant, so that they
    get exactly zero gradient whatever their values: a NaN / inf anchor there would
    make its logits row NaN, and the backward's 0 * NaN would poison that row's gradient and,
    through the logits, every candidate's. The constant keeps the row's logits finite: ones when
    ``normalize`` (logits within 1 / temperature; a zero row would be 0 / 0 in float16, whose
    eps 1e-12 rounds to 0), zeros otherwise (logits exactly 0)."""
    return anchors.masked_fill(ignored.unsqueeze(-1), 1.0 if normalize else 0.0)


def info_nce(anchors: Tensor, candidates: Tensor, targets: Tensor, temperature: float = 0.1,
             normalize: bool = True, reduction: str = "mean") -> Tensor:
    """InfoNCE in plain PyTorch, in the inputs' dtype.

    Args:
        anchors: ``[G, M, D]``; candidates: ``[G, N, D]`` (may be the same tensor).
        targets: ``[G, M]`` int64 in ``[0, N)``, or -100 to ignore the row.
        temperature: logits are divided by it (> 0).
        normalize: L2-normalise anchors and candidates first (``F.normalize``, eps 1e-12).
        reduction: ``"mean"`` over non-ignored rows (0 when none), ``"sum"``, or ``"none"``.

    Returns:
        a scalar, or ``[G, M]`` for ``"none"`` (0 on ignored rows, whose anchors get exactly
        zero gradient whatever their values).
    """
    a = mask_ignored(anchors, targets == IGNORE_INDEX, normalize)
    c = candidates
    if normalize:
        a = F.normalize(a, dim=-1)
        c = F.normalize(c, dim=-1)
    logits = torch.bmm(a, c.transpose(1, 2)) / temperature
    G, M, N = logits.shape
    loss = F.cross_entropy(
        logits.reshape(G * M, N),
        targets.reshape(G * M),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(G, M)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return loss.sum() / count.to(loss.dtype)
