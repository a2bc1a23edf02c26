r"""Training configuration: OmegaConf structured configs over nested dataclasses, strict checks.

A config has four sections and a few top-level keys::

    output_dir: runs/demo          # everything a run writes goes here
    data:  {name, root, num_frames, image_size, num_workers, max_bad_fraction, ...}
    model: {backbone, pretrained, num_queries, latent_dim, k_region, <every ARTOptions knob>}
    train: {epochs, max_steps, batch_size, lr, optimizer, schedule, amp, resume, ...}
    eval:  {views, batch_size, save_scores, ...}

The dataclasses below are the schema. :func:`load_config` starts from
``OmegaConf.structured(Config)``, merges a YAML file into it (read by ``OmegaConf.load``, whose
loader extends PyYAML's safe loader: a tag such as ``!!python/object`` is refused, so is a
duplicate key; the only Python tags it builds are pathlib paths, which no key takes), then each
``key=value`` override (``train.lr=3e-4``, ``eval.views=[2,3]``; OmegaConf's dotlist parsing,
the value read as YAML; an empty value is the empty string), converts the result back to the
dataclasses (``OmegaConf.to_object``) and validates it. String values may use OmegaConf
interpolation (``output_dir: runs/${data.name}``; ``\${`` for a literal ``${``); the strings of
a resolved config (:func:`config_from_dict`, :func:`apply_overrides`, the config.yaml
:func:`save_config` writes) are literal. Every key is optional: a missing key keeps
its default. An unknown key, in the file or in an override, is an error naming the key, its
section, the keys that section knows and the closest match; a value of the wrong type, outside
its range or not finite (``nan``, ``inf``, ``1e400``: numbers are never allowed to be
non-finite) is an error naming the key and what it expects. Errors are :class:`ConfigError`
(one line, the file named when it comes from a file); OmegaConf's exceptions never reach the
caller untranslated.

What stays hand-written, and why:

* :func:`_check_layer`, the kind check before each merge: OmegaConf converts across kinds
  (``"3"`` -> 3, ``1`` -> true, ``5`` -> ``"5"``, ``off`` read as false -> ``"False"``), which
  would hide a mistyped value, so a value of the wrong kind is refused before OmegaConf sees it
  (an int for a float is fine; a bare ``off`` for a key that takes ``"off"`` means ``"off"``).
* :func:`_check_values` and :func:`validate`: OmegaConf checks types only, not the choices,
  ranges and finiteness of the ``_f`` metadata, nor rules between keys.
* :func:`_translate` and :func:`_unknown`: OmegaConf's messages span several lines and name
  internals (``object_type=TrainConfig``); ours are one line with the key, the section, the
  keys it knows and a "did you mean" (difflib).
* :func:`_literal`: OmegaConf has no switch that makes a string literal, so the strings of a
  resolved config get their ``${`` escaped before they are merged or saved again.

``data.num_frames`` and ``data.image_size`` are the single source of T and the frame side: the
model is built with the same values. ``train.batch_size`` is per process: under torchrun with
W processes the global batch is ``W x batch_size x grad_accum``.

:func:`build_dataset` turns the ``data`` section into an :mod:`art_fast.data` reader.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ..losses import MTC_FORMS
from ..model.art import REGION_ATTENTION, ARTOptions
from ..model.backbone import FRAME_POOLS, STEMS, TEMPORAL_MODULES, TOKEN_NORMS
from ..model.semantics import QUERY_BANKS
from ..model.tracklets import TA_SEMANTICS

_ART = ARTOptions()  # the model's defaults: the one source of the model section's defaults

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "DATASETS",
    "apply_overrides",
    "build_dataset",
    "config_to_dict",
    "config_from_dict",
    "default_eval_split",
    "load_config",
    "parse_override",
    "save_config",
]

DATASETS = ("diving48", "gym99", "gym288", "ssv2", "k400", "list", "synthetic")
_EVAL_SPLITS = {"diving48": "test", "synthetic": "test", "gym99": "val", "gym288": "val",
                "ssv2": "validation", "k400": "val", "list": "eval"}


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid (the message names the key)."""


def _f(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
       max: float | None = None, min_exclusive: bool = False) -> Any:
    """A dataclass field with its help text and the constraints :func:`_check` enforces."""
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_exclusive": min_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Where the videos are and how clips are made (see :mod:`art_fast.data`)."""

    name: str = _f("synthetic", "dataset reader", choices=DATASETS)
    root: str | None = _f(None, "dataset folder (layouts: art_fast.data.datasets)")
    video_dir: str | None = _f(None, "where the videos are, when not the reader's default")
    train_split: str = _f("train", "split used for training")
    eval_split: str | None = _f(None, "split used for evaluation (None: test for diving48 and "
                                "synthetic, val for gym and k400, validation for ssv2)")
    train_list: str | None = _f(None, "data.name=list: the training list file "
                                "('<path> <label>' lines)")
    eval_list: str | None = _f(None, "data.name=list: the evaluation list file")
    class_csv: str | None = _f(None, "data.name=list: optional 'id,name' class file")
    num_frames: int = _f(16, "frames per clip T (the model is built with the same T)", min=1)
    image_size: int = _f(224, "frame side after cropping (the model input size)", min=1)
    sampling: str = _f("segments", "TSN segments or dense clips", choices=("segments", "dense"))
    dense_stride: int = _f(4, "frame step of dense clips", min=1)
    crop_scale: list[float] = _f([0.25, 1.0], "area range of the training random resized crop")
    hflip: bool = _f(False, "random horizontal flip in training (off: direction-sensitive "
                     "classes)")
    num_workers: int = _f(4, "DataLoader worker processes per training process", min=0)
    pin_memory: bool = _f(True, "pin host memory for faster copies to the GPU (CUDA only)")
    prefetch_factor: int = _f(2, "batches loaded in advance per worker", min=1)
    max_bad_fraction: float = _f(0.05, "stop past this fraction of unreadable videos",
                                 min=0.0, max=1.0)
    max_retries: int = _f(2, "extra attempts on an unreadable video", min=0)
    decode_backend: str = _f("auto", "video decoder", choices=("auto", "decord", "pyav"))
    randaugment_ops: int = _f(0, "RandAugment in training: ops per clip, the same on every "
                              "frame (0: off)", min=0)
    randaugment_magnitude: int = _f(9, "RandAugment magnitude bin, 0..30 (torchvision's 31 "
                                    "bins)", min=0, max=30)


@dataclass
class ModelConfig:
    """The ART model (:class:`art_fast.ART` arguments and :class:`art_fast.ARTOptions`)."""

    backbone: str = _f("ViT-B-16", "open_clip ViT name (per-frame tower), 'tiny', or a "
                       "UniFormerV2 video tower: 'uniformerv2-b16', 'uniformerv2-l14', "
                       "'uniformerv2-tiny'")
    pretrained: str | None = _f(None, "open_clip tag, local checkpoint, 'local-dir:<folder>', "
                                "an official UniFormerV2 checkpoint (uniformerv2-* backbones), "
                                "or None (random init)")
    num_queries: int = _f(2, "K: queries = tracklets = top-K classes", min=1)
    latent_dim: int = _f(256, "d: width of SE, RSSA and the tracklets", min=1)
    k_region: int | None = _f(16, "patches kept per query and head in the last RSSA layer "
                              "(None: dense)", min=1)
    se_layers: int = _f(_ART.se_layers, "spatial semantic enhancement layers", min=1)
    rssa_layers: int = _f(_ART.rssa_layers, "RSSA decoder layers", min=1)
    heads: int = _f(_ART.heads, "SE / RSSA heads", min=1)
    temporal_layers: int = _f(_ART.temporal_layers, "temporal module depth", min=0)
    temporal_shift: float = _f(_ART.temporal_shift, "share of the tower's channels shifted "
                               "across frames in every block (TSM; 0: per-frame tower)",
                               min=0.0, max=1.0)
    stem: str = _f(_ART.stem, "the tower's input: patch (the ViT's linear patch embedding) or "
                   "conv3d (a small 3D-conv stem, art_fast/model/backbone.py Conv3dStem)",
                   choices=STEMS)
    token_norm: str = _f(_ART.token_norm, "patch tokens the tracklet branch reads: post (after "
                         "the tower's final LayerNorm, open_clip's output) or pre (before it: a "
                         "token keeps its magnitude); per-frame open_clip towers only",
                         choices=TOKEN_NORMS)
    frame_pool: str = _f(_ART.frame_pool, "per-frame feature of the global branch: cls (the "
                         "class token) or max (channel-wise max over the frame's patch tokens, "
                         "before the final LayerNorm); per-frame open_clip towers only",
                         choices=FRAME_POOLS)
    temporal_module: str = _f(_ART.temporal_module, "read-out of the frame features into the "
                              "video feature: transformer (a transformer with a video token, "
                              "temporal_layers blocks) or segments (temporal conv + BatchNorm, "
                              "then the means of temporal_segments ordered spans); per-frame "
                              "open_clip towers only", choices=TEMPORAL_MODULES)
    temporal_segments: int = _f(_ART.temporal_segments, "temporal_module=segments: ordered "
                                "spans of the frames, in [1, num_frames]", min=1)
    tower_layer_scale: float | None = _f(
        _ART.tower_layer_scale, "LayerScale on every tower block's two residual branches, "
        "initialised to this value (CaiT / DeiT III; a from-scratch tower's blocks then start "
        "near the identity), or null for none; per-frame open_clip towers only",
        min=0.0, min_exclusive=True)
    mlp_ratio: float = _f(_ART.mlp_ratio, "FFN width ratio", min=0.0, min_exclusive=True)
    dropout: float = _f(_ART.dropout, "dropout before both heads", min=0.0, max=0.999)
    gamma1: float = _f(_ART.gamma1, "weight of L_MTC", min=0.0)
    gamma2: float = _f(_ART.gamma2, "weight of L_sema", min=0.0)
    mtc_weights: list[float] = _f(list(_ART.mtc_weights), "MTC level weights (spatial, temporal, "
                                  "tracklet)")
    mtc_form: str = _f(_ART.mtc_form, "form of L_MTC: 'infonce' (ours: InfoNCE levels) or "
                       "'paper' (our reading of the paper: squared-cosine penalties, "
                       "art_fast.losses.mtc_losses_paper)", choices=MTC_FORMS)
    mtc_lambda: float = _f(_ART.mtc_lambda, "mtc_form=paper: correlation degree, the cosine "
                           "the temporal level pulls adjacent responses of a query to",
                           min=0.0, max=1.0, min_exclusive=True)
    mtc_temperature: float = _f(_ART.mtc_temperature, "InfoNCE temperature of L_MTC "
                                "(mtc_form=infonce)", min=0.0, min_exclusive=True)
    sema_temperature: float = _f(_ART.sema_temperature, "temperature of L_sema", min=0.0,
                                 min_exclusive=True)
    ta_temperature: float = _f(_ART.ta_temperature, "tracklet-aggregation softmax temperature",
                               min=0.0, min_exclusive=True)
    ta_semantics: str = _f(_ART.ta_semantics, "tracklet-aggregation saliency: each response "
                           "against its own query's semantic ('own', ours) or the max over all K "
                           "selected semantics ('all', the paper's wording)", choices=TA_SEMANTICS)
    ta_segments: int = _f(_ART.ta_segments, "tracklet aggregation within this many ordered "
                          "spans of the tracklet, concatenated (1: the paper's one softmax over "
                          "time, blind to order); in [1, tracklet steps]", min=1)
    query_bank: str = _f(_ART.query_bank, "bank whose embeddings of the top-K classes seed the "
                         "queries: 'agent' (S_a, ours: the main losses train it) or 'ema' "
                         "(S, the paper's reading: S_a trained by L_sema only)",
                         choices=QUERY_BANKS)
    bank_momentum: float = _f(_ART.bank_momentum, "EMA momentum of the semantics bank S", min=0.0,
                              max=1.0)
    num_prompts: int = _f(_ART.num_prompts, "prompt templates per class", min=1)
    templates: list[str] | None = _f(None, "prompt templates ('{}' = the class), None: the "
                                     "built-in ones")
    temporal_negatives: str = _f(_ART.temporal_negatives, "negatives of the temporal MTC level "
                                 "(mtc_form=infonce)", choices=("frame", "batch"))
    tracklet_branch: bool = _f(_ART.tracklet_branch, "False: the global-token-only ablation")
    query_time_embedding: bool = _f(_ART.query_time_embedding,
                                    "RSSA queries get a learned frame-index embedding "
                                    "(tracklets then encode the order of motion)")
    region_attention: str = _f(_ART.region_attention, "'queries': RSSA queries select regions "
                               "(ART); 'mean': every RSSA cross-attention is a mean over the "
                               "patches (the capacity-matched control: same layers and "
                               "parameters, no region selection)", choices=REGION_ATTENTION)
    freeze_backbone: bool = _f(_ART.freeze_backbone, "freeze the vision tower")
    backbone_lr_mult: float = _f(_ART.backbone_lr_mult, "backbone learning-rate multiplier",
                                 min=0.0)
    grad_checkpointing: bool = _f(_ART.grad_checkpointing,
                                  "activation checkpointing in the backbone")
    text_cache: bool = _f(_ART.text_cache, "cache the encoded text bank on disk")
    text_cache_dir: str | None = _f(_ART.text_cache_dir,
                                    "text-bank cache folder (None: ~/.cache/art_fast)")
    init_seed: int = _f(_ART.init_seed, "seed of a randomly initialised open_clip tower", min=0)
    extractor_dropout: float = _f(_ART.extractor_dropout, "UniFormerV2: dropout in the "
                                  "global extractor's MLPs", min=0.0, max=0.999)
    lmhra: bool = _f(_ART.lmhra, "UniFormerV2: local temporal MHRA in every block (false: the "
                     "official Kinetics checkpoints' layout)")
    temporal_downsample: bool = _f(_ART.temporal_downsample, "UniFormerV2: (3,p,p) stride-2 "
                                   "patch embedding, T/2 steps (false: frame-wise, T steps: the "
                                   "official Kinetics checkpoints' layout)")
    text_pretrained: str | None = _f(_ART.text_pretrained, "UniFormerV2 with an official video "
                                     "checkpoint as pretrained: CLIP weights of the text tower "
                                     "(tag, file, 'local-dir:'); None: random init")

    def art_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`art_fast.ART` (besides class names, T and size)."""
        kw = dataclasses.asdict(self)
        kw["mtc_weights"] = tuple(kw["mtc_weights"])
        if kw["templates"] is not None:
            kw["templates"] = tuple(kw["templates"])
        return kw


OPTIMIZER_IMPLS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
"""``train.optimizer_impl`` -> the keyword arguments of ``torch.optim.AdamW`` / ``SGD``."""
COMPILE_MODES = ("off", "default", "max-autotune")
"""``train.compile``: off, or a ``torch.compile`` mode."""


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, checkpoints, logging."""

    epochs: int = _f(50, "training epochs", min=1)
    max_steps: int | None = _f(None, "stop after this many optimiser steps (None: epochs)",
                               min=1)
    batch_size: int = _f(8, "clips per process per micro-batch", min=1)
    grad_accum: int = _f(1, "micro-batches per optimiser step", min=1)
    optimizer: str = _f("adamw", "optimiser", choices=("adamw", "sgd"))
    lr: float = _f(3e-4, "peak learning rate (backbone groups: lr x model.backbone_lr_mult)",
                   min=0.0)
    weight_decay: float = _f(0.05, "weight decay (not on norms, biases, embeddings)", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _f(False, "SGD Nesterov momentum")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas")
    optimizer_impl: str = _f("fused", "the optimiser's implementation: fused (one kernel over "
                             "all parameters, CPU and CUDA), foreach (one op per step over "
                             "the tensor lists) or for-loop (one op per tensor)",
                             choices=tuple(OPTIMIZER_IMPLS))
    schedule: str = _f("cosine", "warmup + cosine per step, or step decay per epoch",
                       choices=("cosine", "step"))
    warmup_steps: int = _f(0, "linear warmup, in optimiser steps", min=0)
    warmup_epochs: float = _f(0.0, "linear warmup, in epochs (added to warmup_steps)",
                              min=0.0)
    aux_warmup_epochs: float = _f(0.0, "ART's auxiliary losses (gamma1 MTC, gamma2 L_sema) "
                                  "weighted from 0 rising linearly to full over this many "
                                  "epochs; the cross-entropies always at full weight (0: off)",
                                  min=0.0)
    min_lr_ratio: float = _f(0.0, "cosine floor, as a fraction of lr", min=0.0, max=1.0)
    step_epochs: int = _f(20, "schedule=step: multiply the lr by step_gamma every this many "
                          "epochs", min=1)
    step_gamma: float = _f(0.1, "schedule=step: decay factor", min=0.0)
    clip_grad: float | None = _f(1.0, "clip the global gradient norm (None: off)", min=0.0,
                                 min_exclusive=True)
    amp: str = _f("bf16", "autocast dtype on CUDA (ignored on CPU)",
                  choices=("bf16", "fp16", "off"))
    device: str = _f("auto", "auto (CUDA when available), cpu or cuda",
                     choices=("auto", "cpu", "cuda"))
    compile: str = _f("off", "torch.compile the training step's forward (with the losses and "
                      "the art_fast ops in the graph; backward through AOTAutograd): off, "
                      "default or max-autotune. Evaluation stays eager",
                      choices=COMPILE_MODES)
    compile_backend: str = _f("inductor", "the torch.compile backend of train.compile "
                              "(inductor; aot_eager / eager trace without generating code: "
                              "quick checks)", choices=("inductor", "aot_eager", "eager"))
    backend: str = _f("auto", "art_fast op backend", choices=("auto", "torch", "cpu", "triton",
                                                              "cuda"))
    eval_every: int = _f(1, "evaluate every this many epochs (0: only at the end)", min=0)
    save_every: int = _f(500, "also write last.pt every this many optimiser steps (0: only "
                         "at epoch ends)", min=0)
    log_every: int = _f(20, "log the running loss every this many steps (0: never)", min=0)
    seed: int = _f(0, "seed of model init, data order, augmentation and dropout", min=0)
    deterministic: bool = _f(False, "bitwise-reproducible kernels "
                             "(torch.use_deterministic_algorithms)")
    threads: int | None = _f(None, "torch CPU threads per process (None: torch's default)",
                             min=1)
    adapt_threads: bool = _f(True, "CPU training: lower the threads (never above "
                             "train.threads) while other processes use the cores, raise them "
                             "again when they stop (art_fast/_cpu.py)")
    find_unused_parameters: bool = _f(False, "DDP option for models with unused parameters")
    resume: str | None = _f(None, "'auto' (newest checkpoint in output_dir, if any), a "
                            "checkpoint path, or None")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs the tensorboard package)")
    progress: bool = _f(True, "tqdm progress bars (rank 0, only on a terminal)")
    # the training recipe (art_fast.train.recipe); every option off by default
    label_smoothing: float = _f(0.0, "label smoothing of the classification cross-entropies, "
                                "in [0, 1)", min=0.0, max=1.0)
    mixup: float = _f(0.0, "MixUp Beta alpha (0: off)", min=0.0)
    cutmix: float = _f(0.0, "CutMix Beta alpha (0: off; one box for every frame of a clip)",
                       min=0.0)
    mixup_switch_prob: float = _f(0.5, "mixup and cutmix on: the probability of CutMix for a "
                                  "batch", min=0.0, max=1.0)
    ema_decay: float = _f(0.0, "weight EMA decay in [0, 1), e.g. 0.9998 (0: off); evaluated "
                          "beside the raw weights, saved as model_ema, used by eval", min=0.0,
                          max=1.0)
    precise_bn_batches: int = _f(200, "before every evaluation, recompute the BatchNorm "
                                 "running statistics over this many training batches (at most "
                                 "one epoch's) with the current weights (0: off; models without "
                                 "BatchNorm skip it)", min=0)
    layer_decay: float = _f(1.0, "layer-wise lr decay of the backbone tower (1: off): block i "
                            "of L gets decay^(L-i), the embeddings decay^(L+1)", min=0.0,
                            max=1.0, min_exclusive=True)


@dataclass
class EvalConfig:
    """Evaluation: multi-view testing and what is written."""

    views: list[int] = _f([1, 1], "[temporal clips, spatial crops (1 or 3)]; softmax scores "
                          "are averaged over the views")
    batch_size: int | None = _f(None, "clips per process (None: train.batch_size)", min=1)
    save_scores: bool = _f(False, "add every class score to predictions.csv")
    confusion_png: bool = _f(True, "draw the confusion matrix as a PNG")


@dataclass
class Config:
    """A whole run."""

    output_dir: str = _f("runs/default", "everything the run writes goes here")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_SECTIONS = ("data", "model", "train", "eval")


# --------------------------------------------------------------------------- parsing (OmegaConf)

_KEY_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _where(source: str | None, message: str) -> str:
    """``message`` prefixed with the file it comes from (None: an override or a dict)."""
    return f"{source}: {message}" if source else message


def _fold(e: BaseException) -> str:
    """A (multi-line) YAML error as one line."""
    return " ".join(str(e).split())


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of dataclass ``cls`` (its annotations are strings)."""
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    """``tp`` in words, for messages (``int | None`` -> ``an integer or null``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, str(tp))


def _kind_ok(tp: Any, value: Any) -> bool:
    """Whether ``value`` (as YAML read it) is of the kind ``tp`` declares: bools, ints and
    strings are never taken for one another; an int, or a string that reads as a number, is a
    float (OmegaConf then converts it)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_kind_ok(a, value) for a in typing.get_args(tp))
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        return isinstance(value, (list, tuple)) and all(_kind_ok(inner, v) for v in value)
    if tp is type(None):
        return value is None
    if tp not in (bool, int, float, str):
        return True  # another type (a dict, say): OmegaConf checks it
    if isinstance(value, bool) or tp is bool:
        return isinstance(value, bool) and tp is bool
    if tp is int:
        return isinstance(value, int)
    if tp is float:
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, (int, float))
    return isinstance(value, str)


def _takes_mapping(tp: Any) -> bool:
    """Whether a field of type ``tp`` takes a mapping as its value (``dict[str, float]``)."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = typing.get_args(tp) if union else (tp,)
    return any(a is dict or typing.get_origin(a) is dict for a in args)


def _check_layer(layer: dict[Any, Any], cls: type, prefix: str,
                 source: str | None) -> dict[Any, Any]:
    """One layer (a YAML file, an override or a dict, as plain containers) checked against the
    dataclass ``cls`` before OmegaConf merges it: a value of the wrong kind (:func:`_kind_ok`)
    is an error; an empty section is dropped; a bare ``off`` (YAML 1.1 reads it as false) for
    a key whose choices hold ``"off"`` becomes ``"off"``. Unknown keys are left in for
    OmegaConf's merge to report. Returns the layer to merge."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[Any, Any] = {}
    for key, value in layer.items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            out[key] = value
            continue
        name, tp = prefix + key, hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                continue  # `train:` with nothing under it
            if not isinstance(value, dict):
                raise ConfigError(_where(source, f"{name}: expected a mapping of {name}.* keys, "
                                                 f"got {value!r}"))
            out[key] = _check_layer(value, tp, name + ".", source)
            continue
        if isinstance(value, dict) and value and not _takes_mapping(tp):
            sub = next(iter(value))
            raise ConfigError(_where(source, f"unknown config key '{name}.{sub}' ({name} takes "
                                             f"a value, it has no keys)"))
        choices = f.metadata.get("choices")
        if value is False and choices and "off" in choices:
            value = "off"
        if not _kind_ok(tp, value):
            hint = " (quote it to make it a string)" if tp is str else ""
            raise ConfigError(_where(source, f"{name}: expected {_type_name(tp)}, got "
                                             f"{value!r}{hint}"))
        out[key] = value
    return out


def _section_name(cls: Any) -> str:
    """``section 'train'`` for TrainConfig, ``the top level`` for Config (for messages)."""
    for f in dataclasses.fields(Config):
        if _hints(Config)[f.name] is cls:
            return f"section {f.name!r}"
    return "the top level"


def _unknown(key: str, name: str, cls: Any) -> str:
    """The message of an unknown key ``key`` (its last part ``name``) in dataclass ``cls``."""
    known = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"unknown config key {key!r}{hint} ({_section_name(cls)} has: "
            f"{', '.join(known)})")


def _translate(e: OmegaConfBaseException, source: str | None, key: str | None) -> ConfigError:
    """An OmegaConf exception as a one-line :class:`ConfigError` (``key``: the override's key,
    named instead of OmegaConf's path when the error is an unknown key)."""
    full = str(e.full_key or "")
    if (isinstance(e, (ConfigKeyError, ConfigAttributeError)) and e.object_type is not None
            and dataclasses.is_dataclass(e.object_type)):
        name = str(e.key) if e.key is not None else full.rsplit(".", 1)[-1]
        return ConfigError(_where(source, _unknown(key or full, name, e.object_type)))
    lines = str(e).splitlines()
    msg = lines[0] if lines else type(e).__name__
    return ConfigError(_where(source, f"{full}: {msg}" if full else msg))


@functools.cache
def _schema() -> DictConfig:
    """``OmegaConf.structured(Config)``: the defaults and types every config is merged into
    (merging copies it)."""
    return typing.cast(DictConfig, OmegaConf.structured(Config))


def _merge(base: DictConfig, layer: Any, source: str | None) -> DictConfig:
    """``base`` with ``layer`` (a YAML file or dict as plain containers) merged in by
    OmegaConf, after :func:`_check_layer`."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{source or '<dict>'}: the config must be a mapping of keys, got "
                          f"{type(layer).__name__}")
    checked = _check_layer(layer, Config, "", source)
    try:
        return typing.cast(DictConfig, OmegaConf.merge(base, checked))
    except OmegaConfBaseException as e:
        raise _translate(e, source, None) from None


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    """A YAML file as plain containers (OmegaConf's loader; FileNotFoundError as ``open``)."""
    source = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            loaded = OmegaConf.load(f)
        except yaml.YAMLError as e:  # bad syntax, a tag, a duplicate key
            raise ConfigError(f"{source}: not valid YAML: {_fold(e)}") from None
        except OSError as e:
            if e.errno is not None:
                raise
            # OmegaConf's answer to a scalar document ("Invalid loaded object type: int")
            raise ConfigError(f"{source}: the config must be a mapping of keys ({e})") from None
        except OmegaConfBaseException as e:
            raise _translate(e, source, None) from None
    return OmegaConf.to_container(loaded, resolve=False)


def _override_layer(text: str) -> tuple[str, dict[str, Any]]:
    """``"train.lr=3e-4"`` -> ``("train.lr", {"train": {"lr": 0.0003}})`` (OmegaConf's dotlist
    parsing)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    if not _KEY_RE.fullmatch(key):
        raise ConfigError(f"override {text!r}: unknown config key {key!r} (keys are dotted "
                          "names such as train.lr)")
    if key in _SECTIONS:
        raise ConfigError(f"override {text!r}: {key} is a section; set {key}.<key>=value")
    try:
        layer = OmegaConf.from_dotlist([f"{key}={raw if raw.strip() else repr('')}"])
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {_fold(e)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {text!r}: {_translate(e, None, key)}") from None
    return key, typing.cast(dict, OmegaConf.to_container(layer, resolve=False))


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``: split at the first ``=``, the value
    read as YAML by OmegaConf's dotlist parsing (an empty value is the empty string)."""
    key, value = _override_layer(text)
    for part in key.split("."):
        value = value[part]
    return key, value


def _apply(merged: DictConfig, overrides: list[str] | tuple[str, ...] | None) -> DictConfig:
    """``merged`` with the ``key=value`` overrides merged in, in order (a later one wins)."""
    keys, layers = [], []
    for text in overrides or ():
        key, layer = _override_layer(text)
        keys.append(key)
        layers.append(_check_layer(layer, Config, "", None))
    if not layers:
        return merged
    try:  # one merge of all layers: a merge per override costs milliseconds each
        return typing.cast(DictConfig, OmegaConf.merge(merged, *layers))
    except OmegaConfBaseException as e:
        full = str(e.full_key or "")
        key = next((k for k in keys if k == full or k.startswith(full + ".")), None)
        raise _translate(e, None, key) from None


def _finish(merged: DictConfig) -> Config:
    """The merged config as :class:`Config` (interpolations resolved), validated."""
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _translate(e, None, None) from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def _check_values(obj: Any, prefix: str = "") -> None:
    """The choices, ranges and finiteness of every field's ``_f`` metadata, recursively."""
    for f in dataclasses.fields(obj):
        name, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_values(value, name + ".")
            continue
        meta = f.metadata
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{name}: expected one of {list(choices)}, got {value!r}")
        lo, hi = meta.get("min"), meta.get("max")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not math.isfinite(v):  # nan, inf, and 1e400 (which reads as inf)
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            if lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo)):
                rel = ">" if meta.get("min_exclusive") else ">="
                raise ConfigError(f"{name}: expected a value {rel} {lo}, got {value!r}")
            if hi is not None and v > hi:
                raise ConfigError(f"{name}: expected a value <= {hi}, got {value!r}")


def validate(cfg: Config) -> None:
    """Every field's choices and range (the ``_f`` metadata), then the checks that involve
    more than one key."""
    _check_values(cfg)
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    if d.name != "list" and not d.root:
        raise ConfigError(f"data.root: required for data.name={d.name!r} (the dataset folder)")
    if d.name == "list" and not d.train_list:
        raise ConfigError("data.train_list: required for data.name='list'")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale: expected [min, max] with 0 < min <= max <= 1, "
                          f"got {d.crop_scale!r}")
    if len(m.mtc_weights) != 3:
        raise ConfigError(f"model.mtc_weights: expected 3 numbers (spatial, temporal, "
                          f"tracklet), got {m.mtc_weights!r}")
    if not all(w >= 0 for w in m.mtc_weights):  # also false for nan
        raise ConfigError(f"model.mtc_weights: expected numbers >= 0, got {m.mtc_weights!r}")
    if m.latent_dim % m.heads:
        raise ConfigError(f"model.latent_dim ({m.latent_dim}) must be divisible by "
                          f"model.heads ({m.heads})")
    if m.templates is not None and not m.templates:
        raise ConfigError("model.templates: expected at least one template, or null")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas: expected [beta1, beta2] in [0, 1), got {t.betas!r}")
    if len(e.views) != 2 or e.views[0] < 1 or e.views[1] not in (1, 3):
        raise ConfigError(f"eval.views: expected [clips >= 1, crops in {{1, 3}}], got "
                          f"{e.views!r}")
    if t.resume is not None and t.resume != "auto" and not t.resume:
        raise ConfigError("train.resume: expected 'auto', a checkpoint path, or null")


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: list[str] | tuple[str, ...] | None = None) -> Config:
    """Read a YAML config (None: the defaults), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: an unknown key or a bad value (the message names the key and what it
            expects); FileNotFoundError when ``path`` does not exist.
    """
    merged = _schema()
    if path is not None:
        merged = _merge(merged, _read_yaml(path), os.fspath(path))
    return _finish(_apply(merged, overrides))


def _assign(dst: Any, src: Any) -> None:
    """Copy every field of dataclass ``src`` into ``dst`` (sections in place)."""
    for f in dataclasses.fields(src):
        value = getattr(src, f.name)
        if dataclasses.is_dataclass(value) and dataclasses.is_dataclass(getattr(dst, f.name)):
            _assign(getattr(dst, f.name), value)
        else:
            setattr(dst, f.name, value)


def _literal(value: Any) -> Any:
    """``value`` (plain containers) with every ``${`` escaped: the strings of a resolved config
    (a checkpoint's, a saved config.yaml) are literal, not OmegaConf interpolations."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    return value


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] | None) -> Config:
    """Apply ``key=value`` overrides to ``cfg`` (in place; also returned) and validate. On an
    error ``cfg`` is left as it was."""
    merged = _merge(_schema(), _literal(config_to_dict(cfg)), None)
    _assign(cfg, _finish(_apply(merged, overrides)))
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain dicts/lists/scalars (what config.yaml and checkpoints hold)."""
    return dataclasses.asdict(cfg)


def config_from_dict(mapping: dict[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict` (validated like a YAML file; a key it lacks, as in the
    config of a run older than that key, keeps its default; strings are literal)."""
    return _finish(_merge(_schema(), _literal(mapping), None))


def config_diff(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """The keys (dotted, e.g. ``"model.stem"``) whose values differ between two configs, as
    ``(key, value in a, value in b)``, in field order; ``[]`` when they are equal."""
    out: list[tuple[str, Any, Any]] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        for f in dataclasses.fields(x):
            vx, vy = getattr(x, f.name), getattr(y, f.name)
            if dataclasses.is_dataclass(vx):
                walk(vx, vy, f"{prefix}{f.name}.")
            elif vx != vy:
                out.append((prefix + f.name, vx, vy))

    walk(a, b, "")
    return out


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically; OmegaConf's dumper quotes a string that
    would read back as another type)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# resolved config of this run (art_fast.train); reload with "
                "art_fast.train.load_config\n")
        f.write(OmegaConf.to_yaml(_literal(config_to_dict(cfg))))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- datasets

def default_eval_split(name: str) -> str:
    """The evaluation split of dataset ``name`` when ``data.eval_split`` is None."""
    return _EVAL_SPLITS[name]


def build_dataset(cfg: Config, split: str | None = None, train: bool = True) -> Any:
    """The :mod:`art_fast.data` reader for ``cfg.data``.

    Args:
        cfg: the run config.
        split: the split name (None: ``data.train_split`` when ``train``, else
            ``data.eval_split`` or the dataset's evaluation split).
        train: training transforms (random crop, random offsets) or evaluation ones
            (centre, multi-view ``eval.views``).
    """
    from .. import data as D

    d = cfg.data
    if split is None:
        split = d.train_split if train else (d.eval_split or default_eval_split(d.name))
    opts: dict[str, Any] = dict(
        num_frames=d.num_frames, train=train, image_size=d.image_size, sampling=d.sampling,
        dense_stride=d.dense_stride, views=tuple(cfg.eval.views), hflip=d.hflip,
        seed=cfg.train.seed, crop_scale=tuple(d.crop_scale), output_dir=cfg.output_dir,
        max_retries=d.max_retries, max_bad_fraction=d.max_bad_fraction,
        backend=d.decode_backend,
        # training clips only (evaluation ignores it); ops 0 = off
        randaugment=(d.randaugment_ops, d.randaugment_magnitude),
    )
    if d.name != "list" and d.video_dir:
        opts["video_dir"] = d.video_dir
    if d.name in ("diving48", "synthetic"):
        if d.name == "synthetic" and not os.path.isfile(
                os.path.join(str(d.root), "Diving48_vocab.json")):
            raise FileNotFoundError(
                f"data.root={d.root!r} holds no synthetic set; make one with "
                f"`art-fast synth --out {d.root}`")
        return D.Diving48(d.root, split, **opts)
    if d.name in ("gym99", "gym288"):
        return D.FineGym(d.root, split, variant=int(d.name[3:]), **opts)
    if d.name == "ssv2":
        return D.SomethingSomethingV2(d.root, split, **opts)
    if d.name == "k400":
        return D.Kinetics400(d.root, split, **opts)
    if d.name == "list":
        # two splits: data.train_split reads data.train_list, any other name data.eval_list
        list_file = d.train_list if split == d.train_split else d.eval_list
        if not list_file:
            raise ConfigError("data.eval_list: required to evaluate with data.name='list'")
        return D.VideoList(list_file, root=d.root, class_csv=d.class_csv, **opts)
    raise ConfigError(f"data.name: expected one of {list(DATASETS)}, got {d.name!r}")
