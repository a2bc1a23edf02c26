"""Region-Specific Semantics Activation (DESIGN §4.5): queries find action regions per frame."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.attention import QueryPatchAttention
from ..nn.transformer import MLP, SelfAttention


class RSSALayer(nn.Module):
    """Pre-LN decoder layer: self-attention among the K queries, query-to-patch
    cross-attention over the enhanced patch tokens, FFN.

    ``k_region`` None = dense cross-attention; an int = each query keeps its top-k patches per
    head (see :class:`art_fast.nn.QueryPatchAttention`).
    """

    def __init__(self, dim: int, heads: int, k_region: int | None, mlp_ratio: float = 4.0,
                 uniform: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.cross = QueryPatchAttention(dim, heads, k_region, uniform)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor, return_regions: bool = False):
        q = q + self.self_attn(self.ln1(q))
        res = self.cross(self.ln2(q), tokens, return_regions=return_regions)
        q = q + (res[0] if return_regions else res)
        q = q + self.mlp(self.ln3(q))
        return (q, res[1], res[2]) if return_regions else q


class RSSA(nn.Module):
    """Q_t = P + S^_t (P ``[K, d]`` learnable, shared over frames), then ``layers`` decoder
    layers; the last one (ours) uses top-k region selection when ``k_region`` is set.

    With ``num_frames`` set (ours, option ``query_time_embedding``), Q_t also gets a learned
    embedding of the frame index t, shared by the K queries: tracklet aggregation is a weighted
    sum over t, blind to order, so without it the tracklet branch cannot tell a motion from
    its reverse (left vs right); with it each response can encode where the region is *at
    time t*.

    ``uniform=True`` (the capacity-matched mean-pool control, ART option
    ``region_attention="mean"``): every cross-attention is a plain mean over the patches, so
    the queries cannot pick regions; everything else (parameters included) is unchanged.

    ``forward(tokens [G, N, d], semantics [G, K, d])`` with G = B*T frames returns
    ``(R [G, K, d], indices [G, heads, K, k], weights [G, heads, K, k])``: the region
    responses (after a final LayerNorm) and the last layer's selected patches per head.
    """

    def __init__(
        self, dim: int, num_queries: int, heads: int, layers: int, k_region: int | None,
        mlp_ratio: float = 4.0, num_frames: int | None = None, uniform: bool = False,
    ) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.time_embedding = (
            nn.Parameter(torch.randn(num_frames, dim) * 0.02) if num_frames else None
        )
        self.layers = nn.ModuleList(
            RSSALayer(dim, heads, k_region if i == layers - 1 else None, mlp_ratio, uniform)
            for i in range(layers)
        )
        self.ln = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, semantics: torch.Tensor):
        q = self.prompts.to(semantics.dtype) + semantics
        if self.time_embedding is not None:  # frames are t-minor: G = B*T
            T = self.time_embedding.shape[0]
            q = q.view(-1, T, *q.shape[1:]) + self.time_embedding[:, None].to(q.dtype)
            q = q.flatten(0, 1)
        for layer in self.layers[:-1]:
            q = layer(q, tokens)
        q, indices, weights = self.layers[-1](q, tokens, return_regions=True)
        return self.ln(q), indices, weights
