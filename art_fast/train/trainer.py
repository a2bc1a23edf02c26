"""The training and evaluation loops (DESIGN §6).

:func:`train` runs a whole training job from a :class:`~art_fast.train.config.Config`:
datasets, the ART model, AdamW over the model's parameter groups (or SGD with the paper's step
schedule), warmup + cosine per step, gradient accumulation and clipping, autocast on CUDA
(bf16, or fp16 with a gradient scaler), ``model.update_bank()`` after every optimiser step,
DistributedDataParallel under torchrun, evaluation every ``train.eval_every`` epochs and at the
end, ``metrics.jsonl``, ``last.pt`` / ``best.pt`` and ``--resume auto``.

Epochs are counted from 1 in ``train.log`` and ``metrics.jsonl`` (``"epoch": 1`` is the first
epoch); a checkpoint's ``epoch`` and a callback's :data:`StepInfo` ``epoch`` are the 0-based
index of the epoch in progress.

The output folder (rank 0): one run at a time (:class:`~art_fast.train.checkpoint.RunLock`; a
second run into it is refused with the holder's pid); a folder that holds a previous run
(``last.pt``, ``best.pt`` or ``metrics.jsonl``) is refused unless ``train.resume`` is set (the
run continues) or ``overwrite`` (``--overwrite``: the previous run's files are deleted first).
A resumed run drops the ``metrics.jsonl`` records past its checkpoint's step (they are redone).
An error of a running job is also written to ``train.log`` (one line; with the traceback when it
is not a user error, see :mod:`art_fast.errors`).

:func:`evaluate` scores a checkpoint on the evaluation split (multi-view: softmax scores
averaged over ``eval.views``) and writes ``predictions.csv``, ``confusion.csv``/``.png`` and
``eval_metrics.json``. When the evaluation set has target boxes (``dataset.can_map_boxes``,
e.g. the binding set) and the model has a tracklet branch, the metrics also carry the region
hit of the best-matching query (:mod:`art_fast.train.region_hit`: ``region_hit``,
``region_hit_chance``, ``region_hit_query``, ``region_hit_per_query``,
``region_hit_frames``); otherwise these keys are absent.

Exact resume: a checkpoint is taken right after an optimiser step and holds everything the rest
of the run depends on (weights and banks, optimiser, scaler, schedule step, the epoch and the
sampler position, every RNG state of every rank, the running loss sums of the epoch); the data
order depends only on ``(seed, epoch)`` and each clip's augmentation only on ``(seed, epoch,
index)``; the DataLoader gets its own generator so creating an iterator never draws from the
global RNG. With ``train.deterministic=true`` on the CPU, a resumed run ends with bitwise the
same weights as an uninterrupted one.

The training recipe (:mod:`art_fast.train.recipe`, every option off by default):
``train.label_smoothing``, ``train.mixup`` / ``train.cutmix`` / ``train.mixup_switch_prob``
(seeded per step and micro-batch, so resume stays exact), ``train.layer_decay`` (per-layer
lr groups of the tower) and ``train.ema_decay``: the weight EMA is updated after every
optimiser step, saved beside the raw weights (``model_ema``, ``model_ema_updates``), restored
on resume, evaluated beside the raw weights (``top1_ema``, ``top5_ema``, ``mean_class_ema``,
``loss_ema`` in the eval record; ``best.pt`` is then chosen by ``top1_ema``), and what
evaluation loads (:func:`weights_to_load`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import _backend
from .._cpu import ThreadGovernor
from ..data import to_model_input
from ..data.base import WithTargetBoxes
from ..errors import USER_ERRORS, RunDirError, UserError, describe
from ..model import ART
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    RunLock,
    clear_run,
    get_rng_state,
    load_checkpoint,
    previous_run,
    remove_stale_temps,
    resolve_auto_resume,
    save_checkpoint,
    set_rng_state,
)
from .config import (
    OPTIMIZER_IMPLS,
    Config,
    apply_overrides,
    build_dataset,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from .distributed import (
    DistContext,
    ShardedBatchSampler,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from .metrics import (
    MetricsLog,
    RunningMeans,
    classification_metrics,
    write_confusion_csv,
    write_confusion_png,
    write_predictions_csv,
)
from .recipe import (
    BatchMixer,
    auxiliary_weight,
    check_recipe,
    classification_losses,
    ema_state,
    layer_decay_groups,
    load_ema,
    make_ema,
    recompute_bn_stats,
    scale_auxiliary,
)
from .region_hit import region_hit, region_hit_sums, summarize_region_hit
from .schedule import LRSchedule

__all__ = ["train", "evaluate", "main_train", "main_eval", "build_model", "load_trained",
           "StepInfo", "weights_to_load"]

log = logging.getLogger("art_fast.train")

StepInfo = dict[str, Any]
"""What a training callback receives after every optimiser step: ``step``, ``epoch``,
``batch_in_epoch``, ``lr``, ``loss`` (the last micro-batch's total loss, a float)."""


# --------------------------------------------------------------------------- setup helpers

@contextlib.contextmanager
def _logging_to(output_dir: str, is_main: bool, filename: str = "train.log"
                ) -> Iterator[None]:
    """Log the ``art_fast`` loggers to the console and ``<output_dir>/<filename>`` (rank 0;
    other ranks: warnings and errors on the console) for the duration of the block. An
    exception leaving the block is written to the file only (the caller reports it): one
    ``error: ...`` line, plus the traceback when it is not a user error."""
    logger = logging.getLogger("art_fast")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console.setFormatter(fmt)
    handlers.append(console)
    if is_main:
        fh = logging.FileHandler(os.path.join(output_dir, filename), encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(fmt)
        handlers.append(fh)
    old_level, old_prop = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    except BaseException as e:
        if is_main:
            _log_failure(logger, handlers[-1], e)
        raise
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)
        logger.propagate = old_prop


def _log_failure(logger: logging.Logger, handler: logging.Handler, e: BaseException) -> None:
    """The error that ends a run, into ``handler`` (the log file) only."""
    if isinstance(e, KeyboardInterrupt):
        msg, exc_info = "interrupted (KeyboardInterrupt)", None
    elif isinstance(e, USER_ERRORS):
        msg, exc_info = f"error: {describe(e)}", None
    else:
        msg, exc_info = f"error: {describe(e)}", (type(e), e, e.__traceback__)
    record = logger.makeRecord("art_fast.train", logging.ERROR, __file__, 0, msg, (), exc_info)
    try:
        handler.handle(record)
    except Exception:  # pragma: no cover - e.g. the disk is full: the console has it
        pass


@contextlib.contextmanager
def _runtime(cfg: Config, ctx: DistContext) -> Iterator[None]:
    """Threads, deterministic algorithms and the op backend for the block (restored after)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_bench = torch.backends.cudnn.benchmark
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        with _backend.use_backend(cfg.train.backend):
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        torch.backends.cudnn.benchmark = old_bench


def _compile_step(model: nn.Module, mode: str, backend: str) -> Any:
    """``model`` itself (``train.compile=off``) or ``torch.compile(model)`` for the training
    forward (labels given: the losses are in the graph; the art_fast ops are custom ops with
    fake kernels, so they stay in it as single nodes). Training batches all have the same
    shape (the sampler keeps only full batches), so the graph is static (``dynamic=False``)
    and compiled once; evaluation and the EMA copy run the eager module (another mode and
    another batch size would each be a further compilation). Under DDP the DDP module is
    compiled (its optimizer splits the graph at the gradient buckets)."""
    if mode == "off":
        return model
    kw: dict[str, Any] = {"backend": backend, "dynamic": False}
    if backend == "inductor":
        kw["mode"] = mode
    return torch.compile(model, **kw)


class _CompileWatch:
    """Logs the first compiled step's time (the compilation) and any later recompilation
    (the count of distinct graphs dynamo has built grows after the first step)."""

    def __init__(self, mode: str, backend: str) -> None:
        from torch._dynamo.utils import counters

        self.mode, self.backend = mode, backend
        self._counters = counters
        self._t0: float | None = None
        self._graphs0 = self._graphs()
        self._breaks0 = self._breaks()
        self.first: int | None = None

    def before_step(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def _graphs(self) -> int:
        return int(self._counters["stats"]["unique_graphs"])

    def _breaks(self) -> int:
        return int(sum(self._counters["graph_break"].values()))

    def after_step(self) -> None:
        graphs = self._graphs() - self._graphs0
        if self.first is None:
            self.first = graphs
            breaks = self._breaks() - self._breaks0
            log.info("compile: the first step took %.1f s (train.compile=%s, backend %s, "
                     "%d graph%s, %d graph break%s)", time.perf_counter() - (self._t0 or 0.0),
                     self.mode, self.backend, graphs, "" if graphs == 1 else "s", breaks,
                     "" if breaks == 1 else "s")
        elif graphs > self.first:
            log.warning("compile: recompiled (%d graphs after the first step, %d now); "
                        "see TORCH_LOGS=recompiles", self.first, graphs)
            self.first = graphs


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config, class_names: Sequence[str], ctx: DistContext | None = None
                ) -> ART:
    """The ART model of ``cfg.model`` for ``class_names`` (T and size from ``cfg.data``),
    initialised from ``cfg.train.seed`` (identical on every rank). Under torchrun rank 0
    encodes the text bank first so the other ranks read it from the cache."""
    ctx = ctx or DistContext()
    kw = cfg.model.art_kwargs()
    backbone, pretrained = kw.pop("backbone"), kw.pop("pretrained")

    def make() -> ART:
        torch.manual_seed(cfg.train.seed)
        return ART(list(class_names), backbone=backbone, pretrained=pretrained,
                   num_frames=cfg.data.num_frames, image_size=cfg.data.image_size, **kw)

    if ctx.distributed and cfg.model.text_cache:
        model = make() if ctx.is_main else None
        barrier(ctx)
        if model is None:
            model = make()
        return model
    return make()


def _autocast(cfg: Config, device: torch.device) -> tuple[contextlib.AbstractContextManager,
                                                          torch.dtype | None]:
    if device.type != "cuda" or cfg.train.amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def _make_loader(dataset: Any, sampler: ShardedBatchSampler, cfg: Config,
                 device: torch.device) -> DataLoader:
    workers = cfg.data.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(prefetch_factor=cfg.data.prefetch_factor, persistent_workers=True)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=cfg.data.pin_memory and device.type == "cuda",
                      # an own generator: creating an iterator must not draw from the global
                      # RNG (dropout's), or a resumed run would diverge
                      generator=torch.Generator().manual_seed(cfg.train.seed), **extra)


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a requirement
        return None
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                leave=False, file=sys.stderr)


def _show_progress(cfg: Config, ctx: DistContext) -> bool:
    return ctx.is_main and cfg.train.progress and sys.stderr.isatty()


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- evaluation

def _wants_region_hit(model: nn.Module, dataset: Any) -> bool:
    """Region hit is measured when the set can give target boxes and the model selects
    regions (a tracklet branch)."""
    opts = getattr(model, "options", None)
    return bool(getattr(dataset, "can_map_boxes", False)
                and getattr(opts, "tracklet_branch", False))


@torch.no_grad()
def _predict(model: nn.Module, dataset: Any, cfg: Config, ctx: DistContext,
             desc: str = "eval") -> dict[str, Any] | None:
    """Scores of every evaluation clip, gathered on rank 0: ``{indices, labels, probs}``
    (probs = softmax averaged over the views), sorted by dataset index; None on other ranks.

    When :func:`_wants_region_hit`, the items carry their target boxes and the result also
    holds each clip's region-hit sums over its valid frames of every view
    (:func:`~art_fast.train.region_hit.region_hit_sums`): ``region_hit_sum [n, K]`` float64,
    ``region_chance_sum [n]`` float64, ``region_frames [n]`` int64, gathered from every rank
    like the scores."""
    bs = cfg.eval.batch_size or cfg.train.batch_size
    sampler = ShardedBatchSampler(len(dataset), bs, rank=ctx.rank, world_size=ctx.world_size,
                                  train=False)
    boxed = _wants_region_hit(model, dataset)
    loader = DataLoader(WithTargetBoxes(dataset) if boxed else dataset, batch_sampler=sampler,
                        num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and ctx.device.type == "cuda",
                        generator=torch.Generator())
    was_training = model.training
    model.eval()
    amp, _ = _autocast(cfg, ctx.device)
    idx_all: list[int] = []
    lab_all: list[torch.Tensor] = []
    prob_all: list[torch.Tensor] = []
    hit_all: list[dict[str, torch.Tensor]] = []
    bar = _progress(len(sampler), 0, desc, _show_progress(cfg, ctx))
    batches = iter(sampler)
    for batch in loader:
        video, labels = batch[0], batch[1]
        idx_all.extend(i for i, _ in next(batches))
        x = to_model_input(video, ctx.device)
        multi = x.dim() == 6
        B = x.shape[0]
        V = x.shape[1] if multi else 1
        if multi:
            x = x.flatten(0, 1)
        with amp:
            out = model(x)
        probs = out.logits.float().softmax(-1).view(B, V, -1).mean(1)
        prob_all.append(probs.cpu())
        lab_all.append(labels.long())
        if boxed:
            # boxes [B, T, 4] or [B, V, T, 4] in the views' order of the video -> [B * V, T, 4],
            # then the frames the T' tracklet steps look at -> [B * V, T', 4]
            boxes = batch[2].reshape(B * V, -1, 4)[:, model.step_frames]
            r = region_hit(out.region_indices.cpu(), out.region_weights.float().cpu(),
                           boxes, tuple(model.backbone.visual.grid_size), model.image_size)
            sums = region_hit_sums(r)  # per view; a clip's sums add over its views
            hit_all.append({"region_hit_sum": sums["hit_sum"].view(B, V, -1).sum(1),
                            "region_chance_sum": sums["chance_sum"].view(B, V).sum(1),
                            "region_frames": sums["frames"].view(B, V).sum(1)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    C = getattr(dataset, "num_classes", None) or len(dataset.classes)
    mine = {
        "indices": torch.tensor(idx_all, dtype=torch.int64),
        "labels": torch.cat(lab_all) if lab_all else torch.zeros(0, dtype=torch.int64),
        "probs": torch.cat(prob_all) if prob_all else torch.zeros(0, C),
    }
    keys = ["indices", "labels", "probs"]
    if boxed:
        K = int(model.num_queries)
        empty = {"region_hit_sum": torch.zeros(0, K, dtype=torch.float64),
                 "region_chance_sum": torch.zeros(0, dtype=torch.float64),
                 "region_frames": torch.zeros(0, dtype=torch.int64)}
        for k, e in empty.items():
            mine[k] = torch.cat([h[k] for h in hit_all]) if hit_all else e
        keys += list(empty)
    parts = gather_objects(ctx, mine)
    if not ctx.is_main:
        return None
    idx = torch.cat([p["indices"] for p in parts])
    order = idx.argsort()
    out = {k: torch.cat([p[k] for p in parts])[order] for k in keys}
    if out["indices"].numel() != len(dataset) or not torch.equal(
            out["indices"], torch.arange(len(dataset))):
        raise RuntimeError("evaluation did not score every clip exactly once")
    return out


def _eval_report(pred: dict[str, Any], dataset: Any, out_dir: str, cfg: Config,
                 write: bool = True) -> dict[str, Any]:
    """Metrics of gathered predictions (``top1``, ``top5``, ``mean_class``, ``loss``,
    ``num_samples``, and the region-hit keys of
    :func:`~art_fast.train.region_hit.summarize_region_hit` when ``pred`` has region-hit sums);
    with ``write``, the predictions CSV and the confusion matrix (CSV, PNG) in ``out_dir``."""
    C = len(dataset.classes)
    m = classification_metrics(pred["probs"], pred["labels"], C)
    p_true = pred["probs"].gather(1, pred["labels"].view(-1, 1)).clamp_min(1e-12)
    metrics = {"top1": m["top1"], "top5": m["top5"], "mean_class": m["mean_class"],
               "loss": float(-p_true.log().mean()) if p_true.numel() else float("nan"),
               "num_samples": m["num_samples"]}
    if "region_hit_sum" in pred:
        metrics.update(summarize_region_hit(pred["region_hit_sum"], pred["region_chance_sum"],
                                            pred["region_frames"]))
    if write:
        os.makedirs(out_dir, exist_ok=True)
        write_confusion_csv(os.path.join(out_dir, "confusion.csv"), m["confusion"],
                            dataset.classes)
        if cfg.eval.confusion_png:
            write_confusion_png(os.path.join(out_dir, "confusion.png"), m["confusion"],
                                class_names=dataset.classes, top1=m["top1"],
                                mean_class=m["mean_class"])
        k = min(5, C)
        top_s, top_i = pred["probs"].topk(k, dim=1)
        rows = []
        for r in range(pred["indices"].numel()):
            i = int(pred["indices"][r])
            rows.append({
                "index": i, "path": dataset.path_of(i) if hasattr(dataset, "path_of") else "",
                "label": int(pred["labels"][r]), "prediction": int(top_i[r, 0]),
                "top5": top_i[r].tolist(), "top5_scores": top_s[r].tolist(),
                "scores": pred["probs"][r].tolist() if cfg.eval.save_scores else None,
            })
        write_predictions_csv(os.path.join(out_dir, "predictions.csv"), rows, dataset.classes)
    return metrics


def _precise_bn(models: Sequence[nn.Module], train_ds: Any, cfg: Config, ctx: DistContext,
                epoch: int, amp: contextlib.AbstractContextManager) -> None:
    """``train.precise_bn_batches``: recompute the BatchNorm statistics of each of ``models``
    (the raw weights, and the EMA's when kept) over that many shuffled training batches
    (at most one epoch's; the order of epoch ``epoch`` under another seed than training's, the
    training transforms; a loader of its own, so the training order and RNG are untouched).
    One pass: each batch is loaded once and run through every model."""
    t_cfg = cfg.train
    sampler = ShardedBatchSampler(len(train_ds), t_cfg.batch_size, rank=ctx.rank,
                                  world_size=ctx.world_size, train=True, seed=t_cfg.seed + 1)
    sampler.set_epoch(epoch, 0)
    n = min(t_cfg.precise_bn_batches, sampler.batches_per_epoch())
    t0 = time.perf_counter()

    def run_all(x: torch.Tensor) -> None:
        with amp:
            for model in models:
                model(x)

    # the loader starts its workers on first use: a model without BatchNorm reads nothing
    loader = _make_loader(train_ds, sampler, cfg, ctx.device)
    batches = (to_model_input(video, ctx.device) for video, _ in itertools.islice(loader, n))
    mean = (lambda t: all_reduce_sum(ctx, t) / ctx.world_size) if ctx.distributed else None
    layers = recompute_bn_stats(nn.ModuleList(models), batches, run_all, mean)
    if layers:
        log.info("precise BN: %d BatchNorm layers, statistics of %d batches of %d clips "
                 "(%.1f s)", layers // len(models), n, t_cfg.batch_size * ctx.world_size,
                 time.perf_counter() - t0)


# --------------------------------------------------------------------------- checkpoints

def _unwrap(model: nn.Module) -> ART:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _checkpoint_state(cfg: Config, ctx: DistContext, model: nn.Module,
                      optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                      scaler: torch.amp.GradScaler | None, progress: dict[str, Any],
                      stats: RunningMeans, metrics: dict[str, Any] | None,
                      ema: torch.optim.swa_utils.AveragedModel | None = None
                      ) -> dict[str, Any] | None:
    """The checkpoint dict on rank 0 (None elsewhere); a collective: every rank calls it.
    With a weight EMA that has been updated: ``model_ema`` (its weights, a state dict of the
    model) and ``model_ema_updates`` (its update count) beside the raw ``model``."""
    rng = gather_objects(ctx, get_rng_state())
    keys = sorted(stats.sums)
    local = torch.tensor([stats.sums[k] for k in keys] + [stats.count], dtype=torch.float64)
    total = all_reduce_sum(ctx, local).tolist()
    if not ctx.is_main:
        return None
    inner = _unwrap(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": inner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": int(progress["epoch"]),
        "batch_in_epoch": int(progress["batch_in_epoch"]),
        "step": int(progress["step"]),
        "best_top1": float(progress["best_top1"]),
        "world_size": ctx.world_size,
        "batch_size": cfg.train.batch_size,
        "rng": rng,
        "epoch_stats": {"sums": dict(zip(keys, total[:-1])), "count": total[-1]},
        "class_names": list(inner.class_names),
        "config": config_to_dict(cfg),
        "metrics": dict(metrics or {}),
    }
    if ema is not None and int(ema.n_averaged) > 0:
        state["model_ema"] = ema_state(ema)
        state["model_ema_updates"] = int(ema.n_averaged)
    return state


def _save(state: dict[str, Any] | None, cfg: Config, names: Sequence[str]) -> None:
    """Write ``state`` (with its content digest) to ``names`` in the output folder. A write
    error (a full disk, ...) raises an ``OSError`` naming the file; what was there stays."""
    if state is None:
        return
    save_checkpoint(state, *(os.path.join(cfg.output_dir, n) for n in names))
    log.info("saved %s (step %d)", " and ".join(names), state["step"])


def _resolve_resume(cfg: Config) -> tuple[str, dict[str, Any]] | None:
    """``(path, loaded checkpoint)`` to resume from, or None (see ``train.resume``)."""
    r = cfg.train.resume
    if r is None:
        return None
    if r == "auto":
        found = resolve_auto_resume(cfg.output_dir)
        if found is None:
            log.info("resume=auto: no checkpoint in %s; starting from scratch", cfg.output_dir)
        return found
    if not os.path.isfile(r):
        raise FileNotFoundError(f"train.resume={r!r}: no such checkpoint")
    return r, load_checkpoint(r, map_location="cpu")


def _trim_metrics(output_dir: str, step: int) -> None:
    """Drop the ``metrics.jsonl`` records past ``step`` (and torn lines): a run that starts
    at ``step`` writes them again."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    keep, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
            except (ValueError, TypeError):
                ok = False
            if ok:
                keep.append(line if line.endswith("\n") else line + "\n")
            elif line.strip():
                dropped += 1
    if dropped:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        log.info("metrics.jsonl: dropped %d record(s) past step %d (this run writes them "
                 "again)", dropped, step)


def _claim_output_dir(cfg: Config, overwrite: bool) -> list[str]:
    """Refuse a folder that holds a previous run unless resuming or ``overwrite`` (then
    delete that run's files; returned)."""
    found = previous_run(cfg.output_dir)
    if not found:
        return []
    if overwrite:
        return clear_run(cfg.output_dir)
    if cfg.train.resume is not None:
        return []
    raise RunDirError(
        f"{cfg.output_dir} already holds a run ({', '.join(found)}); continue it with "
        "--resume auto (train.resume=auto), or start over with --overwrite (deletes its files)")


def _load_model_state(model: ART, state: dict[str, Any], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not fit this model (were model.* or "
                              f"data.num_frames / data.image_size changed?): {e}") from None


def weights_to_load(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model state dict that evaluation and inference load from checkpoint dict ``ckpt``:
    the EMA weights (``model_ema``, written when ``train.ema_decay`` > 0) when present, else
    the raw weights (``model``). Training resumes from both, each into its own model."""
    ema = ckpt.get("model_ema")
    return ema if ema else ckpt["model"]


# --------------------------------------------------------------------------- training

def train(cfg: Config, callbacks: Sequence[Callable[[StepInfo], None]] = (),
          overwrite: bool = False) -> dict[str, Any]:
    """Train ART as ``cfg`` says; returns the final metrics.

    Args:
        cfg: the run config (see :mod:`art_fast.train.config`).
        callbacks: called after every optimiser step (after any checkpoint of that step) with
            a :data:`StepInfo`; an exception raised there stops the run where it is, with no
            further checkpoint (as a kill would).
        overwrite: when ``cfg.output_dir`` holds a previous run, delete its files and start
            over (without it, and without ``train.resume``, such a folder is refused).

    Raises:
        RunDirError: another live run holds the folder, or it holds a previous run (see the
            module docstring). CheckpointError: the checkpoint to resume from is damaged.

    Returns:
        ``{step, epoch, top1, top5, mean_class, loss, best_top1, train_loss, output_dir}``
        (eval numbers from the final evaluation; the same dict on every rank), plus
        ``top1_ema``, ``top5_ema``, ``mean_class_ema``, ``loss_ema`` with ``train.ema_decay``.

    Writes to ``cfg.output_dir``: ``config.yaml``, ``train.log``, ``metrics.jsonl``,
    ``last.pt``, ``best.pt``, ``confusion.csv``/``.png`` and ``predictions.csv`` of the latest
    evaluation, ``bad_videos.txt`` when a video is unreadable (rank 0 writes).
    """
    if overwrite and cfg.train.resume is not None:
        raise UserError(f"overwrite and train.resume={cfg.train.resume!r} exclude each other "
                        "(--overwrite deletes the checkpoints --resume would continue from)")
    os.makedirs(cfg.output_dir, exist_ok=True)
    ctx = init_distributed(cfg.train.device)
    lock: RunLock | None = None
    try:
        refusal: Exception | None = None
        cleared: list[str] = []
        if ctx.is_main:
            try:
                lock = RunLock.acquire(cfg.output_dir)
                cleared = _claim_output_dir(cfg, overwrite)
            except (RunDirError, OSError) as e:  # OSError: e.g. no permission to write there
                refusal = e
        # rank 0's verdict on the folder, so that every rank stops together
        message = broadcast_object(ctx, None if refusal is None else describe(refusal))
        if refusal is not None:
            raise refusal
        if message is not None:
            raise RunDirError(message)
        with _logging_to(cfg.output_dir, ctx.is_main), _runtime(cfg, ctx):
            if lock is not None and lock.stale is not None:
                pid, host = lock.stale
                log.warning("took over the stale lock %s of pid %s%s, which no longer holds "
                            "it", lock.path, pid, f" on {host}" if host else "")
            if cleared:
                log.info("overwrite: removed the previous run's files (%s)", ", ".join(cleared))
            result = _train(cfg, ctx, callbacks)
        # Every rank leaves together: a rank tearing the group down while another still
        # finishes its last collective aborted at exit ("terminate called without an active
        # exception") once in six 2-process gloo test runs. Only on success: after a
        # failure the other ranks may never arrive.
        barrier(ctx)
        return result
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed(ctx)


def _train(cfg: Config, ctx: DistContext, callbacks: Sequence[Callable[[StepInfo], None]]
           ) -> dict[str, Any]:
    # the run's config with absolute paths (data folder, lists, output_dir): what config.yaml
    # and every checkpoint store, so that eval / viz / predict work from any directory
    cfg = absolute_paths(cfg)
    t_cfg = cfg.train
    device = ctx.device
    check_recipe(t_cfg)
    if ctx.is_main:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        stale = remove_stale_temps(cfg.output_dir)
        if stale:
            log.info("removed temp files of dead writers: %s", ", ".join(stale))
    log.info("run: output_dir=%s, device=%s, world_size=%d, backend=%s",
             cfg.output_dir, device, ctx.world_size, t_cfg.backend)
    if device.type != "cuda" and t_cfg.amp != "off":
        log.info("train.amp=%s applies on CUDA only; running in float32", t_cfg.amp)

    train_ds = build_dataset(cfg, None, train=True)
    eval_ds = build_dataset(cfg, None, train=False)
    if list(eval_ds.classes) != list(train_ds.classes):
        raise ValueError("the training and evaluation splits have different class lists "
                         f"({len(train_ds.classes)} vs {len(eval_ds.classes)} classes); for "
                         "data.name=list give data.class_csv")
    log.info("data: %r / %r", train_ds, eval_ds)

    _seed_all(t_cfg.seed)
    model = build_model(cfg, train_ds.classes, ctx).to(device)
    inner = model
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: ART(%s, %d classes), %.2fM parameters", cfg.model.backbone,
             inner.num_classes, n_params / 1e6)

    groups = inner.param_groups(t_cfg.lr, t_cfg.weight_decay)
    if t_cfg.layer_decay < 1:
        groups = layer_decay_groups(inner, groups, t_cfg.layer_decay)
        log.info("layer decay %g: tower lr scales %s", t_cfg.layer_decay,
                 ", ".join(f"{g['name']} {g['lr_scale']:.3g}" for g in groups))
    # the weight EMA (before resuming: it is restored from the checkpoint)
    ema = make_ema(inner, t_cfg.ema_decay) if t_cfg.ema_decay > 0 else None
    mixer = BatchMixer(inner.num_classes, mixup=t_cfg.mixup, cutmix=t_cfg.cutmix,
                       switch_prob=t_cfg.mixup_switch_prob, seed=t_cfg.seed, rank=ctx.rank)
    soft_ce = mixer.active or t_cfg.label_smoothing > 0
    # fused: one kernel over every parameter (3.8 -> 0.85 ms per AdamW step of the demo model
    # on 2 CPU cores against the for-loop, torch's CPU default)
    impl = OPTIMIZER_IMPLS[t_cfg.optimizer_impl]
    if t_cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=t_cfg.lr, betas=tuple(t_cfg.betas), weight_decay=t_cfg.weight_decay,
            **impl)
    else:
        optimizer = torch.optim.SGD(groups, lr=t_cfg.lr, momentum=t_cfg.momentum,
                                    nesterov=t_cfg.nesterov, weight_decay=t_cfg.weight_decay,
                                    **impl)
    amp, amp_dtype = _autocast(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    sampler = ShardedBatchSampler(len(train_ds), t_cfg.batch_size, rank=ctx.rank,
                                  world_size=ctx.world_size, train=True, seed=t_cfg.seed,
                                  multiple_of=t_cfg.grad_accum)
    micro_per_epoch = sampler.batches_per_epoch()
    steps_per_epoch = micro_per_epoch // t_cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split has {len(train_ds)} clips, fewer than one optimiser step "
            f"needs (world_size {ctx.world_size} x train.batch_size {t_cfg.batch_size} x "
            f"train.grad_accum {t_cfg.grad_accum}); lower the batch size")
    total_steps = t_cfg.epochs * steps_per_epoch
    if t_cfg.max_steps is not None:
        total_steps = min(total_steps, t_cfg.max_steps)
    warmup = t_cfg.warmup_steps + int(round(t_cfg.warmup_epochs * steps_per_epoch))
    if warmup > total_steps:
        log.warning("the warmup (%d steps: train.warmup_steps + train.warmup_epochs) is longer "
                    "than the run (%d steps): the learning rate never reaches train.lr=%g",
                    warmup, total_steps, t_cfg.lr)
    if t_cfg.aux_warmup_epochs > 0:
        log.info("the auxiliary losses (gamma1 MTC, gamma2 L_sema) rise from weight 0 to 1 "
                 "over the first %g epochs (%d steps; train.aux_warmup_epochs)",
                 t_cfg.aux_warmup_epochs, math.ceil(t_cfg.aux_warmup_epochs * steps_per_epoch))
    schedule = LRSchedule(optimizer, total_steps, warmup_steps=warmup, kind=t_cfg.schedule,
                          min_lr_ratio=t_cfg.min_lr_ratio, steps_per_epoch=steps_per_epoch,
                          step_epochs=t_cfg.step_epochs, gamma=t_cfg.step_gamma)

    progress = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_top1": -1.0}
    stats = RunningMeans()
    last_metrics: dict[str, Any] = {}
    resumed = _resolve_resume(cfg)
    if resumed is not None:
        resume_path, ckpt = resumed
        _load_model_state(inner, ckpt["model"], resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # the saved groups carry their run's impl flags
            group.update(fused=impl.get("fused"), foreach=impl.get("foreach"))
        if impl.get("fused"):  # a fused step reads ``step`` as a float tensor on the device
            for p, st in optimizer.state.items():
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(p.device, torch.float32)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        for k in progress:
            progress[k] = ckpt[k]
        last_metrics = dict(ckpt.get("metrics") or {})
        same_layout = (ckpt.get("world_size") == ctx.world_size
                       and ckpt.get("batch_size") == t_cfg.batch_size)
        if not same_layout:
            consumed = (ckpt["batch_in_epoch"] * int(ckpt.get("batch_size", 1))
                        * int(ckpt.get("world_size", 1)))
            progress["batch_in_epoch"] = consumed // (t_cfg.batch_size * ctx.world_size)
            log.warning("resume: the checkpoint was written with world_size=%s, batch_size=%s "
                        "(now %d, %d); continuing at the same epoch position, not bitwise "
                        "exact", ckpt.get("world_size"), ckpt.get("batch_size"),
                        ctx.world_size, t_cfg.batch_size)
        rng = ckpt.get("rng") or []
        if same_layout and ctx.rank < len(rng):
            set_rng_state(rng[ctx.rank])
        else:
            _seed_all(t_cfg.seed + 7919 * ctx.rank + progress["step"])
        if ctx.is_main:
            stats = RunningMeans(ckpt.get("epoch_stats"))
        log.info("resumed from %s: epoch %d, batch %d, step %d", resume_path,
                 progress["epoch"] + 1, progress["batch_in_epoch"], progress["step"])
        if ema is not None:
            if ckpt.get("model_ema") is None and progress["step"] > 0:
                log.warning("resume: %s holds no weight EMA (model_ema); the EMA starts over "
                            "from the resumed weights", resume_path)
            try:
                load_ema(ema, ckpt.get("model_ema"), int(ckpt.get("model_ema_updates", 0)))
            except RuntimeError as e:
                raise CheckpointError(f"{resume_path}: model_ema does not fit this model: "
                                      f"{e}") from None
        del ckpt
    else:
        # dropout differs per rank (the model itself was built from the same seed everywhere)
        _seed_all(t_cfg.seed + 7919 * ctx.rank)
    schedule.apply(progress["step"])

    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            inner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=t_cfg.find_unused_parameters)

    if ctx.is_main:
        _trim_metrics(cfg.output_dir, progress["step"])
    metrics_log = MetricsLog(cfg.output_dir, t_cfg.tensorboard) if ctx.is_main else None
    loader = _make_loader(train_ds, sampler, cfg, device)
    global_clips = t_cfg.batch_size * ctx.world_size
    schedule_name = t_cfg.schedule
    if schedule_name == "cosine" and t_cfg.min_lr_ratio >= 1:  # the floor is the peak: constant
        schedule_name = "constant: cosine with min_lr_ratio 1"
    log.info("training: %d steps (%d per epoch, %d epochs), global batch %d x accum %d, "
             "lr %g (%s, %s), %d clips", total_steps, steps_per_epoch, t_cfg.epochs,
             global_clips, t_cfg.grad_accum, t_cfg.lr, t_cfg.optimizer, schedule_name,
             len(train_ds))
    step_model = _compile_step(model, t_cfg.compile, t_cfg.compile_backend)
    compile_watch = (_CompileWatch(t_cfg.compile, t_cfg.compile_backend)
                     if step_model is not model else None)
    governor = None
    if t_cfg.adapt_threads and device.type == "cpu" and torch.get_num_threads() > 1:
        def _threads_changed(old: int, new: int, others: float) -> None:
            log.info("threads: %d -> %d (other processes used %.1f cores)", old, new, others)

        governor = ThreadGovernor(torch.get_num_threads(), on_change=_threads_changed)
    t_start = time.perf_counter()
    steps_at_start = progress["step"]
    record: dict[str, Any] = {}
    lr_used = schedule.last_lr()
    try:
        while progress["step"] < total_steps:
            epoch = progress["epoch"]
            sampler.set_epoch(epoch, progress["batch_in_epoch"])
            model.train()
            t_epoch, clips_epoch = time.perf_counter(), 0
            bar = _progress(steps_per_epoch, progress["batch_in_epoch"] // t_cfg.grad_accum,
                            f"epoch {epoch + 1}", _show_progress(cfg, ctx))
            optimizer.zero_grad(set_to_none=True)
            for video, labels in loader:
                x = to_model_input(video, device)
                y = labels.to(device, torch.int64, non_blocking=True)
                target: torch.Tensor = y
                if mixer.active:
                    mixed = mixer(x, y, progress["step"],
                                  progress["batch_in_epoch"] % t_cfg.grad_accum)
                    x, y, target = mixed.video, mixed.labels, mixed.target
                sync_now = (progress["batch_in_epoch"] + 1) % t_cfg.grad_accum == 0
                no_sync = (model.no_sync() if ctx.distributed and not sync_now
                           else contextlib.nullcontext())
                with no_sync:
                    if compile_watch is not None:
                        compile_watch.before_step()
                    with amp:
                        out = step_model(x, y)
                    if soft_ce:
                        out.losses = classification_losses(out.losses, out.logits,
                                                           out.logits_v, target,
                                                           t_cfg.label_smoothing)
                    aux_w = auxiliary_weight(progress["step"], steps_per_epoch,
                                             t_cfg.aux_warmup_epochs)
                    if aux_w < 1.0:
                        out.losses = scale_auxiliary(out.losses, aux_w)
                    loss = out.losses["total"] / t_cfg.grad_accum
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                # one host sync per micro-batch for every loss term together
                names = list(out.losses)
                vals = torch.stack([out.losses[k].detach().float() for k in names]).tolist()
                values = dict(zip(names, vals))
                if all(math.isfinite(v) for v in vals):
                    stats.add(values, x.shape[0])
                elif scaler is None:  # fp16: the scaler skips the step and lowers its scale
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch + 1} step {progress['step']}: {values}; "
                        "lower train.lr or set train.clip_grad")
                clips_epoch += x.shape[0]
                progress["batch_in_epoch"] += 1
                if not sync_now:
                    continue
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if t_cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(inner.parameters(), t_cfg.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                inner.update_bank()
                if ema is not None:
                    ema.update_parameters(inner)
                if governor is not None:
                    governor.tick()
                if compile_watch is not None:
                    compile_watch.after_step()
                lr_used = schedule.last_lr()
                progress["step"] += 1
                schedule.apply(progress["step"])
                step = progress["step"]
                if bar is not None:
                    rate = clips_epoch * ctx.world_size / max(1e-9,
                                                             time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{values['total']:.3f}", clips_s=f"{rate:.1f}")
                    bar.update(1)
                if t_cfg.log_every and step % t_cfg.log_every == 0:
                    elapsed = time.perf_counter() - t_start
                    done = step - steps_at_start
                    eta = elapsed / max(done, 1) * (total_steps - step)
                    log.info("epoch %d step %d/%d loss %.4f lr %.3g clips/s %.1f eta %s",
                             epoch + 1, step, total_steps, values["total"], lr_used,
                             clips_epoch * ctx.world_size / max(1e-9,
                                                               time.perf_counter() - t_epoch),
                             _fmt_time(eta))
                epoch_done = progress["batch_in_epoch"] >= micro_per_epoch
                if (t_cfg.save_every and step % t_cfg.save_every == 0 and not epoch_done
                        and step < total_steps):
                    _save(_checkpoint_state(cfg, ctx, model, optimizer, schedule, scaler,
                                            progress, stats, last_metrics, ema), cfg,
                          ["last.pt"])
                info = {"step": step, "epoch": epoch, "lr": lr_used,
                        "batch_in_epoch": progress["batch_in_epoch"], "loss": values["total"]}
                for cb in callbacks:
                    cb(info)
                if step >= total_steps:
                    break
            if bar is not None:
                bar.close()
            seconds = time.perf_counter() - t_epoch
            epoch_done = progress["batch_in_epoch"] >= micro_per_epoch
            finished = progress["step"] >= total_steps
            do_eval = finished or (epoch_done and t_cfg.eval_every > 0
                                   and (epoch + 1) % t_cfg.eval_every == 0)
            record = _epoch_record(ctx, progress, stats, lr_used, seconds, clips_epoch,
                                   epoch_done)
            best = False
            if do_eval:
                if t_cfg.precise_bn_batches:
                    _precise_bn([_unwrap(model)] + ([ema.module] if ema is not None else []),
                                train_ds, cfg, ctx, epoch, amp)
                pred = _predict(_unwrap(model), eval_ds, cfg, ctx)
                # predictions.csv and confusion.{csv,png}: of the weights evaluation loads
                # (the EMA's when kept, see weights_to_load), like best.pt below
                m = (_eval_report(pred, eval_ds, cfg.output_dir, cfg, write=ema is None)
                     if ctx.is_main else None)
                if ema is not None:  # the EMA weights beside the raw ones: <key>_ema
                    pred = _predict(ema.module, eval_ds, cfg, ctx, desc="eval ema")
                    if m is not None:
                        m_ema = _eval_report(pred, eval_ds, cfg.output_dir, cfg, write=True)
                        m.update({f"{k}_ema": v for k, v in m_ema.items()
                                  if k != "num_samples"})
                last_metrics = broadcast_object(ctx, m)
                record["eval"] = last_metrics
                # best.pt: by the weights evaluation loads (the EMA's when kept)
                best_key = "top1_ema" if ema is not None else "top1"
                best = last_metrics[best_key] > progress["best_top1"]
                if best:
                    progress["best_top1"] = last_metrics[best_key]
                log.info("eval epoch %d step %d: top1 %.4f top5 %.4f mean_class %.4f "
                         "(%d clips)%s", epoch + 1, progress["step"], last_metrics["top1"],
                         last_metrics["top5"], last_metrics["mean_class"],
                         last_metrics["num_samples"], _region_hit_text(last_metrics))
                if ema is not None:
                    log.info("eval epoch %d step %d (EMA weights): top1 %.4f top5 %.4f "
                             "mean_class %.4f", epoch + 1, progress["step"],
                             last_metrics["top1_ema"], last_metrics["top5_ema"],
                             last_metrics["mean_class_ema"])
            if metrics_log is not None:
                metrics_log.write(record)
            if epoch_done:
                progress["epoch"] += 1
                progress["batch_in_epoch"] = 0
                stats = RunningMeans()
            state = _checkpoint_state(cfg, ctx, model, optimizer, schedule, scaler, progress,
                                      stats, last_metrics, ema)
            _save(state, cfg, ["last.pt", "best.pt"] if best else ["last.pt"])
    finally:
        if metrics_log is not None:
            metrics_log.close()
    result = {"step": progress["step"], "epoch": progress["epoch"],
              "best_top1": progress["best_top1"], "output_dir": cfg.output_dir,
              "train_loss": record.get("train", {}).get("total") if progress["step"] else None}
    result.update({k: last_metrics.get(k) for k in ("top1", "top5", "mean_class", "loss")})
    if ema is not None:
        result.update({k: last_metrics.get(k) for k in ("top1_ema", "top5_ema",
                                                        "mean_class_ema", "loss_ema")})
    log.info("done: %s", json.dumps(result))
    return result


def _region_hit_text(metrics: dict[str, Any]) -> str:
    """``", region_hit 0.4123 (chance 0.0871, query 1, 64 clip-frames)"`` for the eval log
    line, ``""`` when the metrics have no region hit."""
    if "region_hit_frames" not in metrics:
        return ""
    if metrics.get("region_hit") is None:
        return ", region_hit n/a (no valid box frame)"
    return (f", region_hit {metrics['region_hit']:.4f} (chance "
            f"{metrics['region_hit_chance']:.4f}, query {metrics['region_hit_query']}, "
            f"{metrics['region_hit_frames']} clip-frames)")


def _epoch_record(ctx: DistContext, progress: dict[str, Any], stats: RunningMeans,
                  lr: float, seconds: float, clips: int, complete: bool
                  ) -> dict[str, Any]:
    """One metrics.jsonl line (train loss terms averaged over every clip of every rank);
    ``epoch`` counts from 1."""
    keys = sorted(stats.sums)
    local = torch.tensor([stats.sums[k] for k in keys] + [stats.count, float(clips)],
                         dtype=torch.float64)
    total = all_reduce_sum(ctx, local).tolist()
    count = total[-2]
    train_means = {k: total[i] / count for i, k in enumerate(keys)} if count else {}
    return {"epoch": progress["epoch"] + 1, "step": progress["step"],
            "epoch_complete": bool(complete), "lr": lr, "train": train_means,
            "clips_per_s": total[-1] / max(seconds, 1e-9), "time_s": round(seconds, 3)}


# --------------------------------------------------------------------------- evaluation API

def evaluate(cfg: Config, checkpoint: str | None = None, out_dir: str | None = None,
             *, _loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``checkpoint`` on the evaluation split with ``cfg.eval.views``.

    Args:
        cfg: the run config (data, model, eval sections).
        checkpoint: a checkpoint path, ``"best"`` / ``"last"`` (in ``cfg.output_dir``), or None
            (``best.pt`` there if it exists, else ``last.pt``).
        out_dir: where the results go (default ``<cfg.output_dir>/eval``).
        _loaded: (internal, :func:`main_eval`) the checkpoint dict already loaded from
            ``checkpoint``, so that it is not read (and digest-checked) twice.

    The model is built from the checkpoint alone (:func:`_model_from_checkpoint`: not from
    ``model.pretrained``, no text encoding); the data comes from ``cfg.data``.

    Returns:
        ``{top1, top5, mean_class, loss, num_samples, checkpoint, step, output_dir, views,
        seconds}`` plus ``region_hit``, ``region_hit_chance``, ``region_hit_query``,
        ``region_hit_per_query``, ``region_hit_frames`` when the set has target boxes and the
        model a tracklet branch (absent otherwise; see :mod:`art_fast.train.region_hit`;
        every view scored with its own box mapping); writes ``predictions.csv``,
        ``confusion.csv``, ``confusion.png``, ``eval_metrics.json`` and ``eval.log`` to
        ``out_dir`` (rank 0).
    """
    out_dir = out_dir or os.path.join(cfg.output_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    ctx = init_distributed(cfg.train.device)
    try:
        with _logging_to(out_dir, ctx.is_main, "eval.log"), _runtime(cfg, ctx):
            path = _resolve_checkpoint(cfg, checkpoint)
            ckpt = _loaded if _loaded is not None else load_checkpoint(path, map_location="cpu")
            dataset = build_dataset(cfg, None, train=False)
            names = ckpt.get("class_names")
            if names is not None and list(names) != list(dataset.classes):
                raise ValueError(f"{path} was trained on {len(names)} classes that differ from "
                                 f"the {len(dataset.classes)} classes of the evaluation split")
            model = _model_from_checkpoint(cfg, ckpt, path, dataset.classes)
            model.to(ctx.device)
            log.info("evaluating %s (step %s) on %r", path, ckpt.get("step"), dataset)
            t0 = time.perf_counter()
            pred = _predict(model, dataset, cfg, ctx)
            result = None
            if ctx.is_main:
                result = _eval_report(pred, dataset, out_dir, cfg)
                result.update({"checkpoint": os.path.abspath(path),
                               "step": int(ckpt.get("step", -1)), "output_dir": out_dir,
                               "views": list(cfg.eval.views),
                               "seconds": round(time.perf_counter() - t0, 3)})
                with open(os.path.join(out_dir, "eval_metrics.json"), "w",
                          encoding="utf-8") as f:
                    json.dump(result, f, indent=1)
                    f.write("\n")
                log.info("eval: top1 %.4f top5 %.4f mean_class %.4f (%d clips)%s",
                         result["top1"], result["top5"], result["mean_class"],
                         result["num_samples"], _region_hit_text(result))
            return broadcast_object(ctx, result)
    finally:
        cleanup_distributed(ctx)


def _resolve_checkpoint(cfg: Config, checkpoint: str | None) -> str:
    if checkpoint in (None, "best", "last", "auto"):
        names = {"best": ["best.pt"], "last": ["last.pt"]}.get(checkpoint or "",
                                                              ["best.pt", "last.pt"])
        for n in names:
            p = os.path.join(cfg.output_dir, n)
            if os.path.isfile(p):
                return p
        raise FileNotFoundError(f"no checkpoint ({' or '.join(names)}) in {cfg.output_dir}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    return checkpoint


# --------------------------------------------------------------------------- CLI entries

def load_trained(checkpoint: str, overrides: Sequence[str] = (),
                 device: str | torch.device = "cpu") -> tuple[ART, Config, dict[str, Any]]:
    """A trained model from a checkpoint alone: ``(model in eval mode on device, the
    checkpoint's config with ``overrides`` applied, the checkpoint dict)``. The class names
    come from the checkpoint, so no dataset is needed (for drawing tracklets, demos).

    Needs the checkpoint alone: the model is built by :func:`_model_from_checkpoint` (no
    ``model.pretrained`` weights, no text encoding, no network) and carries the config's
    evaluation settings as ``model.predict_settings`` (:meth:`ART.predict`). Path-valued
    overrides (``data.root=...``) are taken relative to the current directory.

    Raises:
        FileNotFoundError: no such file. CheckpointError: a damaged file, not a checkpoint of
            ``art-fast train``, or weights that do not fit the config."""
    checkpoint = os.fspath(checkpoint)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = absolute_paths(apply_overrides(_stored_config(ckpt, checkpoint), list(overrides)))
    model = _model_from_checkpoint(cfg, ckpt, checkpoint)
    return model.to(device).eval(), cfg, ckpt


def _model_from_checkpoint(cfg: Config, ckpt: dict[str, Any], path: str,
                           class_names: Sequence[str] | None = None) -> ART:
    """The trained ART of a loaded checkpoint ``ckpt`` (on the CPU, in train mode).

    1. The architecture of ``cfg.model`` / ``cfg.data`` is built with ``pretrained=None`` and
       the checkpoint's text bank (``ART(_text_bank=...)``): nothing of ``model.pretrained``
       (an open_clip tag would download; a file may be gone, an official UniFormerV2 video
       checkpoint too: the architecture is the same without it), no text encoding. open_clip's
       "initialized randomly" warning of that build is dropped; the global RNG is untouched.
    2. The checkpoint's state dict (every weight, ``bank`` and ``agent_bank`` included; the
       weight EMA's when the run kept one: :func:`weights_to_load`) is loaded into it;
       ``model.predict_settings`` is set from ``cfg``."""
    from ..predict import PredictSettings, quiet_random_init

    state = weights_to_load(ckpt)
    bank = state.get("bank") if isinstance(state, dict) else None
    if not isinstance(bank, torch.Tensor):
        raise CheckpointError(f"{path}: its model state has no text bank ('bank')")
    kw = cfg.model.art_kwargs()
    backbone = kw.pop("backbone")
    kw.pop("pretrained")
    names = list(ckpt["class_names"] if class_names is None else class_names)
    with torch.random.fork_rng(devices=[]), quiet_random_init():
        model = ART(names, backbone=backbone, pretrained=None, num_frames=cfg.data.num_frames,
                    image_size=cfg.data.image_size, _text_bank=bank, **kw)
    _load_model_state(model, state, path)
    model.predict_settings = PredictSettings.from_config(cfg)
    return model


# The config keys that name files or folders: a run stores them absolute (config.yaml, the
# checkpoints), so that eval / viz / predict work from any directory; command-line overrides
# of them are taken relative to the current directory.
_PATH_KEYS = (("", "output_dir"), ("data", "root"), ("data", "video_dir"),
              ("data", "train_list"), ("data", "eval_list"), ("data", "class_csv"))


def absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` whose path-valued keys (:data:`_PATH_KEYS`, those set) are absolute
    (``~`` expanded, relative ones against the current directory)."""
    import copy

    cfg = copy.deepcopy(cfg)
    for section, key in _PATH_KEYS:
        owner = getattr(cfg, section) if section else cfg
        value = getattr(owner, key, None)
        if isinstance(value, str) and value:
            setattr(owner, key, os.path.abspath(os.path.expanduser(value)))
    return cfg


def _stored_config(ckpt: dict[str, Any], path: str) -> Config:
    """The config a checkpoint was trained with (a checkpoint of a run before paths were
    stored absolute may hold relative ones: they are relative to the current directory)."""
    if not isinstance(ckpt.get("config"), dict) or "class_names" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of art-fast train (no 'config' / "
                              "'class_names' entry)")
    return config_from_dict(ckpt["config"])


def _print_main(tag: str, result: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{tag}: {json.dumps(result)}", flush=True)


def main_train(config_path: str | None, overrides: Sequence[str] = (),
               resume: str | None = None, overwrite: bool = False) -> int:
    """``art-fast train``: load the config (+ ``key=value`` overrides), set ``train.resume``
    when ``resume`` is given (``"auto"`` or a path), :func:`train` (``overwrite``: start over in
    a folder that holds a previous run), print the final metrics as one ``train: {json}`` line
    (rank 0) and return the exit code 0 (errors raise)."""
    cfg = load_config(config_path, list(overrides))
    if resume is not None:
        cfg.train.resume = str(resume)
    _print_main("train", train(cfg, overwrite=overwrite))
    return 0


def main_eval(checkpoint: str, overrides: Sequence[str] = (), out: str | None = None) -> int:
    """``art-fast eval``: evaluate ``checkpoint`` with the config stored in it (+ ``key=value``
    overrides, e.g. ``data.root=...`` or ``eval.views=[2,3]``); results go to ``out`` (default:
    ``eval/`` beside the checkpoint). Prints one ``eval: {json}`` line (rank 0), returns 0."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    ckpt = load_checkpoint(checkpoint, map_location="cpu")  # loaded (and checked) once
    cfg = absolute_paths(apply_overrides(_stored_config(ckpt, checkpoint), list(overrides)))
    out_dir = out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval")
    _print_main("eval", evaluate(cfg, checkpoint, out_dir, _loaded=ckpt))
    return 0
