"""ART, the Action-Region Tracking model (DESIGN §4), assembled from its parts:

video -> open_clip vision tower per frame -> patch tokens X, frame features -> temporal module
-> x_cls; x_cls -> top-K semantics S_topk (from the text bank); [X_t ; S_topk] -> SE -> X^_t,
S^_t; queries P + S^_t -> RSSA (cross-attention over X^_t, top-k regions in the last layer)
-> responses R_t; stacked by query -> tracklets; tracklet aggregation -> Tr_agg; heads ->
logits_v (x_cls) and logits ([x_cls ; Tr_agg]); losses CE + CE_v + gamma1 MTC + gamma2 L_sema.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function

from ..losses import (
    DEFAULT_MTC_FORM,
    DEFAULT_MTC_LAMBDA,
    MTC_FORMS,
    TEMPORAL_NEGATIVES,
    check_mtc_lambda,
    sema_losses,
)
from ..nn.tracklet_loss import TrackletContrastiveLoss
from .backbone import (
    FRAME_POOLS,
    STEMS,
    TEMPORAL_MODULES,
    TOKEN_NORMS,
    VideoBackbone,
    build_clip,
    check_layer_scale,
)
from .heads import ClassifierHead
from .rssa import RSSA
from .semantics import DEFAULT_QUERY_BANK, QUERY_BANKS, SemanticEnhancement, TopKSemantics
from .text_bank import DEFAULT_TEMPLATES, fill_prompts, load_or_encode
from .tracklets import DEFAULT_TA_SEMANTICS, TA_SEMANTICS, aggregate_tracklets, build_tracklets
from .uniformerv2 import (
    DEFAULT_EXTRACTOR_DROPOUT,
    UNIFORMERV2_MODELS,
    UniFormerV2Backbone,
    clip_name,
    is_uniformerv2,
    load_official,
    looks_official,
    read_checkpoint,
)

log = logging.getLogger(__name__)

REGION_ATTENTION = ("queries", "mean")
"""ART option ``region_attention``: the RSSA queries select regions (``"queries"``, ART) or
every cross-attention is a mean over the patches (``"mean"``, the capacity-matched control of
the ablation table: same layers and parameters, no region selection)."""

LOSS_NAMES = (
    "ce", "ce_v", "mtc_spatial", "mtc_temporal", "mtc_tracklet", "sema_video", "sema_proto",
    "total",
)


@dataclass
class ARTOptions:
    """Every further knob of :class:`ART` (passed as keyword ``**options``).

    Paper values: 4 SE layers, 4 RSSA layers, dropout 0.5, gamma1 = gamma2 = 5, 8 prompts.
    Marked (ours) where the paper is silent.
    """

    se_layers: int = 4
    rssa_layers: int = 4
    heads: int = 8                      # SE / RSSA heads; latent_dim % heads == 0
    temporal_layers: int = 1            # (ours) temporal module depth
    temporal_shift: float = 0.0         # (ours) TSM channel share in the tower (VideoBackbone)
    stem: str = "patch"                 # (ours) "patch" (the ViT's) | "conv3d" (Conv3dStem)
    token_norm: str = "post"            # (ours) patch tokens after ln_post | "pre": before it
    frame_pool: str = "cls"             # (ours) frame feature: class token | "max" over patches
    temporal_module: str = "transformer"  # (ours) x_cls read-out | "segments" (ordered means)
    temporal_segments: int = 2          # (ours) temporal_module="segments": spans, in [1, T]
    tower_layer_scale: float | None = None  # (ours) LayerScale init of the tower's blocks
    #                                     (VideoBackbone layer_scale); None: none
    mlp_ratio: float = 4.0
    dropout: float = 0.5                # before both heads
    gamma1: float = 5.0                 # weight of L_MTC
    gamma2: float = 5.0                 # weight of L_sema
    mtc_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (ours) spatial, temporal, tracklet
    mtc_form: str = DEFAULT_MTC_FORM    # "infonce" (ours) | "paper" (our reading of the paper)
    mtc_lambda: float = DEFAULT_MTC_LAMBDA  # "paper" form: correlation degree, in (0, 1]
    mtc_temperature: float = 0.1        # (ours) "infonce" form
    sema_temperature: float = 0.07      # (ours) CLIP's initial logit scale
    ta_temperature: float = 0.1         # (ours) tracklet-aggregation saliency softmax
    ta_semantics: str = DEFAULT_TA_SEMANTICS  # "own" (ours) | "all" (paper): TA saliency
    #                                     against the own query's semantic / max over all K
    ta_segments: int = 1                # (ours) TA within this many ordered spans of time,
    #                                     concatenated (1: the paper's one softmax over t)
    query_bank: str = DEFAULT_QUERY_BANK  # "agent" (ours) | "ema" (paper): S_topk from S_a / S
    bank_momentum: float = 0.999        # (ours) S <- mu S + (1 - mu) S_a
    num_prompts: int = 8
    templates: tuple[str, ...] | None = None  # None: the first num_prompts DEFAULT_TEMPLATES
    temporal_negatives: str = "frame"   # "frame" | "batch" (every video at t+1: large regime;
    #                                     "infonce" form only)
    tracklet_branch: bool = True        # False: the global-token-only ablation
    query_time_embedding: bool = True   # (ours) RSSA queries know their frame index (see RSSA)
    region_attention: str = "queries"   # "queries" | "mean": the capacity-matched control (RSSA)
    freeze_backbone: bool = False
    backbone_lr_mult: float = 0.1       # (ours) see ART.param_groups
    grad_checkpointing: bool = False
    text_cache: bool = True
    text_cache_dir: str | None = None   # None: $ART_FAST_CACHE/text_bank or ~/.cache/art_fast
    init_seed: int = 0                  # seed of a random-init open_clip model (offline runs)
    extractor_dropout: float = DEFAULT_EXTRACTOR_DROPOUT  # UniFormerV2 extractor MLP dropout
    lmhra: bool = True                  # UniFormerV2: local temporal MHRA in every block
    temporal_downsample: bool = True    # UniFormerV2: (3,p,p)/stride-2 patch embedding (T/2
    #                                     steps); False: frame-wise (the Kinetics checkpoints)
    text_pretrained: str | None = None  # UniFormerV2 with an official video checkpoint as
    #                                     `pretrained`: the CLIP weights of the text tower
    #                                     (tag, file or local-dir:); None: random init

    def validate(self) -> None:
        for name in ("se_layers", "rssa_layers", "heads", "num_prompts", "temporal_segments",
                     "ta_segments"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ART: option {name} must be an int >= 1, got {v!r}")
        if isinstance(self.temporal_layers, bool) or not isinstance(self.temporal_layers, int) \
                or self.temporal_layers < 0:
            raise ValueError(f"ART: option temporal_layers must be an int >= 0, "
                             f"got {self.temporal_layers!r}")
        if self.stem not in STEMS:
            raise ValueError(f"ART: option stem must be one of {STEMS}, got {self.stem!r}")
        shift = self.temporal_shift
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift <= 1:
            raise ValueError(f"ART: option temporal_shift must be a number in [0, 1], "
                             f"got {self.temporal_shift!r}")
        for name in ("mtc_temperature", "sema_temperature", "ta_temperature", "mlp_ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"ART: option {name} must be a number > 0, got {v!r}")
        for name in ("gamma1", "gamma2", "backbone_lr_mult"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ART: option {name} must be a number >= 0, got {v!r}")
        for name in ("dropout", "extractor_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"ART: option {name} must be a number in [0, 1), got {v!r}")
        if self.text_pretrained is not None and (not isinstance(self.text_pretrained, str)
                                                 or not self.text_pretrained):
            raise ValueError(f"ART: option text_pretrained must be None or a CLIP tag, file or "
                             f"'local-dir:<folder>', got {self.text_pretrained!r}")
        if not 0 <= self.bank_momentum <= 1:
            raise ValueError(f"ART: option bank_momentum must be in [0, 1], "
                             f"got {self.bank_momentum!r}")
        w = tuple(self.mtc_weights)
        if len(w) != 3 or any(not isinstance(x, (int, float)) or x < 0 for x in w):
            raise ValueError(f"ART: option mtc_weights must be 3 numbers >= 0 (spatial, "
                             f"temporal, tracklet), got {self.mtc_weights!r}")
        for name, allowed in (("temporal_negatives", TEMPORAL_NEGATIVES),
                              ("mtc_form", MTC_FORMS), ("query_bank", QUERY_BANKS),
                              ("ta_semantics", TA_SEMANTICS),
                              ("region_attention", REGION_ATTENTION),
                              ("token_norm", TOKEN_NORMS), ("frame_pool", FRAME_POOLS),
                              ("temporal_module", TEMPORAL_MODULES)):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in allowed:
                raise ValueError(f"ART: option {name} must be one of {allowed}, got {v!r}")
        check_mtc_lambda(self.mtc_lambda, "ART: option mtc_lambda")
        check_layer_scale(self.tower_layer_scale, "ART: option tower_layer_scale")
        for name in ("lmhra", "temporal_downsample"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ART: option {name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        if self.templates is not None and len(self.templates) == 0:
            raise ValueError("ART: option templates must hold at least one template")


_DEFAULTS = ARTOptions()
PER_FRAME_OPTIONS = ("stem", "token_norm", "frame_pool", "temporal_module", "tower_layer_scale")
"""Options of the per-frame open_clip tower (``VideoBackbone``) that a UniFormerV2 backbone
refuses at any value but their default."""


@dataclass
class ARTOutput:
    """What :meth:`ART.forward` returns.

    Attributes:
        logits: ``[B, C]``, the prediction (final head on ``[x_cls ; Tr_agg]``).
        logits_v: ``[B, C]``, the global branch (head on x_cls).
        tracklets: ``[B, K, T', d]`` region responses stacked by query (None in the
            global-token-only ablation). T' = ``ART.num_steps``: T for a per-frame tower,
            ceil(T / 2) for UniFormerV2; step j looks at input frame ``ART.step_frames[j]``.
        region_indices: ``[B, K, T', heads, k]`` int64, the patches (row-major index into the
            patch grid) each query kept per head in the last RSSA layer (k = k_region, or N when
            dense).
        region_weights: ``[B, K, T', heads, k]``, their attention weights.
        topk_classes: ``[B, K]`` int64, the classes whose semantics seeded the K queries.
        saliency: ``[B, K, T']`` tracklet-aggregation weights over time (each of the
            ``ta_segments`` spans sums to 1).
        losses: with labels, ``{ce, ce_v, mtc_spatial, mtc_temporal, mtc_tracklet,
            sema_video, sema_proto, total}`` (0-dim tensors); None without labels.
    """

    logits: torch.Tensor
    logits_v: torch.Tensor
    tracklets: torch.Tensor | None = None
    region_indices: torch.Tensor | None = None
    region_weights: torch.Tensor | None = None
    topk_classes: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = field(default=None)


def _check_text_bank(bank: object, P: int, C: int) -> torch.Tensor:
    """``bank`` (``ART(_text_bank=...)``) if it is a float ``[P, C, Ct]`` tensor, detached."""
    if not isinstance(bank, torch.Tensor) or not bank.is_floating_point():
        raise TypeError(f"ART: _text_bank must be a float tensor [P, C, Ct], got "
                        f"{getattr(bank, 'dtype', type(bank).__name__)}")
    if bank.dim() != 3 or tuple(bank.shape[:2]) != (P, C) or bank.shape[2] < 1:
        raise ValueError(f"ART: _text_bank must have shape [P={P}, C={C}, Ct] (prompt templates, "
                         f"classes, text width), got {list(bank.shape)}")
    return bank.detach()


def _check_int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"ART: {name} must be an int >= {lo}, got {v!r}")
    return v


class ART(nn.Module):
    """Action-Region Tracking for fine-grained video action recognition.

    Args:
        class_names: the class descriptions (non-empty, distinct strings); the text bank
            encodes them in every prompt template.
        backbone: an open_clip ViT model name (default ``"ViT-B-16"``; a per-frame tower,
            :class:`~art_fast.model.backbone.VideoBackbone`), ``"tiny"`` (a small config
            registered by art_fast, for tests and the demo), or a UniFormerV2 video tower
            ``"uniformerv2-b16"``, ``"uniformerv2-l14"``, ``"uniformerv2-tiny"``
            (:mod:`art_fast.model.uniformerv2`; its patch embedding halves time, so the
            tracklets have ``T' = ceil(T / 2)`` steps).
        pretrained: None (random init, offline), an open_clip tag (needs the network), a local
            checkpoint file or ``"local-dir:<folder>"``: CLIP weights (a UniFormerV2 tower
            inflates the image ones). With a UniFormerV2 backbone it may also be an official
            UniFormerV2 video checkpoint file (K400 / K710 ...), loaded through
            :func:`~art_fast.model.uniformerv2.remap_official_state_dict`; the text tower then
            comes from the option ``text_pretrained``.
        num_frames: T, frames per clip (fixed: the temporal position embeddings are sized
            for it).
        image_size: frame side H = W.
        num_queries: K, queries = tracklets = top-K classes (1 <= K <= number of classes).
        latent_dim: d, width of SE, RSSA and the tracklets.
        k_region: patches each query keeps per head in the last RSSA layer, in [1, N]; None
            for the paper's dense form.
        _text_bank: (internal: the load path of :func:`art_fast.load_model` /
            :func:`art_fast.train.load_trained`) a ``[P, C, Ct]`` float bank, the ``bank`` of a
            checkpoint's state dict, registered as ``bank`` and ``agent_bank`` instead of
            encoding the class names with the text tower (no text-bank cache read or written).
            Needs ``pretrained=None``: the towers are built with random weights (no file, no
            network) because a state dict with every weight is loaded next; the option
            ``text_pretrained`` is then not used either (it only serves the encoding).
        **options: see :class:`ARTOptions` (unknown names raise TypeError).

    The text tower is used once to encode the bank and then released: it is not part of the
    module, its parameters or its state_dict. ``S`` (``bank``, a buffer) and ``S_a``
    (``agent_bank``, a parameter) are ``[P, C, Ct]``.
    """

    def __init__(
        self,
        class_names: list[str],
        backbone: str = "ViT-B-16",
        pretrained: str | None = None,
        num_frames: int = 16,
        image_size: int = 224,
        num_queries: int = 2,
        latent_dim: int = 256,
        k_region: int | None = 16,
        *,
        _text_bank: torch.Tensor | None = None,
        **options: object,
    ) -> None:
        super().__init__()
        known = {f.name for f in dataclasses.fields(ARTOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"ART: unknown options {unknown}; known: {sorted(known)}")
        opts = ARTOptions(**options)
        opts.validate()
        if isinstance(class_names, str) or not isinstance(class_names, (list, tuple)):
            raise TypeError(f"ART: class_names must be a list of strings, got {type(class_names)}")
        class_names = list(class_names)
        if not class_names:
            raise ValueError("ART: class_names must not be empty")
        if any(not isinstance(c, str) or not c.strip() for c in class_names):
            raise ValueError("ART: every class name must be a non-empty string")
        seen: dict[str, int] = {}
        for i, c in enumerate(class_names):
            if c in seen:
                raise ValueError(
                    f"ART: class_names must be distinct; {c!r} is at {seen[c]} and {i} (the text "
                    "bank could not tell the classes apart)"
                )
            seen[c] = i
        C = len(class_names)
        self.num_frames = _check_int("num_frames", num_frames, 1)
        self.image_size = _check_int("image_size", image_size, 1)
        self.num_queries = _check_int("num_queries", num_queries, 1)
        if num_queries > C:
            raise ValueError(f"ART: num_queries ({num_queries}) must be <= the number of "
                             f"classes ({C}): each query is seeded by one of the top-K classes")
        self.latent_dim = _check_int("latent_dim", latent_dim, 1)
        if latent_dim % opts.heads:
            raise ValueError(f"ART: latent_dim ({latent_dim}) must be divisible by the option "
                             f"heads ({opts.heads})")
        self.options, self.class_names = opts, class_names
        # what ART.predict decodes a video with (art_fast.predict.PredictSettings); set by
        # art_fast.load_model from the checkpoint's config, None: T, size, segments, one view
        self.predict_settings = None
        from_state = _text_bank is not None
        if from_state and pretrained is not None:
            raise ValueError(f"ART: _text_bank (the bank of a checkpoint) needs pretrained=None "
                             f"(every weight comes from the checkpoint), got {pretrained!r}")

        uniformer = is_uniformerv2(backbone)
        video_state = None  # an official UniFormerV2 checkpoint, read once
        clip_pretrained = pretrained
        if uniformer:
            name = clip_name(backbone)
            if opts.temporal_shift:
                raise ValueError(f"ART: option temporal_shift must be 0 with backbone "
                                 f"{backbone!r} (its local MHRA is the temporal modelling), got "
                                 f"{opts.temporal_shift!r}")
            if isinstance(pretrained, str) and Path(os.path.expanduser(pretrained)).is_file():
                try:
                    state = read_checkpoint(os.path.expanduser(pretrained))
                except ValueError:  # e.g. an OpenAI TorchScript file: open_clip reads those
                    state = {}
                if isinstance(state, dict) and looks_official(state):
                    video_state, clip_pretrained = state, opts.text_pretrained
                del state
            for opt in PER_FRAME_OPTIONS:
                default = getattr(_DEFAULTS, opt)
                if getattr(opts, opt) != default:
                    raise ValueError(f"ART: option {opt}={getattr(opts, opt)!r} is for the "
                                     f"per-frame open_clip towers, not backbone {backbone!r}")
        else:
            name = backbone
            for opt in ("lmhra", "temporal_downsample"):
                if not getattr(opts, opt):
                    raise ValueError(f"ART: option {opt}=false is for UniFormerV2 backbones "
                                     f"(uniformerv2-*), got backbone {backbone!r}")
        if opts.text_pretrained is not None and video_state is None and not from_state:
            raise ValueError("ART: option text_pretrained is only used with a UniFormerV2 "
                             "backbone whose pretrained is an official UniFormerV2 checkpoint "
                             f"(got backbone={backbone!r}, pretrained={pretrained!r})")
        clip, tokenizer, spec = build_clip(name, clip_pretrained, image_size, opts.init_seed)
        self.spec = spec
        templates = opts.templates or DEFAULT_TEMPLATES[: opts.num_prompts]
        prompts = fill_prompts(class_names, tuple(templates))
        if from_state:
            bank, self.bank_cache_hit = _check_text_bank(_text_bank, len(prompts), C), False
        else:
            bank, self.bank_cache_hit = load_or_encode(
                clip, tokenizer, prompts, spec.name, spec.weights_id,
                cache_dir=opts.text_cache_dir, use_cache=opts.text_cache,
            )
        visual = clip.visual
        del clip, tokenizer  # the text tower is not kept (DESIGN §4.2)

        self.backbone: VideoBackbone | UniFormerV2Backbone
        self.video_checkpoint_report: dict | None = None
        if uniformer:
            self.backbone = UniFormerV2Backbone(
                visual, num_frames, UNIFORMERV2_MODELS[backbone][1],
                dropout=opts.extractor_dropout, grad_checkpointing=opts.grad_checkpointing,
                lmhra=opts.lmhra, temporal_downsample=opts.temporal_downsample,
            )
            if video_state is not None:
                self.video_checkpoint_report = load_official(self.backbone, video_state)
                self.video_checkpoint_report["path"] = pretrained
            del video_state
        else:
            self.backbone = VideoBackbone(
                visual, num_frames, opts.temporal_layers, opts.grad_checkpointing,
                opts.temporal_shift, opts.stem, opts.token_norm, opts.frame_pool,
                opts.temporal_module, opts.temporal_segments, opts.tower_layer_scale,
            )
        self.num_steps = self.backbone.num_steps  # T': tracklet length
        if opts.tracklet_branch and opts.ta_segments > self.num_steps:
            raise ValueError(f"ART: option ta_segments must be in [1, {self.num_steps}] (the "
                             f"tracklet steps of backbone {backbone!r} at num_frames "
                             f"{num_frames}), got {opts.ta_segments}")
        if opts.freeze_backbone:
            self.backbone.visual.requires_grad_(False)
        N, E = self.backbone.num_patches, self.backbone.embed_dim
        if k_region is not None:
            _check_int("k_region", k_region, 1)
            if k_region > N:
                raise ValueError(f"ART: k_region ({k_region}) must be in [1, N = {N}] (patches "
                                 f"per frame at image_size {image_size}) or None (dense)")
        self.k_region = k_region
        self.register_buffer("bank", bank.clone())  # S  [P, C, Ct]
        self.agent_bank = nn.Parameter(bank.clone())  # S_a
        Ct = bank.shape[-1]
        self.semantics = TopKSemantics(E, Ct, latent_dim, num_queries, opts.query_bank)
        self.head_v = ClassifierHead(E, C, opts.dropout)
        if opts.tracklet_branch:
            self.se = SemanticEnhancement(
                self.backbone.width, latent_dim, N, opts.heads, opts.se_layers, opts.mlp_ratio
            )
            self.rssa = RSSA(latent_dim, num_queries, opts.heads, opts.rssa_layers, k_region,
                             opts.mlp_ratio,
                             self.num_steps if opts.query_time_embedding else None,
                             uniform=opts.region_attention == "mean")
            self.head = ClassifierHead(E + num_queries * opts.ta_segments * latent_dim, C,
                                       opts.dropout)
            self.mtc = TrackletContrastiveLoss(
                tuple(opts.mtc_weights), opts.mtc_temperature, opts.temporal_negatives,
                form=opts.mtc_form, lam=opts.mtc_lambda,
            )
        else:
            self.head = ClassifierHead(E, C, opts.dropout)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def step_frames(self) -> list[int]:
        """The input frame (0..T-1) each of the T' tracklet steps is centred on: every frame
        for a per-frame tower, ``0, 2, 4, ...`` for UniFormerV2 (its stride-2 patch
        embedding)."""
        return [int(i) for i in self.backbone.token_frames]

    # ------------------------------------------------------------------ inference
    def predict(self, video: object, top: int = 5,
                views: tuple[int, int] | None = None) -> list[tuple[str, float]]:
        """The ``top`` most probable classes of one video: ``[(class name, probability)]``,
        most probable first; the probability is the softmax averaged over the views.

        Args:
            video: a video file (str / os.PathLike), decoded, sampled and cropped by the
                evaluation pipeline of ``art-fast eval``; a uint8 tensor ``[T, H, W, 3]``
                (frames, channels last: sampled to ``num_frames`` and resized / cropped the
                same way); a uint8 ``[V, T, S, S, 3]`` of prepared views; or a float model
                input ``[T, 3, S, S]`` / ``[V, T, 3, S, S]`` (CLIP-normalised). Details:
                :func:`art_fast.predict.prepare_video`.
            top: how many classes (an int >= 1; at most the number of classes).
            views: ``(clips, crops)`` (crops 1 or 3) instead of the settings' views.

        The settings (frames, size, sampling, views) are ``predict_settings``: those of the
        checkpoint's config after :func:`art_fast.load_model`; for a model built by hand its
        ``num_frames`` and ``image_size``, segment sampling and one view. Runs in eval mode
        without gradients (the module's mode is restored).

        Raises:
            TypeError / ValueError: a bad ``video``, ``top`` or ``views`` (the message names
                the argument and what is expected). FileNotFoundError, VideoDecodeError: a file
                that is missing or does not decode.
        """
        from ..predict import predict_scores, top_classes

        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"ART.predict: top must be an int >= 1, got {top!r}")
        return top_classes(self, predict_scores(self, video, views), top)

    # ------------------------------------------------------------------ checks
    def _check_input(self, video: object, labels: object) -> None:
        shape = f"[B, T={self.num_frames}, 3, H={self.image_size}, W={self.image_size}]"
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"ART: video must be a float tensor {shape}, got {type(video)}")
        if not video.is_floating_point():
            raise TypeError(
                f"ART: video must be a float tensor {shape} (CLIP-normalised; see "
                f"art_fast.data.to_model_input for uint8 frames), got {video.dtype}"
            )
        want = (self.num_frames, 3, self.image_size, self.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != want or video.shape[0] == 0:
            raise ValueError(f"ART: video must have shape {shape}, got {tuple(video.shape)}")
        if labels is None:
            return
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
            raise TypeError(f"ART: labels must be an int64 tensor [B], got "
                            f"{getattr(labels, 'dtype', type(labels))}")
        if tuple(labels.shape) != (video.shape[0],):
            raise ValueError(f"ART: labels must have shape [B] = [{video.shape[0]}], got "
                             f"{tuple(labels.shape)}")
        if torch.compiler.is_compiling():  # the value check reads the tensor: a graph break
            return
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"ART: labels must be in [0, {self.num_classes}), got min "
                             f"{int(labels.min())}, max {int(labels.max())}")

    # ------------------------------------------------------------------ forward
    def forward(self, video: torch.Tensor, labels: torch.Tensor | None = None) -> ARTOutput:
        """Args:
            video: ``[B, T, 3, H, W]`` float (CLIP-normalised), T = num_frames,
                H = W = image_size.
            labels: optional ``[B]`` int64 class indices; when given, ``losses`` is filled.

        Returns:
            :class:`ARTOutput`.
        """
        self._check_input(video, labels)
        B = video.shape[0]
        # named regions for torch.profiler (benchmarks/bench_train.py --profile): a few us
        # each without a profiler, dropped by torch.compile. art.backbone includes the temporal
        # module (VideoBackbone runs it; the benchmark names it art.temporal with a hook).
        with record_function("art.backbone"):
            tokens, _frames, x_cls = self.backbone(video)
        with record_function("art.heads"):
            logits_v = self.head_v(x_cls)
        with record_function("art.semantics_se"):
            s_topk, classes, z = self.semantics(x_cls, self.bank, self.agent_bank)
        out = ARTOutput(logits=logits_v, logits_v=logits_v, topk_classes=classes)
        if self.options.tracklet_branch:
            with record_function("art.semantics_se"):
                x_hat, s_hat = self.se(tokens, s_topk)
            with record_function("art.rssa"):
                responses, idx, w = self.rssa(x_hat, s_hat)
            with record_function("art.tracklets_ta"):
                tracklets = build_tracklets(responses, B)  # [B, K, T, d]
                agg, saliency = aggregate_tracklets(
                    tracklets, s_topk.to(tracklets.dtype), self.options.ta_temperature,
                    self.options.ta_semantics, self.options.ta_segments,
                )
            with record_function("art.heads"):
                out.logits = self.head(torch.cat([x_cls, agg.flatten(1).to(x_cls.dtype)], dim=1))
            T, H, K, k = self.num_steps, idx.shape[1], idx.shape[2], idx.shape[3]
            out.tracklets, out.saliency = tracklets, saliency
            out.region_indices = idx.view(B, T, H, K, k).permute(0, 3, 1, 2, 4)
            out.region_weights = w.view(B, T, H, K, k).permute(0, 3, 1, 2, 4)
        else:
            with record_function("art.heads"):
                out.logits = self.head(x_cls)
        if labels is not None:
            out.losses = self._losses(out, z, labels)
        return out

    def _losses(self, out: ARTOutput, z: torch.Tensor, labels: torch.Tensor):
        o = self.options
        with record_function("art.loss.ce"):
            losses = {"ce": F.cross_entropy(out.logits.float(), labels)}
        with record_function("art.loss.ce_v"):
            losses["ce_v"] = F.cross_entropy(out.logits_v.float(), labels)
        if o.tracklet_branch:
            with record_function("art.loss.mtc"):
                mtc_total, levels = self.mtc(out.tracklets)
        else:
            zero = out.logits.float().sum() * 0.0
            mtc_total, levels = zero, dict.fromkeys(("spatial", "temporal", "tracklet"), zero)
        with record_function("art.loss.sema"):
            E = self.backbone.embed_dim
            protos = self.semantics.to_text(self.head.fc.weight[:, :E].detach())  # [C, Ct]
            sema = sema_losses(z.float(), protos.float(), self.agent_bank, labels,
                               temperature=o.sema_temperature)
        losses.update({f"mtc_{k}": v.float() for k, v in levels.items()})
        losses.update({f"sema_{k}": v for k, v in sema.items()})
        losses["total"] = (losses["ce"] + losses["ce_v"] + o.gamma1 * mtc_total.float()
                           + o.gamma2 * (sema["video"] + sema["proto"]))
        return losses

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def update_bank(self) -> None:
        """The EMA step of the semantics bank: ``S <- mu S + (1 - mu) S_a`` (mu =
        ``bank_momentum``). The trainer calls it after every optimiser step."""
        mu = self.options.bank_momentum
        # one op (lerp: S + (1 - mu)(S_a - S)) instead of a mul_ and an add_
        self.bank.lerp_(self.agent_bank.detach().to(self.bank.dtype), 1 - mu)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Parameter groups for an optimiser: backbone (lr x ``backbone_lr_mult``) and the rest
        (lr), each split into decayed and not decayed (norms, biases, embeddings, prompts,
        the agent bank: every tensor with < 2 dims or an embedding-like name). Frozen
        parameters are left out. Each group carries a ``name``."""
        groups: dict[str, list] = {k: [] for k in ("backbone", "backbone_no_decay", "head",
                                                   "head_no_decay")}
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # CLIP-initialised tower weights; UniFormerV2's LMHRAs (inside the blocks) are new
            pretrained = n.startswith("backbone.visual.") and ".lmhra" not in n
            part = "backbone" if pretrained else "head"
            no_decay = (p.dim() < 2 or "embedding" in n or n.endswith(("prompts", "agent_bank",
                                                                      "video_token", "cls_token")))
            groups[part + ("_no_decay" if no_decay else "")].append(p)
        mult = self.options.backbone_lr_mult
        spec = {"backbone": (lr * mult, weight_decay), "backbone_no_decay": (lr * mult, 0.0),
                "head": (lr, weight_decay), "head_no_decay": (lr, 0.0)}
        return [{"name": k, "params": v, "lr": spec[k][0], "weight_decay": spec[k][1]}
                for k, v in groups.items() if v]
