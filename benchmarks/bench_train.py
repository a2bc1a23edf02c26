#!/usr/bin/env python
"""One full ART training step per backend (DESIGN §7).

For each model configuration (``tiny``: the demo's tiny open_clip tower; ``vitb16``: ViT-B/16,
the paper's setting, random init) and each usable backend (``torch`` = the references, ``cpu``
/ ``triton`` / ``cuda`` = art_fast's kernels): forward with labels, backward of the total loss,
AdamW step and the bank's EMA step. Reported: median step time, time per clip, clips/s, peak
memory (CUDA only), the total loss of the first step (every backend starts from the same
weights and batch, so the losses must agree), and the ART head's share of the step: (ART step
- bare backbone step) / bare backbone step, where the bare backbone is the same vision tower +
temporal module + linear head + cross-entropy with no SE/RSSA/tracklets/text bank.

Results: ``<out>/bench_train.json`` and ``<out>/bench_train.md`` with device, versions, date.

Usage::

    python benchmarks/bench_train.py [--device cpu|cuda] [--configs tiny vitb16]
        [--backends torch cpu ...] [--batch B] [--frames T] [--reps N] [--threads N] [--out DIR]
        [--compile off default max-autotune] [--adamw fused foreach for-loop]

``--compile``: each mode's rows come from a fresh ``torch.compile`` of the bare backbone and
of ART (static shapes, as ``train.compile`` does), traced under each backend (dynamo's caches
reset in between); ``first step s`` is the compiled first step (tracing + code generation).
Inductor caches generated code on disk: a second run on the same machine compiles in seconds;
``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` measures a cold compilation.
    python benchmarks/bench_train.py --profile [--profile-warmup W] [--profile-steps N]
        [--profile-data DIR] [--data-config YAML] [--data-steps N] [--data-warmup W] ...

``--profile``: where a step's time goes. For each config and usable backend: ``W`` warm-up
steps (timed without the profiler; the median of those after the first is the unprofiled step
time), then ``N`` steps under ``torch.profiler.profile`` (CPU activity, CUDA too on cuda); by
default W, N = 4, 5 for tiny and 2, 3 for vitb16 (a ViT-B/16 step takes ~10 s on 2 CPU cores).
The step is the trainer's: forward with labels, zero_grad, backward, AdamW step, bank EMA, all
under the backend (``art_fast.use_backend``). The regions are
``torch.profiler.record_function`` ranges: ``step`` (the whole step; on cuda it ends with a
synchronize), its top-level parts ``step.forward`` / ``step.backward`` / ``step.optimizer``
(zero_grad + step) / ``step.bank_ema``, and inside the forward the model's own ranges
(art_fast/model/art.py): ``art.backbone`` (vision tower per frame; shown without the temporal
module), ``art.temporal`` (the temporal module: the profile names it with a forward hook on
``backbone.temporal``, since VideoBackbone runs it inside ``art.backbone``),
``art.semantics_se`` (top-K semantics + SE), ``art.rssa``, ``art.tracklets_ta`` (tracklets +
tracklet aggregation), ``art.heads`` (both classifier heads) and one per loss: ``art.loss.ce``,
``art.loss.ce_v``, ``art.loss.mtc`` (the three MTC levels), ``art.loss.sema`` (video +
prototype semantic losses). A region's time is its range's inclusive CPU time (the ops it runs,
at any depth), summed over the profiled steps and divided by N; on cuda also the time of the
GPU kernels launched inside it (the CPU columns are then host time: launches and waits; the
CUDA columns say where the GPU's time goes). ``forward: rest`` = step.forward - its named parts
(input checks, the total-loss sum, Python); ``other`` = step - (forward + backward + optimizer
+ bank EMA); the top-level rows and ``other`` add up to the step. Backward runs outside the
forward's ranges (the autograd engine); its split by forward region maps each
``autograd::engine::evaluate_function: <Node>`` event to the forward op that created the node
(same thread and ``sequence_nr``) and that op to its innermost named region; ``AccumulateGrad``
(writing .grad) has no forward op, ``engine: rest`` is what the engine spends outside the
evaluate_function events. The profiler adds a few microseconds per op: compare the profiled
step with the unprofiled one. A Chrome trace per config / backend
(``prof.export_chrome_trace``, open in chrome://tracing or ui.perfetto.dev) goes beside the
table: ``<out>/bench_train_profile_<config>_<backend>_<device>.json``.

Data wait (``--profile`` with the ``tiny`` config, ``--data-steps`` > 0): the demo's training
loop on real clips, with the demo's own model (T = 16, k_region 8, heads 4, temporal shift
0.25: close to, not the same as, the ``tiny`` config above, which keeps the plain-benchmark
settings). The config ``--data-config`` (default configs/binding_tiny.yaml, the demo) with
``data.root`` = ``--profile-data`` (a binding set written by ``art-fast synth --kind binding``;
without it a small one is written to a temporary folder: 6 classes, just enough training clips
for one epoch of the measured steps, so no epoch boundary falls inside), its model
(``art_fast.train.trainer.build_model``), its optimiser (AdamW on the param groups) and the
trainer's DataLoader (``_make_loader``: ``data.num_workers`` workers, ``prefetch_factor``,
persistent workers) and threads (``train.threads``). Each step: wait for the next batch
(``next`` on the loader's iterator), then the trainer's compute (uint8 -> model input, forward,
backward, loss read-back, gradient clipping, optimiser step, zero_grad, bank EMA) on the
``cpu`` backend (``torch`` where cpu is not built; ``auto`` on cuda). Reported after
``--data-warmup`` steps (worker start-up and the first prefetch): data wait and compute per
step (mean, median, max) and the wait's share of the loop, wait / (wait + compute). Then the
compute alone, on the last batch with the loader stopped (up to 10 steps): on a few cores the
workers' decoding competes with the step's threads, which the wait does not show but this
difference does.

Profile results: ``<out>/bench_train_profile.json`` and ``.md``, and the traces.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

import art_fast  # noqa: E402
from art_fast import ART  # noqa: E402
from art_fast.train.config import COMPILE_MODES, OPTIMIZER_IMPLS  # noqa: E402
from art_fast.train.trainer import _compile_step  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # the demo model (configs/synthetic_tiny.yaml): tiny tower at 64 x 64, 8 frames
    "tiny": dict(backbone="tiny", image_size=64, num_frames=8, latent_dim=64, num_queries=2,
                 k_region=16, se_layers=2, rssa_layers=2, batch=8),
    # the paper's setting: ViT-B/16 at 224, 16 frames, d = 256, K = 2, k_region = 16
    "vitb16": dict(backbone="ViT-B-16", image_size=224, num_frames=16, latent_dim=256,
                   num_queries=2, k_region=16, batch=1),
}
PROFILE_REPS = {"tiny": (4, 5), "vitb16": (2, 3)}
"""--profile's default (warm-up steps, profiled steps) per config."""
CLASSES = [f"class {i}" for i in range(48)]


class BareBackbone(nn.Module):
    """The ART backbone alone: vision tower per frame + temporal module + linear head."""

    def __init__(self, art: ART) -> None:
        super().__init__()
        self.backbone, self.head = art.backbone, nn.Linear(art.backbone.embed_dim, art.num_classes)

    def forward(self, video: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.backbone(video)[2]), labels)


def time_steps(step, device: str, reps: int) -> tuple[list[float], int | None]:
    """Run one warm-up step, then ``reps`` timed steps; returns (seconds, CUDA peak bytes)."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    h.time_wall(step, 1, 0, sync)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = h.time_wall(step, 0, reps, sync)
    return times, torch.cuda.max_memory_allocated() if cuda else None


def _setup(cfg: dict[str, Any], args: argparse.Namespace
           ) -> tuple[int, int, int, str, ART, dict[str, torch.Tensor], torch.Tensor,
                      torch.Tensor]:
    """What a config's benchmark starts from: ``(B, T, S, device, model, its initial state,
    video [B, T, 3, S, S], labels [B])``, the model and the batch seeded (0 and 1)."""
    cfg = dict(cfg)
    B = args.batch or cfg.pop("batch")
    cfg.pop("batch", None)
    if args.frames:
        cfg["num_frames"] = args.frames
    T, S = cfg["num_frames"], cfg["image_size"]
    dev = args.device
    torch.manual_seed(0)
    model = ART(CLASSES, pretrained=None, text_cache_dir=args.cache, **cfg).to(dev)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    video = torch.randn(B, T, 3, S, S, generator=g).to(dev)
    labels = torch.randint(0, len(CLASSES), (B,), generator=g).to(dev)
    return B, T, S, dev, model, state, video, labels


def _compiled(module: nn.Module, mode: str) -> Any:
    """``module`` (mode ``off``) or a fresh compilation of it by the trainer's own
    ``train.compile`` path (inductor, static shapes); dynamo's caches are reset first, so no
    graph traced under another backend is reused."""
    if mode != "off":
        torch._dynamo.reset()
    return _compile_step(module, mode, "inductor")


def bench_config(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    return [row for mode in args.compile for impl in args.adamw
            for row in bench_config_mode(name, cfg, args, mode, impl)]


def bench_config_mode(name: str, cfg: dict[str, Any], args: argparse.Namespace,
                      mode: str, impl: str = "fused") -> list[dict]:
    """The rows of one config under one ``--compile`` mode (``off``: eager) and one AdamW
    implementation. Compiled rows carry the first step's time (``compile_s``: tracing + code
    generation + that step)."""
    B, T, S, dev, model, state, video, labels = _setup(cfg, args)
    amp = torch.autocast("cuda", torch.bfloat16) if dev == "cuda" else torch.autocast(
        "cpu", enabled=False)
    rows = []

    def first_step(step) -> float | None:
        if mode == "off":
            return None
        t0 = time.perf_counter()
        step()
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def make_step(module, fn):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4, **OPTIMIZER_IMPLS[impl])

        def step():
            with amp:
                loss = fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step

    bare = BareBackbone(model).to(dev)
    cbare = _compiled(bare, mode)
    bare_step = make_step(bare, lambda: cbare(video, labels))
    compile_s = first_step(bare_step)
    times, peak = time_steps(bare_step, dev, args.reps)
    base = statistics.median(times)
    rows.append(_row(name, "bare backbone", "-", B, T, S, times, peak, None, None, mode,
                     compile_s, impl))
    for backend in args.backends:
        if backend not in art_fast.available_backends():
            continue
        model.load_state_dict(state)
        torch.manual_seed(2)  # the same dropout masks in every backend's first step
        first = {}
        cmodel = _compiled(model, mode)

        def fn(backend=backend, first=first, cmodel=cmodel):
            with art_fast.use_backend(backend):
                loss = cmodel(video, labels).losses["total"]
            if "loss" not in first:
                first["loss"] = float(loss.detach())
            return loss

        inner = make_step(model, fn)

        def step(inner=inner):
            inner()
            model.update_bank()

        compile_s = first_step(step)
        times, peak = time_steps(step, dev, args.reps)
        share = (statistics.median(times) - base) / base
        rows.append(_row(name, "ART", backend, B, T, S, times, peak, first["loss"], share,
                         mode, compile_s, impl))
    return rows


def _row(config, model, backend, B, T, S, times, peak, loss, share, mode="off",
         compile_s=None, impl="fused") -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "config": config, "model": model, "backend": backend, "compile": mode, "adamw": impl,
        "compile_s": compile_s, "batch": B, "frames": T,
        "image_size": S, "median_s": med, "min_s": min(times), "max_s": max(times),
        "ms_per_clip": 1e3 * med / B, "clips_per_s": B / med,
        "peak_mib": None if peak is None else peak / 2**20, "first_loss": loss,
        "head_share": share,
    }


COLUMNS = [
    h.Column("config", "config"),
    h.Column("B x T x S", lambda r: f"{r['batch']}x{r['frames']}x{r['image_size']}"),
    h.Column("model", "model"),
    h.Column("backend", "backend"),
    h.Column("compile", "compile"),
    h.Column("AdamW", "adamw"),
    h.Column("first step s", "compile_s", ".1f", missing=""),
    h.Column("step s (min-max)",
             lambda r: f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})"),
    h.Column("ms/clip", "ms_per_clip", ".1f"),
    h.Column("clips/s", "clips_per_s", ".2f"),
    h.Column("peak MiB", "peak_mib", ".0f"),
    h.Column("first loss", "first_loss", ".5f", missing=""),
    h.Column("head share", lambda r: None if r["head_share"] is None
             else f"{100 * r['head_share']:+.1f}%", missing=""),
]


def markdown(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown document: settings line, the table, what a step is."""
    settings = (
        f"{head['date_utc']}; {head['cores']} cores, {head['threads']} threads; torch "
        f"{head['torch']}, open_clip {head['open_clip']}, python {head['python']}; art_fast "
        f"{head['art_fast']} @ {head['git_commit']}; {head['reps']} timed steps after one "
        f"warm-up (median); other CPU use before the run {head['other_cpu_busy']}; "
        f"autocast {head['autocast']}")
    return h.markdown(
        f"art_fast training-step benchmark: {head['device_name']}", [settings], COLUMNS, rows,
        ["head share = (ART step - bare backbone step) / bare backbone step; a step = "
         "forward + backward + AdamW (+ bank EMA for ART)."])


# ------------------------------------------------------------------------------------ --profile

FORWARD_REGIONS = ("art.backbone", "art.temporal", "art.semantics_se", "art.rssa",
                   "art.tracklets_ta", "art.heads", "art.loss.ce", "art.loss.ce_v",
                   "art.loss.mtc", "art.loss.sema")
"""The model's named regions inside ``step.forward``, in table order (art.temporal runs inside
art.backbone: the table shows art.backbone without it)."""
STEP_REGIONS = ("step.forward", "step.backward", "step.optimizer", "step.bank_ema")
"""The top-level parts of a step; with ``other`` they add up to ``step``."""
ACCUMULATE_GRAD = "torch::autograd::AccumulateGrad"
EVALUATE = "autograd::engine::evaluate_function: "


@contextlib.contextmanager
def named_module(module: nn.Module, name: str) -> Iterator[None]:
    """Run every forward of ``module`` inside ``record_function(name)`` (hooks, removed on
    exit). For a submodule the model's own code does not name."""
    open_ranges: list[record_function] = []

    def pre(_m: nn.Module, _args: tuple) -> None:
        rf = record_function(name)
        rf.__enter__()
        open_ranges.append(rf)

    def post(_m: nn.Module, _args: tuple, _out: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for hnd in handles:
            hnd.remove()
        while open_ranges:  # a forward that raised
            open_ranges.pop().__exit__(None, None, None)


def _cpu_events(events: Iterable[Any]) -> list[Any]:
    return [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]


def _region(event: Any, names: frozenset[str]) -> str | None:
    """The innermost range named in ``names`` that holds ``event`` (itself included)."""
    while event is not None:
        if event.name in names:
            return event.name
        event = event.cpu_parent
    return None


def _us(events: Iterable[Any], device: bool) -> float:
    return float(sum(e.device_time_total if device else e.cpu_time_total for e in events))


def region_times(events: Iterable[Any], steps: int, cuda: bool) -> dict[str, Any]:
    """Per-step times of the named regions in the profiler's ``events``.

    Returns ``{"cpu": {name: ms}, "device": {name: ms} (cuda only), "backward_split": {"cpu":
    {label: ms}, "device": ...}}``; names: ``step``, STEP_REGIONS, FORWARD_REGIONS, and
    ``art.backbone`` is exclusive of ``art.temporal``. ``backward_split`` labels:
    ``backward of <region>``, ``backward of forward: rest``, ``AccumulateGrad`` and
    ``engine: rest`` (step.backward - the evaluate_function events, CPU only).
    """
    evs = _cpu_events(events)
    by_name: dict[str, list[Any]] = {}
    for e in evs:
        by_name.setdefault(e.name, []).append(e)
    kinds = ["cpu", "device"] if cuda else ["cpu"]
    out: dict[str, Any] = {k: {} for k in kinds}
    for kind in kinds:
        for name in ("step", *STEP_REGIONS, *FORWARD_REGIONS):
            out[kind][name] = _us(by_name.get(name, ()), kind == "device") / 1e3 / steps
        out[kind]["art.backbone"] -= out[kind]["art.temporal"]

    # backward: each evaluate_function event -> the forward op that made its node -> region
    fwd_names, in_forward = frozenset(FORWARD_REGIONS), frozenset({"step.forward"})
    owner: dict[tuple[int, int], tuple[float, str]] = {}  # (thread, seq) -> (start, region)
    for e in evs:
        if e.sequence_nr < 0 or e.name.startswith(EVALUATE) or \
                _region(e, in_forward) is None:
            continue
        key, start = (e.thread, e.sequence_nr), e.time_range.start
        if key not in owner or start >= owner[key][0]:  # the last op with the number made
            owner[key] = (start, _region(e, fwd_names) or "forward: rest")  # the node
    evaluate = [e for e in evs if e.name.startswith(EVALUATE)
                and not any(p.name.startswith(EVALUATE) for p in _parents(e))]
    split: dict[str, Any] = {k: {} for k in kinds}
    for e in evaluate:
        if e.name.endswith(ACCUMULATE_GRAD):
            label = "AccumulateGrad"
        else:
            found = owner.get((e.fwd_thread, e.sequence_nr))
            label = f"backward of {found[1]}" if found else "backward of unmatched nodes"
        for kind in kinds:
            split[kind][label] = split[kind].get(label, 0.0) + _us([e], kind == "device") / 1e3
    for kind in kinds:
        split[kind] = {k: v / steps for k, v in split[kind].items()}
    split["cpu"]["engine: rest"] = out["cpu"]["step.backward"] - sum(split["cpu"].values())
    if cuda:  # the engine runs CUDA backward on its device thread, outside step.backward
        out["device"]["step.backward"] = sum(split["device"].values())
        top = [e for e in evs if e.cpu_parent is None]
        out["device"]["step"] = _us(top, True) / 1e3 / steps
    out["backward_split"] = split
    return out


def _parents(event: Any) -> Iterator[Any]:
    event = event.cpu_parent
    while event is not None:
        yield event
        event = event.cpu_parent


def profile_rows(times: dict[str, Any], cuda: bool) -> list[dict[str, Any]]:
    """The table of one profile: one row per region (``level`` 0: the parts of the step, which
    with ``other`` add up to ``step``; 1: parts of the row above), ``ms`` and ``share`` of the
    step (and ``device_ms`` / ``device_share`` on cuda)."""
    kinds = ["cpu", "device"] if cuda else ["cpu"]
    rows: list[dict[str, Any]] = []

    def add(region: str, level: int, values: dict[str, float]) -> None:
        row: dict[str, Any] = {"region": region, "level": level}
        for kind in kinds:
            ms, step = values[kind], times[kind]["step"]
            pre = "" if kind == "cpu" else "device_"
            row[pre + "ms"], row[pre + "share"] = ms, ms / step if step > 0 else 0.0
        rows.append(row)

    def value(name: str) -> dict[str, float]:
        return {k: times[k][name] for k in kinds}

    add("step.forward", 0, value("step.forward"))
    for name in FORWARD_REGIONS:
        add(name, 1, value(name))
    add("forward: rest", 1, {k: times[k]["step.forward"] - sum(
        times[k][n] for n in FORWARD_REGIONS) for k in kinds})
    add("step.backward", 0, value("step.backward"))
    split = times["backward_split"]
    order = [f"backward of {n}" for n in (*FORWARD_REGIONS, "forward: rest")] + [
        "backward of unmatched nodes", "AccumulateGrad", "engine: rest"]
    for label in order:
        if label in split["cpu"]:
            add(label, 1, {k: split[k].get(label, 0.0) for k in kinds})
    for name in STEP_REGIONS[2:]:
        add(name, 0, value(name))
    add("other", 0, {k: times[k]["step"] - sum(times[k][n] for n in STEP_REGIONS)
                     for k in kinds})
    add("step", -1, value("step"))
    return rows


def profile_config(name: str, cfg: dict[str, Any], args: argparse.Namespace
                   ) -> list[dict[str, Any]]:
    """Profile one config on every usable backend of ``args.backends`` (see the module
    docstring); writes a Chrome trace per backend to ``args.out_dir``."""
    B, T, S, dev, model, state, video, labels = _setup(cfg, args)
    cuda = dev == "cuda"
    amp = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n_warm, n_steps = PROFILE_REPS.get(name, (2, 3))
    n_warm = n_warm if args.profile_warmup is None else args.profile_warmup
    n_steps = n_steps if args.profile_steps is None else args.profile_steps
    results = []
    for backend in args.backends:
        if backend not in art_fast.available_backends():
            continue
        model.load_state_dict(state)
        torch.manual_seed(2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **OPTIMIZER_IMPLS["fused"])

        def step(opt: torch.optim.Optimizer = opt, backend: str = backend) -> None:
            with record_function("step"), art_fast.use_backend(backend):
                with record_function("step.forward"), amp:
                    loss = model(video, labels).losses["total"]
                with record_function("step.optimizer"):
                    opt.zero_grad(set_to_none=True)
                with record_function("step.backward"):
                    loss.backward()
                with record_function("step.optimizer"):
                    opt.step()
                with record_function("step.bank_ema"):
                    model.update_bank()
                if cuda:
                    torch.cuda.synchronize()

        temporal = getattr(model.backbone, "temporal", None)
        hook = (named_module(temporal, "art.temporal") if temporal is not None
                else contextlib.nullcontext())
        with hook:
            warm = h.time_wall(step, 0, n_warm, None)
            with profile(activities=activities) as prof:
                for _ in range(n_steps):
                    step()
        trace = args.out_dir / f"bench_train_profile_{name}_{backend}_{dev}.json"
        prof.export_chrome_trace(str(trace))
        times = region_times(prof.events(), n_steps, cuda)
        results.append({
            "config": name, "backend": backend, "device": dev, "batch": B, "frames": T,
            "image_size": S, "warmup_steps": n_warm, "profiled_steps": n_steps,
            "warmup_s": warm,
            "unprofiled_step_ms": 1e3 * statistics.median(warm[1:] or warm) if warm else None,
            "step_ms": times["cpu"]["step"],
            "device_step_ms": times["device"]["step"] if cuda else None,
            "trace": trace.name, "trace_bytes": trace.stat().st_size,
            "rows": profile_rows(times, cuda),
        })
        print(profile_markdown_table(results[-1]), flush=True)
    return results


def _generate_binding(root: Path, train_clips: int) -> dict[str, Any]:
    """A binding set (6 classes, 16 frames of 64 x 64, the demo's) with at least
    ``train_clips`` training clips, in ``root``."""
    from art_fast.data.binding import make_binding

    classes, test_fraction = 6, 0.25
    per_class = max(2, math.ceil(train_clips / classes / (1 - test_fraction)) + 1)
    return make_binding(root, classes=classes, videos_per_class=per_class, frames=16, size=64,
                        test_fraction=test_fraction, seed=0, workers=h.core_count())


def data_wait(args: argparse.Namespace) -> dict[str, Any]:
    """The demo's training loop on real clips: data wait vs compute per step (see the module
    docstring)."""
    from art_fast.data.transforms import to_model_input
    from art_fast.train.config import build_dataset, load_config
    from art_fast.train.distributed import ShardedBatchSampler
    from art_fast.train.trainer import _make_loader, build_model

    steps, warm = args.data_steps, args.data_warmup
    device = torch.device(args.device)
    backend = "auto" if device.type != "cpu" else (
        "cpu" if "cpu" in art_fast.available_backends() else "torch")
    with tempfile.TemporaryDirectory(prefix="art_fast_profile_data_") as tmp:
        generated = None
        root = args.profile_data
        overrides = [f"output_dir={tmp}/run"]
        if args.cache:
            overrides.append(f"model.text_cache_dir={args.cache}")
        batch = load_config(args.data_config, overrides).train.batch_size
        if root is None:
            root = Path(tmp) / "binding"
            t0 = time.perf_counter()
            _generate_binding(root, batch * (steps + warm))
            generated = time.perf_counter() - t0
        cfg = load_config(args.data_config, [*overrides, f"data.root={root}",
                                             f"train.backend={backend}"])
        t_cfg = cfg.train
        dataset = build_dataset(cfg, None, train=True)
        threads = torch.get_num_threads()
        if t_cfg.threads and not args.threads:
            torch.set_num_threads(t_cfg.threads)
        try:
            torch.manual_seed(t_cfg.seed)
            model = build_model(cfg, dataset.classes).to(device).train()
            opt = torch.optim.AdamW(model.param_groups(t_cfg.lr, t_cfg.weight_decay),
                                    lr=t_cfg.lr, betas=tuple(t_cfg.betas),
                                    weight_decay=t_cfg.weight_decay,
                                    **OPTIMIZER_IMPLS[t_cfg.optimizer_impl])
            sampler = ShardedBatchSampler(len(dataset), t_cfg.batch_size, train=True,
                                          seed=t_cfg.seed)
            loader = _make_loader(dataset, sampler, cfg, device)
            waits, computes, epochs = [], [], 0
            sampler.set_epoch(epochs, 0)
            it = iter(loader)

            def compute(video: torch.Tensor, labels: torch.Tensor) -> None:
                x = to_model_input(video, device)
                y = labels.to(device, torch.int64, non_blocking=True)
                out = model(x, y)
                out.losses["total"].backward()
                torch.stack([v.detach().float() for v in out.losses.values()]).tolist()
                if t_cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)
                model.update_bank()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            with art_fast.use_backend(backend):
                for _ in range(warm + steps):
                    t0 = time.perf_counter()
                    try:
                        video, labels = next(it)
                    except StopIteration:  # a set too small for the steps: next epoch
                        epochs += 1
                        sampler.set_epoch(epochs, 0)
                        it = iter(loader)
                        video, labels = next(it)
                    t1 = time.perf_counter()
                    compute(video, labels)
                    waits.append(t1 - t0)
                    computes.append(time.perf_counter() - t1)
                del it, loader  # stops the workers
                gc.collect()
                alone = h.time_wall(lambda: compute(video, labels), 0, min(steps, 10))
        finally:
            torch.set_num_threads(threads)
    w, c = waits[warm:], computes[warm:]
    return {
        "config": _shown(args.data_config), "data_root": None if generated is not None
        else _shown(root), "generated_s": generated, "train_clips": len(dataset),
        "classes": len(dataset.classes), "batch": t_cfg.batch_size,
        "frames": cfg.data.num_frames, "image_size": cfg.data.image_size,
        "num_workers": cfg.data.num_workers, "prefetch_factor": cfg.data.prefetch_factor,
        "threads": t_cfg.threads or threads, "backend": backend, "warmup_steps": warm,
        "steps": len(w), "epochs_crossed": epochs,
        "wait_ms": _stats(w), "compute_ms": _stats(c), "compute_alone_ms": _stats(alone),
        "wait_share": sum(w) / (sum(w) + sum(c)) if w else None,
        "warmup_wait_ms": [1e3 * x for x in waits[:warm]],
    }


def _shown(path: Path | str) -> str:
    """``path`` relative to the repository root when inside it (results name no local dirs)."""
    p = Path(path).resolve()
    return str(p.relative_to(h.ROOT)) if p.is_relative_to(h.ROOT) else str(path)


def _stats(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"mean": None, "median": None, "max": None}
    return {"mean": 1e3 * statistics.fmean(seconds), "median": 1e3 * statistics.median(seconds),
            "max": 1e3 * max(seconds)}


PROFILE_COLUMNS = [
    h.Column("region", lambda r: ("**step**" if r["level"] < 0 else
                                  "&nbsp;&nbsp;&nbsp;" * r["level"] + r["region"])),
    h.Column("ms / step", "ms", ".2f"),
    h.Column("share", lambda r: f"{100 * r['share']:.1f}%"),
]
DEVICE_COLUMNS = [
    h.Column("CUDA ms / step", "device_ms", ".2f"),
    h.Column("CUDA share", lambda r: f"{100 * r['device_share']:.1f}%"),
]


def module_totals(res: dict[str, Any]) -> list[tuple[str, float]]:
    """Forward + backward ms per step of each forward region of one profile, and the
    optimiser, largest first."""
    ms = {r["region"]: r["ms"] for r in res["rows"]}
    totals = {n: ms[n] + ms.get(f"backward of {n}", 0.0) for n in FORWARD_REGIONS}
    totals["step.optimizer"] = ms["step.optimizer"]
    return sorted(totals.items(), key=lambda kv: -kv[1])


def _module_line(res: dict[str, Any]) -> str:
    step = res["step_ms"]
    big = [(n, v) for n, v in module_totals(res) if v >= 0.01 * step]
    rest = step - sum(v for _, v in big)
    parts = [f"{n.removeprefix('art.')} {100 * v / step:.1f}%" for n, v in big]
    return (f"forward + backward by module (>= 1% of the step): {', '.join(parts)}; the rest "
            f"(smaller modules and losses, AccumulateGrad, engine, bank EMA, other) "
            f"{100 * rest / step:.1f}%")


def profile_markdown_table(res: dict[str, Any]) -> str:
    """One profile as a Markdown heading, a settings line, its table and a line of module
    totals (forward + backward)."""
    cols = PROFILE_COLUMNS + (DEVICE_COLUMNS if res["device_step_ms"] is not None else [])
    unprof = h.fmt(res["unprofiled_step_ms"], ".1f")
    return h.document(
        f"## {res['config']}, backend {res['backend']} ({res['device']}), B x T x S = "
        f"{res['batch']} x {res['frames']} x {res['image_size']}",
        f"{res['profiled_steps']} profiled steps after {res['warmup_steps']} warm-up; "
        f"profiled step {res['step_ms']:.1f} ms (CPU), unprofiled (median of the warm-up "
        f"steps after the first) "
        f"{unprof} ms; trace `{res['trace']}` ({res['trace_bytes'] / 2**20:.1f} MiB)",
        h.table(cols, res["rows"]), _module_line(res)).rstrip("\n")


def data_wait_markdown(d: dict[str, Any]) -> str:
    """The data-wait measurement as a Markdown section."""
    src = (f"`{d['data_root']}`" if d["data_root"] else
           f"a binding set written for the run ({d['train_clips']} training clips, "
           f"{h.fmt(d['generated_s'], '.1f')} s)")
    rows = [{"what": "data wait (next batch)", **d["wait_ms"]},
            {"what": "compute (to input, fwd, bwd, clip, AdamW, bank EMA)",
             **d["compute_ms"]},
            {"what": "compute alone (last batch again, loader stopped)",
             **d["compute_alone_ms"]}]
    cols = [h.Column("per step", "what"), h.Column("mean ms", "mean", ".1f"),
            h.Column("median ms", "median", ".1f"), h.Column("max ms", "max", ".1f")]
    return h.document(
        f"## data wait: the demo's loop on real clips ({d['config']})",
        f"{src}; B x T x S = {d['batch']} x {d['frames']} x {d['image_size']}, "
        f"{d['num_workers']} DataLoader worker(s), prefetch {d['prefetch_factor']}, "
        f"{d['threads']} threads, backend {d['backend']}; {d['steps']} steps after "
        f"{d['warmup_steps']} warm-up (their waits: "
        f"{', '.join(f'{x:.0f}' for x in d['warmup_wait_ms'])} ms); epochs crossed: "
        f"{d['epochs_crossed']}",
        h.table(cols, rows),
        f"data wait share of the loop: **{100 * (d['wait_share'] or 0):.1f}%** "
        f"(wait / (wait + compute))").rstrip("\n")


def profile_markdown(head: dict[str, Any], results: list[dict[str, Any]],
                     data: dict[str, Any] | None) -> str:
    """The --profile results as a Markdown document."""
    settings = (
        f"{head['date_utc']}; {head['cores']} cores, {head['threads']} threads; torch "
        f"{head['torch']}, open_clip {head['open_clip']}, python {head['python']}; art_fast "
        f"{head['art_fast']} @ {head['git_commit']}; other CPU use before the run "
        f"{head['other_cpu_busy']}; autocast {head['autocast']}; command: `{head['command']}`")
    note = (
        "Regions: torch.profiler record_function ranges, inclusive CPU time per step (mean "
        "over the profiled steps). Indented rows are parts of the row above; the unindented "
        "rows and `other` add up to **step**. art.backbone is the vision tower without "
        "art.temporal. The backward split maps each autograd node to the forward region "
        "whose op created it. See the docstring of benchmarks/bench_train.py.")
    blocks: list[str] = [f"# art_fast training-step profile: {head['device_name']}",
                         settings, note]
    blocks += [profile_markdown_table(r) for r in results]
    if data is not None:
        blocks.append(data_wait_markdown(data))
    return h.document(*blocks)


def run_profile(args: argparse.Namespace, busy: Any) -> int:
    """``--profile``: profile every config and backend asked, the data wait for tiny."""
    args.out_dir = Path(args.out or h.results_dir(args.device))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.configs:
        results += profile_config(name, CONFIGS[name], args)
    data = None
    if "tiny" in args.configs and args.data_steps > 0:
        data = data_wait(args)
        print(data_wait_markdown(data), flush=True)
    head = h.environment(args.device, busy, packages={"open_clip": "open_clip_torch"})
    head.update(autocast="bf16" if args.device == "cuda" else "off (float32)",
                command="python benchmarks/bench_train.py " + " ".join(args.argv))
    md = profile_markdown(head, results, data)
    h.write_results(args.out_dir, "bench_train_profile",
                    {"header": head, "profiles": results, "data_wait": data}, md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--backends", nargs="+", default=["torch", "cpu", "triton", "cuda"])
    p.add_argument("--batch", type=int, default=0, help="clips per step (default per config)")
    p.add_argument("--frames", type=int, default=0, help="frames per clip (default per config)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--adamw", nargs="+", default=["fused"], choices=list(OPTIMIZER_IMPLS),
                   help="AdamW implementations to compare (train.optimizer_impl; fused is the "
                        "trainer's default)")
    p.add_argument("--compile", nargs="+", default=["off"],
                   choices=list(COMPILE_MODES),
                   help="torch.compile modes to compare (off: eager); each compiled row also "
                        "reports its first step (the compilation)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--cache", default=None, help="text-bank cache folder")
    p.add_argument("--out", default=None)
    p.add_argument("--profile", action="store_true",
                   help="where a step's time goes, per region (torch.profiler; see above)")
    p.add_argument("--profile-warmup", type=int, default=None,
                   help="warm-up steps (--profile; default per config: PROFILE_REPS)")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="profiled steps (--profile; default per config: PROFILE_REPS)")
    p.add_argument("--profile-data", type=Path, default=None, metavar="DIR",
                   help="a binding set for the data wait (default: one written to a temp dir)")
    p.add_argument("--data-config", type=Path,
                   default=h.ROOT / "configs" / "binding_tiny.yaml",
                   help="the config of the data-wait loop (default: the demo's)")
    p.add_argument("--data-steps", type=int, default=30,
                   help="measured steps of the data-wait loop (0: no data wait)")
    p.add_argument("--data-warmup", type=int, default=3,
                   help="data-wait loop steps not measured (worker start, first prefetch)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = h.cpu_busy()
    if args.profile:
        return run_profile(args, busy)
    rows = []
    for name in args.configs:
        rows += bench_config(name, CONFIGS[name], args)
        print(h.table(COLUMNS, rows)[-1], flush=True)
    head = h.environment(args.device, busy, packages={"open_clip": "open_clip_torch"})
    head.update(reps=args.reps,
                autocast="bf16" if args.device == "cuda" else "off (float32)")
    md = markdown(head, rows)
    h.write_results(args.out or h.results_dir(args.device), "bench_train",
                    {"header": head, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
