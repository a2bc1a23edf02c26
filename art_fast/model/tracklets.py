"""Tracklets and tracklet aggregation (DESIGN §4.6, §4.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TA_SEMANTICS = ("own", "all")
DEFAULT_TA_SEMANTICS = "own"  # flip here to make "all" (the paper's reading) the default


def build_tracklets(responses: torch.Tensor, batch: int) -> torch.Tensor:
    """Stack region responses by query index: ``[B*T, K, d]`` -> tracklets ``[B, K, T, d]``
    (tracklet k of a video = the responses of query k in each frame)."""
    G, K, d = responses.shape
    return responses.view(batch, G // batch, K, d).transpose(1, 2)


def aggregate_tracklets(
    tracklets: torch.Tensor,
    semantics: torch.Tensor,
    temperature: float = 0.1,
    mode: str = DEFAULT_TA_SEMANTICS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracklet aggregation: a saliency over time from the cosine between each response and the
    selected semantics, softmax over t (temperature ours), weighted sum.

    Args:
        tracklets: ``[B, K, T, d]`` float. semantics: ``[B, K, d]`` (S_topk), any float dtype
            (cast to the tracklets' dtype). temperature: > 0.
        mode: which semantics a response is compared with:

            - ``"own"``: its own query's semantic only, ``c[b, k, t] = cos(r_tk, s_k)``;
            - ``"all"`` (the paper's wording: each response against every selected
              semantic): ``c[b, k, t] = max_j cos(r_tk, s_j)`` over the K selected semantics.
              Max, not mean: a mean of cosines is ``cos``-like against one averaged vector
              (``mean_j <r^, s^_j> = <r^, mean_j s^_j>``), which blurs the K candidate classes
              into one direction; the max asks whether the response matches any candidate
              (the true class is one of them, whichever query it seeded). With K = 1 both modes
              are the same.

    Returns:
        ``(aggregated [B, K, d], saliency [B, K, T])``: ``w = softmax_t(c / temperature)``
        (computed in float32 or wider, returned in the tracklets' dtype) and
        ``aggregated[b, k] = sum_t w[b, k, t] r_tk``.
    """
    if not isinstance(mode, str) or mode not in TA_SEMANTICS:
        raise ValueError(f"aggregate_tracklets: mode must be one of {TA_SEMANTICS}, "
                         f"got {mode!r}")
    rn = F.normalize(tracklets, dim=-1)
    sn = F.normalize(semantics.to(tracklets.dtype), dim=-1)
    if mode == "own":
        cos = torch.einsum("bktd,bkd->bkt", rn, sn)
    else:
        cos = torch.einsum("bktd,bjd->bktj", rn, sn).amax(dim=-1)
    wide = torch.promote_types(cos.dtype, torch.float32)  # float32 or wider (float64 stays)
    w = torch.softmax(cos.to(wide) / temperature, dim=-1).to(tracklets.dtype)
    return torch.einsum("bkt,bktd->bkd", w, tracklets), w
