"""Tracklets and tracklet aggregation (DESIGN §4.6, §4.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import segment_spans

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
    segments: int = 1,
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
        segments: S, in [1, T] (ours, ART option ``ta_segments``). 1 is the paper's
            aggregation: one softmax over the whole tracklet. S > 1 splits time into S
            consecutive spans (:func:`~art_fast.model.backbone.segment_spans`, the split of
            ``temporal_module="segments"``), takes the softmax and the weighted sum within each
            span and concatenates the S sums in order: a weighted sum over all of t is blind
            to the order of the responses, the ordered spans are not ("X then Y" vs "Y then X").

    Returns:
        ``(aggregated [B, K, S*d], saliency [B, K, T])``: with ``p(t)`` the span of t,
        ``w[b, k, t] = softmax over t' in p(t) of (c[b, k, t'] / temperature)`` (computed in
        float32 or wider, returned in the tracklets' dtype; every span's weights sum to 1) and
        ``aggregated[b, k, s*d:(s+1)*d] = sum_{t in span s} w[b, k, t] r_tk``. With S = 1 it
        is ``[B, K, d]``, the paper's form.
    """
    if not isinstance(mode, str) or mode not in TA_SEMANTICS:
        raise ValueError(f"aggregate_tracklets: mode must be one of {TA_SEMANTICS}, "
                         f"got {mode!r}")
    T = tracklets.shape[2]
    if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= T:
        raise ValueError(f"aggregate_tracklets: segments must be an int in [1, T = {T}] "
                         f"(tracklet steps), got {segments!r}")
    rn = F.normalize(tracklets, dim=-1)
    sn = F.normalize(semantics.to(tracklets.dtype), dim=-1)
    if mode == "own":
        cos = torch.einsum("bktd,bkd->bkt", rn, sn)
    else:
        cos = torch.einsum("bktd,bjd->bktj", rn, sn).amax(dim=-1)
    wide = torch.promote_types(cos.dtype, torch.float32)  # float32 or wider (float64 stays)
    logits = cos.to(wide) / temperature
    if segments == 1:
        w = torch.softmax(logits, dim=-1).to(tracklets.dtype)
        return torch.einsum("bkt,bktd->bkd", w, tracklets), w
    # one softmax per span: the frames outside span s are masked out of its row
    spans = segment_spans(T, segments).to(device=logits.device, dtype=torch.bool)  # [S, T]
    ws = torch.softmax(logits[:, :, None, :].masked_fill(~spans, float("-inf")), dim=-1)
    ws = ws.to(tracklets.dtype)                                     # [B, K, S, T], 0 off-span
    agg = torch.einsum("bkst,bktd->bksd", ws, tracklets).flatten(2)  # [B, K, S*d]
    return agg, ws.sum(dim=2)                                        # each t in one span
