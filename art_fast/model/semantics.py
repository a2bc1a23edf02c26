"""Top-K semantics and Spatial semantic Enhancement (DESIGN §4.3, §4.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import PreLNBlock

QUERY_BANKS = ("agent", "ema")
DEFAULT_QUERY_BANK = "agent"  # flip here to make "ema" (the paper's reading) the default


def select_topk_classes(z: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The k classes whose prompt-mean text embedding is closest (cosine) to z, per video.

    Args:
        z: ``[B, Ct]`` video embeddings in the text space.
        bank: ``[P, C, Ct]`` (the EMA bank S).
        k: classes kept, 1 <= k <= C.

    Returns:
        ``[B, k]`` int64 class indices, best first, ties to the lower index. No gradient
        (the ranking is a discrete choice) and never looks at labels.
    """
    with torch.no_grad():
        proto = F.normalize(F.normalize(bank.float(), dim=-1).mean(0), dim=-1)  # [C, Ct]
        sims = F.normalize(z.detach().float(), dim=-1) @ proto.T  # [B, C]
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
    return order[:, :k]


class TopKSemantics(nn.Module):
    """Rank classes by the cosine between a projection of x_cls and the prompt-mean of the
    EMA bank S; embed the K best classes' prompt-mean bank embeddings in d.

    Args:
        embed_dim: width E of x_cls. text_dim: width Ct of the banks. dim: latent width d.
        k: K, classes kept (1 <= K <= C).
        query_bank: which bank's embeddings of the selected classes become S_topk (the seeds
            of the queries and the semantics of tracklet aggregation):

            - ``"agent"`` (ours): the agent bank S_a (a parameter), so the main losses (CE,
              MTC) train S_a as well as L_sema does;
            - ``"ema"`` (the paper's reading): the EMA bank S (a buffer, no gradient); S_a then
              gets gradients only through L_sema.

    ``forward(x_cls [B, E], bank [P, C, Ct], agent_bank [P, C, Ct])`` returns
    ``(S_topk [B, K, d], classes [B, K] int64, z [B, Ct])`` where z is x_cls projected to the
    text space (also used by the semantic loss); S_topk is in z's dtype.

    The ranking always uses S (the slow bank: no gradient, stable choice).
    """

    def __init__(self, embed_dim: int, text_dim: int, dim: int, k: int,
                 query_bank: str = DEFAULT_QUERY_BANK) -> None:
        super().__init__()
        if not isinstance(query_bank, str) or query_bank not in QUERY_BANKS:
            raise ValueError(f"TopKSemantics: query_bank must be one of {QUERY_BANKS}, "
                             f"got {query_bank!r}")
        self.k, self.query_bank = k, query_bank
        self.to_text = nn.Linear(embed_dim, text_dim)
        self.to_latent = nn.Linear(text_dim, dim)

    def forward(
        self, x_cls: torch.Tensor, bank: torch.Tensor, agent_bank: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.to_text(x_cls)
        classes = select_topk_classes(z, bank, self.k)
        source = agent_bank if self.query_bank == "agent" else bank.detach()
        emb = F.normalize(F.normalize(source, dim=-1).mean(0), dim=-1)  # [C, Ct]
        return self.to_latent(emb[classes].to(z.dtype)), classes, z

    def extra_repr(self) -> str:
        return f"k={self.k}, query_bank={self.query_bank!r}"


class SemanticEnhancement(nn.Module):
    """SE: per frame, pre-LN transformer layers over ``[X_t ; S_topk]`` (N + K tokens).

    Args:
        in_dim: patch token width of the backbone; projected to ``dim`` with learned patch
            position embeddings (``num_patches`` of them).
        dim: latent width d. heads: attention heads. layers: SE depth (4 in the paper).

    ``forward(tokens [B, T, N, in_dim], semantics [B, K, d])`` returns
    ``(X^ [B*T, N, d], S^ [B*T, K, d])``, after a final LayerNorm.
    """

    def __init__(
        self, in_dim: int, dim: int, num_patches: int, heads: int, layers: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.pos_embedding = nn.Parameter(torch.randn(num_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(PreLNBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(
        self, tokens: torch.Tensor, semantics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, N, _ = tokens.shape
        K = semantics.shape[1]
        x = self.proj(tokens) + self.pos_embedding.to(tokens.dtype)  # [B, T, N, d]
        s = semantics.unsqueeze(1).expand(B, T, K, -1).to(x.dtype)
        z = torch.cat([x, s], dim=2).flatten(0, 1)  # [B*T, N+K, d]
        for blk in self.blocks:
            z = blk(z)
        z = self.ln(z)
        return z[:, :N], z[:, N:]
