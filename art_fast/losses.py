"""ART's losses (DESIGN §4.9): the multi-level tracklet contrastive losses (MTC), in two forms,
the semantic-bank consistency losses (L_sema), and the classification cross-entropy with soft
targets and label smoothing of the training recipe (:func:`classification_loss`).

The paper gives these in words only; both MTC forms are our reading:

- ``"infonce"`` (:func:`mtc_losses`): three InfoNCE levels on :func:`art_fast.ops.info_nce`
  (the pairings and the temperatures are ours);
- ``"paper"`` (:func:`mtc_losses_paper`): squared-cosine penalties that follow the paper's
  stated intent (responses of one frame repel, a query's responses in adjacent frames are
  correlated with degree lambda, tracklets repel).

:data:`DEFAULT_MTC_FORM` and :data:`DEFAULT_MTC_LAMBDA` are the single place the defaults are
set (``ARTOptions``, the config's ``model`` section and :class:`TrackletContrastiveLoss` read
them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import info_nce

MTC_LEVELS = ("spatial", "temporal", "tracklet")
TEMPORAL_NEGATIVES = ("frame", "batch")
MTC_FORMS = ("infonce", "paper")
DEFAULT_MTC_FORM = "infonce"  # flip here to make "paper" the default everywhere
DEFAULT_MTC_LAMBDA = 0.6  # the paper's correlation degree of adjacent responses
_COS_EPS = 1e-8  # F.normalize eps of the paper form: zero responses have cosine 0


def _identity_targets(groups: int, m: int, device: torch.device) -> torch.Tensor:
    return torch.arange(m, device=device).expand(groups, m).contiguous()


def _zero(x: torch.Tensor) -> torch.Tensor:
    # A zero that stays in the graph (so every level is a tensor with the same dtype/device).
    return x.sum() * 0.0


def mtc_losses(
    tracklets: torch.Tensor,
    *,
    temperature: float = 0.1,
    temporal_negatives: str = "frame",
) -> dict[str, torch.Tensor]:
    """The three InfoNCE levels over tracklets.

    Args:
        tracklets: ``[B, K, T, d]`` float, region responses ``r_tk`` stacked by query index.
        temperature: InfoNCE temperature (> 0), the same for the three levels.
        temporal_negatives: ``"frame"`` (a response at t must find its own tracklet among the
            K responses of the same video at t+1: tiny groups, G = B (T-1), M = N = K) or
            ``"batch"`` (among the responses of every video of the batch at t+1: G = T-1,
            M = N = B K, the large regime).

    Returns:
        ``{"spatial", "temporal", "tracklet"}``, each a 0-dim tensor (mean over rows):
        - spatial: anchors = candidates = the K responses of a frame, targets = identity
          (G = B T, M = N = K): each response must stand apart from the others of its frame;
        - temporal: anchors R_t, candidates R_{t+1}, targets = identity; 0 when T = 1;
        - tracklet: anchors = tracklet means over the first ``T // 2`` frames, candidates =
          means over the remaining frames, targets = identity (G = B, M = N = K); 0 when T = 1.
    """
    if tracklets.dim() != 4:
        raise ValueError(
            f"mtc_losses: tracklets must be [B, K, T, d], got {tuple(tracklets.shape)}"
        )
    if temporal_negatives not in TEMPORAL_NEGATIVES:
        raise ValueError(
            f"mtc_losses: temporal_negatives must be one of {TEMPORAL_NEGATIVES}, "
            f"got {temporal_negatives!r}"
        )
    B, K, T, d = tracklets.shape
    dev = tracklets.device
    frames = tracklets.permute(0, 2, 1, 3)  # [B, T, K, d]
    out = {
        "spatial": info_nce(
            frames.reshape(B * T, K, d), frames.reshape(B * T, K, d),
            _identity_targets(B * T, K, dev), temperature=temperature,
        )
    }
    if T == 1:
        out["temporal"] = _zero(tracklets)
        out["tracklet"] = _zero(tracklets)
        return out
    now, nxt = frames[:, :-1], frames[:, 1:]  # [B, T-1, K, d]
    if temporal_negatives == "frame":
        a, c = now.reshape(B * (T - 1), K, d), nxt.reshape(B * (T - 1), K, d)
        tgt = _identity_targets(B * (T - 1), K, dev)
    else:  # every video's responses at t+1 are candidates: [T-1, B K, d]
        a = now.transpose(0, 1).reshape(T - 1, B * K, d)
        c = nxt.transpose(0, 1).reshape(T - 1, B * K, d)
        tgt = _identity_targets(T - 1, B * K, dev)
    out["temporal"] = info_nce(a, c, tgt, temperature=temperature)
    half = T // 2
    first, second = tracklets[:, :, :half].mean(2), tracklets[:, :, half:].mean(2)  # [B, K, d]
    out["tracklet"] = info_nce(
        first, second, _identity_targets(B, K, dev), temperature=temperature
    )
    return out


def check_mtc_lambda(lam: object, where: str = "mtc_losses_paper: lam") -> float:
    """``lam`` as a float if it is a number in (0, 1] (not a bool), else ValueError naming
    ``where``."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 1:
        raise ValueError(f"{where} must be a number in (0, 1] (the correlation degree of "
                         f"adjacent responses), got {lam!r}")
    return float(lam)


def _offdiag_sq_cos_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over groups and ordered pairs i != j of cos(x_i, x_j)^2; x ``[G, M, d]``, M >= 2."""
    n = F.normalize(x, dim=-1, eps=_COS_EPS)
    gram = n @ n.transpose(-1, -2)  # [G, M, M]
    M = x.shape[-2]
    off = ~torch.eye(M, dtype=torch.bool, device=x.device)
    return gram.square()[:, off].mean()


def mtc_losses_paper(tracklets: torch.Tensor, *, lam: float = DEFAULT_MTC_LAMBDA
                     ) -> dict[str, torch.Tensor]:
    """The three MTC levels in the paper's stated forms (our reading: the equations are not
    public), as squared-cosine penalties on tracklets.

    With ``cos`` the cosine similarity (vectors normalised by ``F.normalize`` with eps 1e-8, so
    a zero response has cosine 0 with everything and finite gradients), ``r_tk`` the response
    of query k in frame t and ``m_k`` the mean over t of tracklet k:

    - spatial: responses of different queries in one frame repel:
      mean over b, t and ordered pairs i != j of ``cos(r_ti, r_tj)^2``; 0 when K = 1.
      Smooth; its minimum is orthogonality, so it keeps a gradient while queries partly
      overlap (like any function of a cosine, its gradient vanishes at exactly parallel
      responses, an unstable maximum);
    - temporal: a query's responses in adjacent frames attract with correlation degree
      ``lam``: mean over b, k and t < T-1 of ``(cos(r_tk, r_(t+1)k) - lam)^2``; 0 when T = 1.
      It pulls the cosine to ``lam`` from both sides, never forces identical responses
      (unless ``lam`` = 1);
    - tracklet: different tracklets repel: mean over b and ordered pairs i != j of
      ``cos(m_i, m_j)^2``; 0 when K = 1.

    Args:
        tracklets: ``[B, K, T, d]`` float (any float dtype; half and bfloat16 are computed in
            float32).
        lam: the correlation degree, a number in (0, 1] (default 0.6, the paper's).

    Returns:
        ``{"spatial", "temporal", "tracklet"}``, 0-dim tensors in float32 for half/bfloat16
        input, else in the input dtype; the zero levels stay in the graph.
    """
    if not isinstance(tracklets, torch.Tensor) or tracklets.dim() != 4:
        raise ValueError(f"mtc_losses_paper: tracklets must be [B, K, T, d], got "
                         f"{tuple(getattr(tracklets, 'shape', ()))}")
    lam = check_mtc_lambda(lam)
    x = tracklets.float() if tracklets.dtype in (torch.float16, torch.bfloat16) else tracklets
    B, K, T, d = x.shape
    out: dict[str, torch.Tensor] = {}
    if K == 1:
        out["spatial"] = _zero(x)
    else:
        out["spatial"] = _offdiag_sq_cos_mean(x.transpose(1, 2).reshape(B * T, K, d))
    if T == 1:
        out["temporal"] = _zero(x)
    else:
        n = F.normalize(x, dim=-1, eps=_COS_EPS)
        cos = (n[:, :, :-1] * n[:, :, 1:]).sum(-1)  # [B, K, T-1]
        out["temporal"] = (cos - lam).square().mean()
    out["tracklet"] = _zero(x) if K == 1 else _offdiag_sq_cos_mean(x.mean(2))
    return out


def classification_loss(logits: torch.Tensor, target: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits [B, C]`` (computed in float32) against int64 labels ``[B]``
    or a soft target ``[B, C]`` (rows summing to 1, e.g. MixUp / CutMix), with label
    smoothing ``eps`` in [0, 1): the target becomes ``(1 - eps) target + eps / C``. A 0-dim
    tensor (mean over the batch)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=float(label_smoothing))


def bank_logits(z: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """``max_p cos(z_i, bank[p, c]) / temperature``.

    Args:
        z: ``[R, Ct]`` float (any norm). bank: ``[P, C, Ct]`` (any norm).

    Returns:
        ``[R, C]`` logits in the dtype of z (the max over the P prompts picks, per class, the
        prompt that matches best; its gradient reaches only that prompt's embedding).
    """
    zn = F.normalize(z, dim=-1)
    bn = F.normalize(bank.to(z.dtype), dim=-1)
    sims = torch.einsum("rc,pkc->rpk", zn, bn)  # [R, P, C]
    return sims.amax(dim=1) / temperature


def sema_losses(
    video_embedding: torch.Tensor,
    prototypes: torch.Tensor,
    agent_bank: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.07,
) -> dict[str, torch.Tensor]:
    """Semantic consistency on the agent bank S_a (DESIGN §4.9).

    Args:
        video_embedding: ``[B, Ct]``, x_cls projected to the text space.
        prototypes: ``[C, Ct]``, the final head's x_cls weights per class (detached by the
            caller), projected to the text space.
        agent_bank: ``[P, C, Ct]``, the trainable agent bank S_a.
        labels: ``[B]`` int64 class indices.
        temperature: > 0.

    Returns:
        ``{"video": CE(max_p cos(video_i, S_a[p, c]) / tau, label_i),
        "proto": CE(max_p cos(proto_i, S_a[p, c]) / tau, i)}``, 0-dim tensors (means).
    """
    C = agent_bank.shape[1]
    video = F.cross_entropy(bank_logits(video_embedding, agent_bank, temperature), labels)
    proto = F.cross_entropy(
        bank_logits(prototypes, agent_bank, temperature),
        torch.arange(C, device=prototypes.device),
    )
    return {"video": video, "proto": proto}
