"""Training-recipe options of the video recipes (UniFormerV2, VideoMAE, mmaction2): MixUp /
CutMix and label smoothing on the classification cross-entropies, a weight EMA, and layer-wise
learning-rate decay of the backbone tower. Every option is off by default; the trainer
(:mod:`art_fast.train.trainer`) wires them in.

``train.label_smoothing`` (eps in [0, 1)): both classification cross-entropies (``ce`` on the
final logits, ``ce_v`` on the global branch) are taken against ``(1 - eps) target + eps / C``
(:func:`art_fast.losses.classification_loss`).

``train.mixup`` / ``train.cutmix`` (Beta alphas, 0 = off), ``train.mixup_switch_prob``:
:class:`BatchMixer` mixes each training micro-batch with a permutation of itself: MixUp
``lam x + (1 - lam) x[perm]``, CutMix pastes one box of ``x[perm]`` into ``x`` (the same box in
every frame of a clip) and sets ``lam`` to the kept area. When both are on, a batch is CutMix
with probability ``mixup_switch_prob``, else MixUp (as timm and torchvision do). One ``lam``
per micro-batch. The classification losses get the soft target ``lam onehot(y) + (1 - lam)
onehot(y[perm])``; the parts of ART that need a hard label (the semantics loss ``sema_video``)
get the label of the larger mixing weight (``y`` when ``lam >= 0.5``, else ``y[perm]``).
``torchvision.transforms.v2.MixUp`` / ``CutMix`` are not used: they draw from the global torch
RNG (no generator argument) and pair a clip with its neighbour (``roll``); here every draw
comes from a numpy generator seeded from ``(train.seed, rank, step, micro-batch)``, so a
resumed run mixes exactly as an uninterrupted one and the dropout RNG stream is untouched.

``train.ema_decay`` (0 = off): :func:`make_ema`, a ``torch.optim.swa_utils.AveragedModel``
with ``get_ema_multi_avg_fn`` over parameters and buffers, updated after every optimiser step
(after the bank update): ``e_1 = w_1``, ``e_n = decay e_(n-1) + (1 - decay) w_n``.
Non-float buffers (frame indices, BatchNorm counters) are copied, not averaged.

``train.precise_bn_batches`` (0 = off): before every evaluation, :func:`recompute_bn_stats`
replaces the running statistics of every BatchNorm layer (the ``conv3d`` stem, the
``segments`` temporal module, UniFormerV2's local MHRA) by their plain average over that many
training batches, read with the current weights (the precise BN of pycls / SlowFast). The
running averages kept during training (momentum 0.1: the last ~10 batches, each from older
weights) can be far from the statistics of the weights being evaluated: on the binding set a
checkpoint's test top-1 went from 0.43 to 0.70 when they were recomputed (docs/binding.md 5.2).
Only the BatchNorm layers run in training mode while the statistics are gathered (dropout
stays off, no RNG is drawn, nothing else changes); a model without BatchNorm is left as it is.
Under DDP every rank gathers its own shard's statistics and the ranks average them.

``train.layer_decay`` (in (0, 1], 1 = off): :func:`layer_decay_groups` splits the tower's
groups by layer: with L blocks, the patch embedding, class token, positional embedding and
``ln_pre`` get ``decay^(L+1)``, block i (0-based) ``decay^(L-i)``, what follows the blocks
(``ln_post``, ``proj``) ``decay^0``; the scale multiplies the group's lr (backbone groups
already carry ``model.backbone_lr_mult``). Everything outside the CLIP tower (the ART head,
the temporal module, UniFormerV2's extractor and its LMHRAs, which ``ART.param_groups`` puts
with the head) keeps the full lr. Each group carries ``lr_scale``; the schedule
(:class:`~art_fast.train.schedule.LRSchedule`) multiplies each group's peak (its
``initial_lr``, which includes the scale) by the step's factor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..losses import classification_loss
from .config import ConfigError

__all__ = [
    "BatchMixer",
    "MixedBatch",
    "check_recipe",
    "classification_losses",
    "ema_state",
    "recompute_bn_stats",
    "layer_decay_groups",
    "load_ema",
    "make_ema",
    "tower_layer_id",
]

_MIX_TAG = 0x6D6978  # "mix": keeps the mixing stream apart from any other seeded stream


def check_recipe(t_cfg: Any) -> None:
    """The bounds the config's ranges cannot state (an open upper end): ConfigError naming
    the key."""
    if not t_cfg.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing: expected a value in [0, 1), got "
                          f"{t_cfg.label_smoothing!r}")
    if not t_cfg.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: expected a value in [0, 1) (0: off), got "
                          f"{t_cfg.ema_decay!r}")


# --------------------------------------------------------------------------- MixUp / CutMix

@dataclass
class MixedBatch:
    """A mixed micro-batch.

    Attributes:
        video: ``[B, T, 3, H, W]``, the mixed clips.
        labels: ``[B]`` int64, the label of the larger mixing weight (for ART's
            label-dependent parts).
        target: ``[B, C]`` float32 soft target of the classification losses.
        lam: the weight of the clip itself (for CutMix: the area it keeps).
        perm: ``[B]`` int64, the partner of each clip (``x[perm]``).
        kind: ``"mixup"`` or ``"cutmix"``.
        box: CutMix: ``(y1, y2, x1, x2)``, the pasted region ``[y1:y2, x1:x2]``; else None.
    """

    video: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    lam: float
    perm: torch.Tensor
    kind: str
    box: tuple[int, int, int, int] | None = None


class BatchMixer:
    """MixUp / CutMix of video micro-batches with a seeded generator (see the module docstring).

    Args:
        num_classes: C.
        mixup: MixUp Beta alpha (0: off).
        cutmix: CutMix Beta alpha (0: off).
        switch_prob: with both on, the probability of CutMix for a batch.
        seed: the run's seed (``train.seed``).
        rank: the process rank (each rank mixes its own clips differently).
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0,
                 switch_prob: float = 0.5, seed: int = 0, rank: int = 0) -> None:
        if mixup < 0 or cutmix < 0 or not 0 <= switch_prob <= 1:
            raise ValueError(f"BatchMixer: expected mixup, cutmix >= 0 and switch_prob in "
                             f"[0, 1], got {mixup}, {cutmix}, {switch_prob}")
        self.num_classes = int(num_classes)
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.switch_prob = float(switch_prob)
        self.seed, self.rank = int(seed), int(rank)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def generator(self, step: int, micro: int) -> np.random.Generator:
        """The generator of micro-batch ``micro`` of optimiser step ``step`` (0-based)."""
        seq = np.random.SeedSequence([self.seed, self.rank, int(step), int(micro), _MIX_TAG])
        return np.random.default_rng(seq)

    def __call__(self, video: torch.Tensor, labels: torch.Tensor, step: int, micro: int = 0
                 ) -> MixedBatch:
        """Mix ``video [B, T, 3, H, W]`` (float) with ``labels [B]`` (int64)."""
        if not self.active:
            raise RuntimeError("BatchMixer: neither mixup nor cutmix is on")
        rng = self.generator(step, micro)
        if self.mixup > 0 and self.cutmix > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix > 0
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        B = video.shape[0]
        perm = torch.from_numpy(rng.permutation(B)).to(video.device)
        other = video[perm]
        box = None
        if use_cutmix:
            H, W = video.shape[-2:]
            cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
            half_h = int(0.5 * H * math.sqrt(1.0 - lam))
            half_w = int(0.5 * W * math.sqrt(1.0 - lam))
            y1, y2 = max(cy - half_h, 0), min(cy + half_h, H)
            x1, x2 = max(cx - half_w, 0), min(cx + half_w, W)
            box = (y1, y2, x1, x2)
            mixed = video.clone()
            mixed[..., y1:y2, x1:x2] = other[..., y1:y2, x1:x2]  # every frame, every channel
            lam = 1.0 - (y2 - y1) * (x2 - x1) / float(H * W)
        else:
            mixed = video * lam + other * (1.0 - lam)
        onehot = F.one_hot(labels, self.num_classes).float()
        target = onehot * lam + onehot[perm] * (1.0 - lam)
        hard = labels if lam >= 0.5 else labels[perm]
        return MixedBatch(mixed, hard, target, lam, perm, "cutmix" if use_cutmix else "mixup",
                          box)


def classification_losses(losses: dict[str, torch.Tensor], logits: torch.Tensor,
                          logits_v: torch.Tensor, target: torch.Tensor,
                          label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``losses`` (ART's, from hard labels) with ``ce`` and ``ce_v`` taken against ``target``
    (int64 labels ``[B]`` or a soft target ``[B, C]``) with ``label_smoothing``, and ``total``
    changed by the difference (the hard terms' gradient cancels exactly). A new dict."""
    ce = classification_loss(logits, target, label_smoothing)
    ce_v = classification_loss(logits_v, target, label_smoothing)
    out = dict(losses)
    out["total"] = losses["total"] - losses["ce"] - losses["ce_v"] + ce + ce_v
    out["ce"], out["ce_v"] = ce, ce_v
    return out


def auxiliary_weight(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """The weight of ART's auxiliary losses (gamma1 MTC + gamma2 L_sema) at optimiser step
    ``step`` (0-based) under ``train.aux_warmup_epochs``: ``step / (warmup_epochs x
    steps_per_epoch)``, rising linearly from 0 at the first step and held at 1 from the end of
    the warm-up on; always 1 when ``warmup_epochs`` is 0."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


def scale_auxiliary(losses: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """``losses`` with the auxiliary part of ``total`` (all of it but ``ce`` and ``ce_v``:
    gamma1 MTC + gamma2 L_sema) multiplied by ``weight`` in [0, 1]:
    ``total = ce + ce_v + weight (total - ce - ce_v)``. The terms themselves are kept as
    computed (the log shows them unweighted). A new dict; 0-dim float32 tensors."""
    out = dict(losses)
    cls = losses["ce"] + losses["ce_v"]
    out["total"] = cls + weight * (losses["total"] - cls)
    return out


# --------------------------------------------------------------------------- weight EMA

def _ema_fn(decay: float) -> Any:
    """``get_ema_multi_avg_fn(decay)`` for floating tensors; other tensors (int buffers such as
    the frame indices, which an average would truncate) are copied."""
    ema = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_list: list[torch.Tensor], cur_list: list[torch.Tensor], n: Any) -> None:
        if torch.is_floating_point(ema_list[0]) or torch.is_complex(ema_list[0]):
            ema(ema_list, cur_list, n)
        else:
            for e, c in zip(ema_list, cur_list, strict=True):
                e.copy_(c)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers), on its device; the first
    ``update_parameters`` copies the weights, each later one averages with ``decay``."""
    return AveragedModel(model, multi_avg_fn=_ema_fn(decay), use_buffers=True)


def ema_state(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """The EMA weights as a state dict of the model itself (loadable into an ART)."""
    return ema.module.state_dict()


def load_ema(ema: AveragedModel, state: dict[str, torch.Tensor] | None, updates: int) -> None:
    """Restore an EMA from :func:`ema_state` and its update count (``state`` None or
    ``updates`` 0: the EMA starts over at the next update)."""
    if state is None or updates <= 0:
        ema.n_averaged.zero_()
        return
    ema.module.load_state_dict(state)
    ema.n_averaged.fill_(int(updates))


# --------------------------------------------------------------------------- layer-wise lr decay

_TOWER = "backbone.visual."
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_EMBED = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.", "patchnorm_pre_ln.")


def tower_layer_id(name: str, num_blocks: int) -> int | None:
    """The layer id of parameter ``name`` (of the ART model) in the CLIP tower: 0 for the
    patch embedding, class token, positional embedding and ``ln_pre``; ``i + 1`` for block i
    (``backbone.visual.transformer.resblocks.i.``, open_clip ViTs and UniFormerV2 alike);
    ``num_blocks + 1`` for anything else of the tower (``ln_post``, ``proj``); None outside
    the tower."""
    if not name.startswith(_TOWER):
        return None
    rest = name[len(_TOWER):]
    m = _BLOCK.match(rest)
    if m:
        return int(m.group(1)) + 1
    if rest.startswith(_EMBED):
        return 0
    return num_blocks + 1


def layer_decay_groups(model: nn.Module, groups: list[dict], decay: float,
                       tower_groups: tuple[str, ...] = ("backbone", "backbone_no_decay")
                       ) -> list[dict]:
    """``groups`` (``ART.param_groups``) with each tower group split by layer.

    A tower group ``g`` becomes one group per layer id ``l`` (:func:`tower_layer_id`), named
    ``f"{g}_layer{l}"``, with ``lr = g.lr * decay ** (L + 1 - l)`` and ``lr_scale`` that
    factor (L = the tower's blocks); other groups are kept with ``lr_scale = 1``. A tower
    parameter outside the tower's names (none in ART) keeps its group's lr.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"layer decay must be in (0, 1], got {decay!r}")
    L = len(model.backbone.visual.transformer.resblocks)
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[dict] = []
    for g in groups:
        if g.get("name") not in tower_groups:
            out.append({**g, "lr_scale": 1.0})
            continue
        by_layer: dict[int, list[nn.Parameter]] = {}
        for p in g["params"]:
            lid = tower_layer_id(names[id(p)], L)
            by_layer.setdefault(L + 1 if lid is None else lid, []).append(p)
        for lid in sorted(by_layer):
            scale = float(decay) ** (L + 1 - lid)
            out.append({**g, "name": f"{g['name']}_layer{lid}", "params": by_layer[lid],
                        "lr": g["lr"] * scale, "lr_scale": scale})
    return out


def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor],
                       forward: Callable[[torch.Tensor], Any] | None = None,
                       all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       ) -> int:
    """Precise BatchNorm statistics: the running mean and variance of every BatchNorm layer
    of ``model`` (those that track running statistics) become the plain average, over
    ``batches``, of the per-batch statistics those layers compute in training mode.

    Args:
        model: the module whose BatchNorm buffers are rewritten (an ART, unwrapped; or an
            ``nn.ModuleList`` of models that ``forward`` runs on the same batches).
        batches: model inputs (``[B, T, 3, H, W]`` float, as ``model`` takes them); each is
            passed to ``forward`` once.
        forward: how to run one batch (default ``model(x)``), e.g. under autocast.
        all_reduce_mean: with several ranks, the mean of a tensor over the ranks (each rank
            passes its own batches); None: one process.

    Returns:
        the number of BatchNorm layers updated (0: none, and nothing was run).

    During the pass only the BatchNorm layers are in training mode (no dropout, no RNG
    drawn), without gradients; each layer's momentum is set to None (a cumulative average)
    and restored afterwards, as is the training flag of every module. Like pycls and SlowFast
    the variance averaged is each batch's unbiased one (what BatchNorm's running_var holds).
    An empty ``batches`` raises ValueError (the statistics would be reset to their defaults).
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    run = forward or model
    seen = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # running stats = cumulative average over the batches seen
            bn.train()
        with torch.no_grad():
            for x in batches:
                run(x)
                seen += 1
        if seen == 0:
            raise ValueError("recompute_bn_stats: batches is empty (no statistics to gather)")
    except BaseException:
        for bn, (mean, var, n) in zip(bns, saved):  # leave the model as it was
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(n)
        raise
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        for m, training in modes.items():
            m.train(training)
    if all_reduce_mean is not None:
        for bn in bns:
            bn.running_mean.copy_(all_reduce_mean(bn.running_mean))
            bn.running_var.copy_(all_reduce_mean(bn.running_var))
    return len(bns)
