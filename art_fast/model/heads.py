"""Classification heads (DESIGN §4.8)."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """``Linear(dropout(x))``: ``[B, in_dim]`` -> logits ``[B, num_classes]``."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))
