#!/usr/bin/env python
"""Cost of the video towers beside the per-frame ViT: parameters, forward GFLOPs and CPU step
times, for the backbone alone and for the whole ART model.

Rows, at every ``--frames`` T:

==========================  =======================================  =========================
row                         ``model.backbone`` / ``temporal_shift``  steps T'
==========================  =======================================  =========================
ViT-B/16 per-frame          ``ViT-B-16`` / 0                         T
ViT-B/16 + shift 0.25       ``ViT-B-16`` / 0.25 (TSM)                T
UniFormerV2-B/16            ``uniformerv2-b16`` / 0                  ceil(T / 2)
==========================  =======================================  =========================

at 224 x 224 with the model section of ``configs/diving48.yaml`` (K, d, k_region, SE / RSSA
layers, heads, ...: the real model); with ``--tiny`` also the same three rows on the tiny tower
(``tiny``, ``tiny`` + shift 0.25, ``uniformerv2-tiny``) at 64 x 64 with the model section of
``configs/binding_tiny.yaml`` (the demo's model). Every model is built offline with random
weights (``pretrained=None``; the text bank is encoded by the random text tower into a
temporary cache folder), for 48 classes (Diving48).

Columns:

* parameters of the backbone (``ART.backbone``: the vision tower, plus the temporal module of
  a per-frame tower or the global extractor of UniFormerV2) and of the whole ART model;
* GFLOPs per clip of the forward (batch 1, eval mode, no labels), of the backbone alone and of
  ART: ``torch.utils.flop_counter.FlopCounterMode``, GFLOPs = flops / 1e9, a multiply-add
  counts 2 FLOPs. Counted: matmuls, convolutions and attention (the CPU fused SDPA kernel is
  given the formula of the other SDPA kernels, and ``nn.MultiheadAttention``'s inference fast
  path is turned off while counting, as neither has a formula of its own); art_fast's ops
  run their torch references while counting. Not counted: norms, activations, softmax and other
  elementwise work;
* CPU time of one training step of ART (batch 1: forward with labels, backward of the total
  loss, AdamW step over ``ART.param_groups``, the bank's EMA step), the eval forward of ART
  (``torch.no_grad``, no labels) and the eval forward of the backbone alone: median of
  ``--steps`` timed calls after ``--warmup`` untimed ones, ``torch.set_num_threads(--threads)``,
  art_fast's default backend (``auto``);
* ratios to the per-frame row of the same tower at the same T (ART GFLOPs, training step, ART
  eval forward).

Output: ``<out>/backbone_cost.json`` and ``<out>/backbone_cost.md`` (the table, ready for the
README) with the device (CPU model), cores, threads, torch / open_clip versions, the art_fast
commit, the date and the exact command. Wall times are only comparable on a quiet machine.

Usage::

    python benchmarks/backbone_cost.py [--frames 8 16] [--tiny] [--steps 3] [--warmup 1]
        [--threads N] [--out benchmarks/results/backbone_cost]
    python benchmarks/backbone_cost.py --quick --out /tmp/cost   # smoke: tiny rows, T = 8, 1 step
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

import art_fast  # noqa: E402
from art_fast import ART  # noqa: E402
from art_fast.model.art import PER_FRAME_OPTIONS  # noqa: E402
from art_fast.model.uniformerv2 import is_uniformerv2  # noqa: E402
from art_fast.train.config import load_config  # noqa: E402

ROOT = h.ROOT
NUM_CLASSES = 48  # Diving48
CLASSES = [f"class {i}" for i in range(NUM_CLASSES)]

# (row name, model.backbone, model.temporal_shift); the first row of a family is the baseline
FAMILIES: dict[str, dict[str, Any]] = {
    "vitb16": {
        "image_size": 224, "config": "configs/diving48.yaml",
        "rows": [("ViT-B/16 per-frame", "ViT-B-16", 0.0),
                 ("ViT-B/16 + shift 0.25", "ViT-B-16", 0.25),
                 ("UniFormerV2-B/16", "uniformerv2-b16", 0.0)],
    },
    "tiny": {
        "image_size": 64, "config": "configs/binding_tiny.yaml",
        "rows": [("tiny per-frame", "tiny", 0.0),
                 ("tiny + shift 0.25", "tiny", 0.25),
                 ("UniFormerV2-tiny", "uniformerv2-tiny", 0.0)],
    },
}

FLOP_CONVENTION = ("GFLOPs = flops / 1e9 from torch.utils.flop_counter.FlopCounterMode, one "
                   "multiply-add = 2 FLOPs; matmuls, convolutions and attention only (norms, "
                   "activations, softmax and other elementwise ops are not counted); forward of "
                   "one clip (batch 1, eval mode, no labels)")


# --------------------------------------------------------------------------------------------
# FLOP counting.
# --------------------------------------------------------------------------------------------


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (the CPU fused SDPA, which
    FlopCounterMode has no formula for): the formula of the CUDA SDPA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    ops = {}
    aten = torch.ops.aten
    for name in ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            ops[op] = _sdpa_cpu_flop
    return ops


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    """Turn ``nn.MultiheadAttention``'s inference fast path (``_native_multi_head_attention``,
    no FLOP formula) on or off inside the block."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:  # pragma: no cover - torch < 2.1
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as FlopCounterMode counts them (a multiply-add = 2), with the CPU
    SDPA kernel counted and MultiheadAttention's fast path off. Runs ``fn`` once, as given
    (a backward inside ``fn`` is counted too)."""
    with _mha_fastpath(False), FlopCounterMode(display=False,
                                                custom_mapping=_custom_flop_formulas()) as c:
        fn()
    return int(c.get_total_flops())


def forward_flops(module: nn.Module, *inputs: Any) -> int:
    """FLOPs of one forward of ``module`` on ``inputs``, art_fast's ops on their torch
    references (so that their matmuls are seen). Autograd stays on (the graph is dropped
    unused): FlopCounterMode's module tracker fails under ``no_grad`` on a view of a
    parameter (it requires grad there but has no grad_fn)."""

    def run() -> None:
        with torch.enable_grad(), art_fast.use_backend("torch"):
            module(*inputs)

    return count_flops(run)


# --------------------------------------------------------------------------------------------
# Models and timing.
# --------------------------------------------------------------------------------------------


def model_kwargs(config: str) -> dict[str, Any]:
    """ART's keyword arguments from a config's model section (backbone, pretrained, T and size
    are set per row)."""
    kw = load_config(ROOT / config).model.art_kwargs()
    for k in ("backbone", "pretrained", "temporal_shift", "text_cache_dir", "text_pretrained"):
        kw.pop(k, None)
    kw["grad_checkpointing"] = False
    return kw


def build(backbone: str, shift: float, T: int, size: int, kw: dict[str, Any],
          cache: str) -> ART:
    if is_uniformerv2(backbone):  # the config's per-frame tower options do not apply
        kw = {k: v for k, v in kw.items() if k not in PER_FRAME_OPTIONS}
    torch.manual_seed(0)
    return ART(CLASSES, backbone=backbone, pretrained=None, num_frames=T, image_size=size,
               temporal_shift=shift, text_cache_dir=cache, **kw)


def measure(name: str, family: str, backbone: str, shift: float, T: int, size: int,
            kw: dict[str, Any], args: argparse.Namespace, cache: str) -> dict[str, Any]:
    t_build = time.perf_counter()
    model = build(backbone, shift, T, size, kw, cache)
    build_s = time.perf_counter() - t_build
    g = torch.Generator().manual_seed(1)
    video = torch.randn(1, T, 3, size, size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (1,), generator=g)

    model.eval()
    flops_backbone = forward_flops(model.backbone, video)
    flops_art = forward_flops(model, video)

    model.train()
    opt = torch.optim.AdamW(model.param_groups(1e-4, 0.05))

    def train_step() -> None:
        loss = model(video, labels).losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_bank()

    train = h.time_wall(train_step, args.warmup, args.steps)
    opt.zero_grad(set_to_none=True)
    opt.state.clear()  # the AdamW moments: two more copies of the weights
    model.eval()

    def eval_art() -> None:
        with torch.no_grad():
            model(video)

    def eval_backbone() -> None:
        with torch.no_grad():
            model.backbone(video)

    ev = h.time_wall(eval_art, args.warmup, args.steps)
    ev_bb = h.time_wall(eval_backbone, args.warmup, args.steps)
    row = {
        "row": name, "family": family, "backbone": backbone, "temporal_shift": shift,
        "frames": T, "steps": int(model.num_steps), "image_size": size,
        "params_backbone": sum(p.numel() for p in model.backbone.parameters()),
        "params_art": sum(p.numel() for p in model.parameters()),
        "gflops_backbone": flops_backbone / 1e9, "gflops_art": flops_art / 1e9,
        "train_step_s": statistics.median(train), "train_step_all_s": train,
        "eval_art_s": statistics.median(ev), "eval_art_all_s": ev,
        "eval_backbone_s": statistics.median(ev_bb), "eval_backbone_all_s": ev_bb,
        "build_s": build_s,
    }
    return row  # the model goes with this frame (the caller collects)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the per-frame row (the family's first) at the same T."""
    base: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        b = base.setdefault((r["family"], r["frames"]), r)
        r["x_gflops_art"] = r["gflops_art"] / b["gflops_art"]
        r["x_train_step"] = r["train_step_s"] / b["train_step_s"]
        r["x_eval_art"] = r["eval_art_s"] / b["eval_art_s"]


# --------------------------------------------------------------------------------------------
# Environment header and output.
# --------------------------------------------------------------------------------------------


def header(args: argparse.Namespace, argv: list[str], busy: float | None) -> dict[str, Any]:
    """The environment (:func:`_harness.environment`) with the short commit, the command and
    the run's settings."""
    head = h.environment("cpu", busy, packages={"open_clip": "open_clip_torch"})
    commit = h.git_commit(short=True)
    head.update({
        "art_fast_commit": commit.removesuffix("-dirty") if commit else "unknown",
        "worktree_dirty": commit.endswith("-dirty") if commit else None,
        "art_fast_backend": art_fast.get_backend(),
        "command": "python benchmarks/backbone_cost.py" + (" " + shlex.join(argv) if argv else ""),
        "quick": args.quick, "frames": args.frames, "steps": args.steps, "warmup": args.warmup,
        "batch": 1, "classes": NUM_CLASSES, "weights": "random init (pretrained=None)",
        "model_configs": {f: FAMILIES[f]["config"] for f in _families(args)},
        "flops": FLOP_CONVENTION,
    })
    return head


def _mf(x: float) -> str:
    return f"{x / 1e6:.2f}"


COLUMNS = [
    h.Column("tower", lambda r: f"{r['row']} ({r['image_size']} px)"),
    h.Column("T", "frames"),
    h.Column("T'", "steps"),
    h.Column("params M backbone / ART",
             lambda r: f"{_mf(r['params_backbone'])} / {_mf(r['params_art'])}"),
    h.Column("GFLOPs backbone", "gflops_backbone", ".2f"),
    h.Column("GFLOPs ART", "gflops_art", ".2f"),
    h.Column("train step s", "train_step_s", ".3f"),
    h.Column("eval fwd s ART", "eval_art_s", ".3f"),
    h.Column("eval fwd s backbone", "eval_backbone_s", ".3f"),
    h.Column("x GFLOPs ART", "x_gflops_art", ".2f"),
    h.Column("x train", "x_train_step", ".2f"),
    h.Column("x eval", "x_eval_art", ".2f"),
]


def markdown(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The table, ready for the README: settings, command, table, conventions."""
    dirty = " (modified work tree)" if head["worktree_dirty"] else ""
    settings = (
        f"{head['date_utc']}; {head['cores']} cores, {head['threads']} threads; torch "
        f"{head['torch']}, open_clip {head['open_clip']}, python {head['python']}; art_fast "
        f"{head['art_fast']} @ {head['art_fast_commit']}{dirty}; backend "
        f"{head['art_fast_backend']}; other CPU use before the run {head['other_cpu_busy']}.")
    cfgs = ", ".join(f"`{c}`" for c in head["model_configs"].values())
    notes = [
        f"- GFLOPs: {head['flops']}. art_fast's ops are counted on their torch references.",
        f"- Times: CPU, batch 1, median of {head['steps']} timed calls after {head['warmup']} "
        "warm-up(s). Train step = ART forward with labels + backward of the total loss + AdamW "
        "(ART.param_groups) + bank EMA; eval fwd = forward under torch.no_grad without labels.",
        f"- Models: random init (pretrained=None), {head['classes']} classes; ART settings from "
        f"the model section of {cfgs}. T' = tracklet steps (UniFormerV2 halves time).",
        "- x columns: ratio to the per-frame row of the same tower at the same T.",
    ]
    return h.markdown(
        f"Backbone cost: per-frame ViT vs UniFormerV2 ({head['device_name']})",
        [settings, f"Command: `{head['command']}`"], COLUMNS, rows, [notes])


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def _families(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return ["tiny"]
    return ["vitb16"] + (["tiny"] if args.tiny else [])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16], help="T values")
    p.add_argument("--tiny", action="store_true", help="also the tiny rows at 64 px")
    p.add_argument("--steps", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--out", default="benchmarks/results/backbone_cost")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: tiny rows only, T = 8, 1 timed step")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.steps = [8], 1
    if any(t < 1 for t in args.frames) or args.steps < 1 or args.warmup < 0:
        p.error("--frames and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads or h.core_count())
    busy = h.cpu_busy()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backbone_cost_text_") as cache:
        for family in _families(args):
            spec = FAMILIES[family]
            kw = model_kwargs(spec["config"])
            for T in args.frames:
                for name, backbone, shift in spec["rows"]:
                    r = measure(name, family, backbone, shift, T, spec["image_size"], kw, args,
                                cache)
                    rows.append(r)
                    gc.collect()
                    print(f"{name} T={T}: params {_mf(r['params_backbone'])}M / "
                          f"{_mf(r['params_art'])}M, GFLOPs {r['gflops_backbone']:.2f} / "
                          f"{r['gflops_art']:.2f}, train {r['train_step_s']:.3f} s, eval "
                          f"{r['eval_art_s']:.3f} s ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
    add_ratios(rows)
    head = header(args, argv, busy)
    head["wall_s"] = round(time.perf_counter() - t0, 1)
    md = markdown(head, rows)
    h.write_results(args.out, "backbone_cost", {"header": head, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
