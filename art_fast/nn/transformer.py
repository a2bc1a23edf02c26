"""Small pre-LN transformer pieces shared by the temporal module, SE and RSSA.

These are not hot paths (a few hundred tokens of width d per frame); they use
``torch.nn.functional.scaled_dot_product_attention``. The query-to-patch attention, which is a
hot path, lives in :mod:`art_fast.nn.attention` and goes through :mod:`art_fast.ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[G, L, dim]`` tokens (``dim`` divisible by ``heads``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        G, L, C = x.shape
        qkv = self.qkv(x).view(G, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [G, heads, L, dh]
        return self.proj(out.transpose(1, 2).reshape(G, L, C))


class MLP(nn.Module):
    """Linear -> GELU -> Linear, hidden width ``ratio * dim``."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PreLNBlock(nn.Module):
    """``x + attn(ln(x))`` then ``x + mlp(ln(x))`` over ``[G, L, dim]`` tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))
