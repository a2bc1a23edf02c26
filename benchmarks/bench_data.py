#!/usr/bin/env python
"""Data-loading throughput: decode + transform, clips/s for one worker (in-process).

Two workloads:

* ``synthetic``: the demo set (``art_fast.data.make_synthetic`` defaults: 64 x 64 x 16-frame
  h264 clips) read through ``Diving48`` with T = 8, image size 64, as the demo config does;
* ``224``: h264 clips of 256 x 340 pixels and 64 frames (the usual short-side-256 copies of
  Kinetics-like data), generated here, read through ``VideoList`` as 16-frame clips at
  224 x 224 (TSN segments and dense clips with stride 4).

Each row times ``dataset[i]`` over the dataset's items, cycling, after a warm-up: open the file,
sample indices, decode, crop/resize, return the uint8 clip; that is the work of one DataLoader
worker per item (``torch.set_num_threads(1)``, as in a worker). ``decode`` rows time
``read_frames`` alone on the same indices. Rows are in the decoder backend named (``auto`` is
decord when it works). The machine may be shared: the header records how busy the other cores
were before the run (``other_cpu_busy``), so read small differences with care.

Results: ``<out>/bench_data.json`` (header + rows) and ``<out>/bench_data.md`` (the table, also
printed); ``<out>`` defaults to ``benchmarks/results/<device-slug>/``.

Usage::

    python benchmarks/bench_data.py [--out DIR] [--seconds S] [--workloads synthetic 224]
        [--backends auto pyav] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

import art_fast  # noqa: E402
from art_fast.data import Diving48, VideoList, make_synthetic, read_frames  # noqa: E402
from art_fast.data import synthetic as syn  # noqa: E402
from art_fast.data.video import decord_available  # noqa: E402


def make_224_videos(folder: Path, count: int = 4, frames: int = 64, seed: int = 0) -> Path:
    """``count`` h264 clips of 256 x 340 x ``frames`` (textured, moving content) and a
    ``<path> <label>`` list file; returns the list file."""
    folder.mkdir(parents=True, exist_ok=True)
    codec, options = syn._encoder()
    options = dict(options, crf="20")  # typical dataset-copy quality, not the demo's CRF 12
    lines = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        clip, _ = syn.render_clip(("moves-right", "fast", "straight-path"), frames, 340, rng,
                                  distractors=4)
        clip = np.ascontiguousarray(clip[:, 42:298])  # 256 x 340
        name = f"clip{i}.mp4"
        syn._write_mp4(str(folder / name), clip, codec, options, fps=25)
        lines.append(f"{name} {i % 2}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def _timed(fn: Any, n: int, seconds: float) -> dict[str, float]:
    """Call ``fn(k % n)`` for k = 0, 1, ... for about ``seconds`` (at least 8 calls).

    Returns clips/s over the run (wall clock), the median wall time per call, and the median
    CPU time of this process per call (``time.process_time``: what one worker costs, less
    sensitive to other load on a shared machine)."""
    wall, cpu = [], []
    start = time.perf_counter()
    k = 0
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        fn(k % n)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        k += 1
        if time.perf_counter() - start >= seconds and k >= 8:
            break
    total = time.perf_counter() - start
    return {"items": k, "clips_per_s": k / total, "median_ms": 1e3 * statistics.median(wall),
            "median_cpu_ms": 1e3 * statistics.median(cpu)}


def time_items(ds: Any, seconds: float, warmup: int = 2) -> dict[str, float]:
    """``ds[i]`` (decode + transform), cycling over the items, after ``warmup`` calls."""
    for i in range(min(warmup, len(ds))):
        ds[i]
    return _timed(ds.__getitem__, len(ds), seconds)


def time_decode(ds: Any, backend: str, seconds: float) -> dict[str, float]:
    """``read_frames`` alone on the frame indices the dataset samples (eval indices)."""
    jobs = []
    for i in range(len(ds)):
        nf = art_fast.data.num_frames(ds.path_of(i), backend=backend)
        idx = np.concatenate(ds.frame_indices(nf, np.random.default_rng(i)))
        jobs.append((ds.path_of(i), idx))
    read_frames(jobs[0][0], jobs[0][1], backend=backend)
    return _timed(lambda k: read_frames(jobs[k][0], jobs[k][1], backend=backend), len(jobs),
                  seconds)


def time_cases(workload: str, backend: str, T: int, size: int, args: argparse.Namespace,
               cases: list[tuple[str, Any]], decode: int) -> list[dict[str, Any]]:
    """One row per (mode, dataset) of ``cases``, then a "decode only" row on
    ``cases[decode]``'s dataset."""
    meta = dict(workload=workload, backend=backend, T=T, size=size)
    rows = [dict(meta, mode=mode, **time_items(ds, args.seconds)) for mode, ds in cases]
    rows.append(dict(meta, mode="decode only",
                     **time_decode(cases[decode][1], backend, args.seconds)))
    return rows


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    torch.set_num_threads(1)
    busy = h.cpu_busy()
    rows: list[dict[str, Any]] = []
    backends = [b for b in args.backends if b != "decord" or decord_available()]
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        if "synthetic" in args.workloads:
            root = tmp / "synthetic"
            t0 = time.perf_counter()
            summary = make_synthetic(root)
            gen_s = time.perf_counter() - t0
            print(f"synthetic set: {summary['num_train']} + {summary['num_test']} clips in "
                  f"{gen_s:.1f} s", file=sys.stderr)
            for backend in backends:
                common = dict(num_frames=8, image_size=64, backend=backend)
                rows += time_cases("synthetic 64x64, 16-frame files", backend, 8, 64, args, [
                    ("train", Diving48(root, "train", crop_scale=(0.6, 1.0), **common)),
                    ("eval", Diving48(root, "test", **common)),
                    ("eval 2x3 views", Diving48(root, "test", views=(2, 3), **common)),
                ], decode=1)
        if "224" in args.workloads:
            lst = make_224_videos(tmp / "v224")
            for backend in backends:
                common = dict(num_frames=16, image_size=224, backend=backend)
                rows += time_cases("256x340, 64-frame files", backend, 16, 224, args, [
                    ("train segments", VideoList(lst, train=True, **common)),
                    ("train dense/4", VideoList(lst, train=True, sampling="dense",
                                                dense_stride=4, **common)),
                    ("eval segments", VideoList(lst, **common)),
                    ("eval 2x3 views", VideoList(lst, views=(2, 3), **common)),
                ], decode=2)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    head = {"benchmark": "bench_data", **h.environment("cpu", busy, packages={
        "decord": ("decord2", "decord"), "av": "av", "numpy": "numpy"})}
    head.update(seconds_per_row=args.seconds, what="dataset[i] in-process (one worker): open, "
                "sample, decode, transform; uint8 out")
    return head, rows


COLUMNS = [
    h.Column("workload", "workload"),
    h.Column("mode", "mode"),
    h.Column("backend", "backend"),
    h.Column("T", "T", right=True),
    h.Column("size", "size", right=True),
    h.Column("clips/s (wall)", "clips_per_s", ".1f", right=True),
    h.Column("median wall ms/clip", "median_ms", ".1f", right=True),
    h.Column("median CPU ms/clip", "median_cpu_ms", ".1f", right=True),
    h.Column("clips/s per busy core (1000 / CPU ms)",
             lambda r: 1e3 / max(r["median_cpu_ms"], 1e-3), ".0f", right=True),
]


def markdown(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown document: settings line, the table, how to read it."""
    settings = (
        f"Data loading, one worker in-process ({head['device_name']}, {head['cores']} cores, "
        f"torch threads {head['threads']}; torch {head['torch']}, decord "
        f"{head['decord']}, av {head['av']}; {head['date_utc']}; other load before the run: "
        f"{head['other_cpu_busy']} of the cores)")
    return h.markdown(None, [settings], COLUMNS, rows, [
        "clips/s (wall) counts every call of the timed run; the CPU columns use this process's "
        "CPU time, which other load on a shared machine inflates less."])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default benchmarks/results/<device-slug>)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    p.add_argument("--workloads", nargs="+", default=["synthetic", "224"],
                   choices=["synthetic", "224"])
    p.add_argument("--backends", nargs="+", default=["auto", "pyav"],
                   choices=["auto", "decord", "pyav"])
    p.add_argument("--keep", default=None, help="generate the videos here and keep them")
    args = p.parse_args(argv)
    head, rows = run(args)
    md = markdown(head, rows)
    paths = h.write_results(args.out or h.results_dir("cpu"), "bench_data",
                            {"header": head, "rows": rows}, md)
    print(md)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
