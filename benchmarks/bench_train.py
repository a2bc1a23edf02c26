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
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

import art_fast  # noqa: E402
from art_fast import ART  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # the demo model (configs/synthetic_tiny.yaml): tiny tower at 64 x 64, 8 frames
    "tiny": dict(backbone="tiny", image_size=64, num_frames=8, latent_dim=64, num_queries=2,
                 k_region=16, se_layers=2, rssa_layers=2, batch=8),
    # the paper's setting: ViT-B/16 at 224, 16 frames, d = 256, K = 2, k_region = 16
    "vitb16": dict(backbone="ViT-B-16", image_size=224, num_frames=16, latent_dim=256,
                   num_queries=2, k_region=16, batch=1),
}
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


def bench_config(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    cfg = dict(cfg)
    B = args.batch or cfg.pop("batch")
    cfg.pop("batch", None)
    if args.frames:
        cfg["num_frames"] = args.frames
    T, S = cfg["num_frames"], cfg["image_size"]
    dev = args.device
    amp = torch.autocast("cuda", torch.bfloat16) if dev == "cuda" else torch.autocast(
        "cpu", enabled=False)
    torch.manual_seed(0)
    model = ART(CLASSES, pretrained=None, text_cache_dir=args.cache, **cfg).to(dev)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    video = torch.randn(B, T, 3, S, S, generator=g).to(dev)
    labels = torch.randint(0, len(CLASSES), (B,), generator=g).to(dev)
    rows = []

    def make_step(module, fn):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step():
            with amp:
                loss = fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step

    bare = BareBackbone(model).to(dev)
    times, peak = time_steps(make_step(bare, lambda: bare(video, labels)), dev, args.reps)
    base = statistics.median(times)
    rows.append(_row(name, "bare backbone", "-", B, T, S, times, peak, None, None))
    for backend in args.backends:
        if backend not in art_fast.available_backends():
            continue
        model.load_state_dict(state)
        torch.manual_seed(2)  # the same dropout masks in every backend's first step
        first = {}

        def fn(backend=backend, first=first):
            with art_fast.use_backend(backend):
                loss = model(video, labels).losses["total"]
            if "loss" not in first:
                first["loss"] = float(loss.detach())
            return loss

        inner = make_step(model, fn)

        def step(inner=inner):
            inner()
            model.update_bank()

        times, peak = time_steps(step, dev, args.reps)
        share = (statistics.median(times) - base) / base
        rows.append(_row(name, "ART", backend, B, T, S, times, peak, first["loss"], share))
    return rows


def _row(config, model, backend, B, T, S, times, peak, loss, share) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "config": config, "model": model, "backend": backend, "batch": B, "frames": T,
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--backends", nargs="+", default=["torch", "cpu", "triton", "cuda"])
    p.add_argument("--batch", type=int, default=0, help="clips per step (default per config)")
    p.add_argument("--frames", type=int, default=0, help="frames per clip (default per config)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--cache", default=None, help="text-bank cache folder")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = h.cpu_busy()
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
