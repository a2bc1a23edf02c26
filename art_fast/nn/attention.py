"""Query-to-patch multi-head attention on :func:`art_fast.ops.cross_attention` (dense) or
:func:`art_fast.ops.topk_regions` (each query keeps its top-k patches per head)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import cross_attention, topk_regions


class QueryPatchAttention(nn.Module):
    """A few queries attend over many patch tokens, per group (frame).

    ``q = Wq queries``, ``k = Wk tokens``, ``v = Wv tokens`` split into ``heads`` heads of width
    ``dim // heads``; per head ``softmax(q k^T / sqrt(dh)) v``, heads merged and projected.

    With ``k_region = None`` the attention is dense (:func:`art_fast.ops.cross_attention`).
    With an int, each query keeps only its ``k_region`` highest-scoring patches per head and
    the softmax runs over those (:func:`art_fast.ops.topk_regions`; the scores are a plain
    matmul). ``k_region`` larger than the number of patches N is clamped to N.

    With ``uniform=True`` (the mean-pool control of the ablation table) every query gives every
    patch the same weight ``1 / N``: the output is the per-head mean of the values, the
    queries select nothing. The parameters are the same (the query and key projections are
    kept, unused), so a model built with it has ART's parameter count.

    Args:
        dim: width of queries, tokens and output.
        heads: number of heads (``dim % heads == 0``).
        k_region: patches kept per query and head, or None for dense attention.
        uniform: mean over all patches instead of attention (``k_region`` is then ignored).
    """

    def __init__(self, dim: int, heads: int, k_region: int | None = None,
                 uniform: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"QueryPatchAttention: dim ({dim}) must be divisible by heads ({heads})"
            )
        if k_region is not None and (isinstance(k_region, bool) or not isinstance(k_region, int)
                                     or k_region < 1):
            raise ValueError(f"QueryPatchAttention: k_region must be None or an int >= 1, "
                             f"got {k_region!r}")
        self.heads, self.k_region, self.uniform = heads, k_region, bool(uniform)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, queries: torch.Tensor, tokens: torch.Tensor, return_regions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            queries: ``[G, M, dim]``; tokens: ``[G, N, dim]`` (same float dtype).
            return_regions: also return which patches each query used, per head.

        Returns:
            out ``[G, M, dim]``; with ``return_regions`` also ``indices`` ``[G, heads, M, k]``
            int64 and ``weights`` ``[G, heads, M, k]`` (k = k_region clamped to N, or N when
            dense: then indices are ``0..N-1`` and weights the dense attention weights).
        """
        G, M, C = queries.shape
        N, H = tokens.shape[1], self.heads
        dh = C // H
        q = self.q(queries).view(G, M, H, dh).transpose(1, 2)  # [G, H, M, dh]
        kv = self.kv(tokens).view(G, N, 2, H, dh).permute(2, 0, 3, 1, 4)  # [2, G, H, N, dh]
        k, v = kv[0], kv[1]
        dtype = torch.promote_types(q.dtype, k.dtype)  # autocast may mix dtypes
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if self.uniform:
            out = v.mean(dim=2, keepdim=True).expand(G, H, M, dh)
            if return_regions:
                indices = torch.arange(N, device=q.device).expand(G, H, M, N)
                weights = torch.full((G, H, M, N), 1.0 / N, dtype=v.dtype, device=v.device)
        elif self.k_region is None:
            res = cross_attention(q, k, v, return_weights=return_regions)
            if return_regions:
                out, weights = res
                indices = torch.arange(N, device=q.device).expand(G, H, M, N)
            else:
                out = res
        else:
            kk = min(self.k_region, N)
            scores = torch.matmul(q, k.transpose(-1, -2)) * dh**-0.5  # [G, H, M, N]
            pooled, indices, weights = topk_regions(
                scores.reshape(G * H, M, N), v.reshape(G * H, N, dh), kk
            )
            out = pooled.view(G, H, M, dh)
            indices, weights = indices.view(G, H, M, kk), weights.view(G, H, M, kk)
        out = self.proj(out.transpose(1, 2).reshape(G, M, C).to(queries.dtype))
        return (out, indices, weights) if return_regions else out
