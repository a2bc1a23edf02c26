"""Reference InfoNCE over groups of anchors and candidates (DESIGN §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE in plain PyTorch, in the inputs' dtype.

    Args:
        anchors: ``[G, M, D]``; candidates: ``[G, N, D]`` (may be the same tensor).
        targets: ``[G, M]`` int64 in ``[0, N)``, or -100 to ignore the row.
        temperature: logits are divided by it (> 0).
        normalize: L2-normalise anchors and candidates first (``F.normalize``, eps 1e-12).
        reduction: ``"mean"`` over non-ignored rows (0 when none), ``"sum"``, or ``"none"``.

    Returns:
        a scalar, or ``[G, M]`` for ``"none"`` (0 on ignored rows).
    """
    a, c = anchors, candidates
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
