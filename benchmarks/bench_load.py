#!/usr/bin/env python
"""The demo-sized training step on an idle machine and beside a competing CPU job.

A step is bench_train's ``tiny`` config (the demo's tiny tower, 8 clips x 8 frames x 64 px,
forward with labels, backward, AdamW, the bank's EMA) on the ``cpu`` backend. Each OpenMP
setting (``--env``: a set of environment variables, which OpenMP reads when the process
starts, so each setting runs in a fresh process) is timed twice: alone, and beside a
competing job (another Python process doing 512 x 512 matmuls on ``--load-threads`` threads,
with the default environment), once per threads mode (``--threads-mode``): ``fixed``
(``--threads`` throughout) and ``adaptive`` (the trainer's thread governor,
``train.adapt_threads``, :mod:`art_fast._cpu`). Reported: median and minimum step time, the
thread count at the end, and the slowdown loaded / idle of each row.

Results: ``<out>/bench_load.json`` and ``<out>/bench_load.md`` with device, versions, date.

Usage::

    python benchmarks/bench_load.py [--env "" "OMP_WAIT_POLICY=PASSIVE" ...] [--steps N]
        [--threads N] [--load-threads N] [--threads-mode fixed adaptive] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

HOG = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a @ a
"""


def worker(steps: int, threads: int, adapt: bool) -> dict[str, float]:
    """Time ``steps`` training steps (after 3 warm-up steps) in this process. With ``adapt``
    the trainer's :class:`art_fast._cpu.ThreadGovernor` (``train.adapt_threads``) runs
    after every step, 1 s windows, and the warm-up lasts until it has measured three of
    them, so the timed steps run at the thread count it settled on."""
    import torch

    import art_fast
    from art_fast import ART
    from art_fast._cpu import ThreadGovernor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ART([f"class {i}" for i in range(48)], backbone="tiny", pretrained=None,
                image_size=64, num_frames=8, latent_dim=64, num_queries=2, k_region=16,
                se_layers=2, rssa_layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 8, 3, 64, 64, generator=g)
    y = torch.randint(0, 48, (8,), generator=g)

    def step() -> None:
        out = model(x, y)
        opt.zero_grad(set_to_none=True)
        out.losses["total"].backward()
        opt.step()
        model.update_bank()

    governor = ThreadGovernor(threads, interval=1.0) if adapt else None
    times = []
    with art_fast.use_backend("cpu"):
        t_warm = time.perf_counter()
        for i in itertools.count():
            step()
            if governor is not None:
                governor.tick()
            if i >= 2 and (governor is None or time.perf_counter() - t_warm > 3.2):
                break
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            if governor is not None:
                governor.tick()
    times.sort()
    return {"median_ms": times[len(times) // 2] * 1e3, "min_ms": times[0] * 1e3,
            "threads_end": torch.get_num_threads()}


@contextlib.contextmanager
def competing_job(loaded: bool, threads: int) -> Iterator[None]:
    """With ``loaded``: the competing matmul process, at full speed before the block starts,
    killed after it (whatever happens inside)."""
    hog = None
    if loaded:
        hog = subprocess.Popen([sys.executable, "-c", HOG, str(threads)])
        time.sleep(2.0)
    try:
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def run_setting(env_text: str, adapt: bool, loaded: bool,
                args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    for item in env_text.split():
        key, _, value = item.partition("=")
        env[key] = value
    with competing_job(loaded, args.load_threads):
        out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                              "--threads", str(args.threads)] + (["--adapt"] if adapt else []),
                             env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


_RATE = re.compile(r"step (\d+)/\d+ .* clips/s ([0-9.]+)")


def run_training(adapt: bool, loaded: bool, args: argparse.Namespace) -> dict[str, Any]:
    """``art-fast train`` of ``--train`` on ``--data`` for ``--train-steps`` steps (the real
    loop: decoder worker, augmentation, the step, the governor), its log parsed for the
    training rate between the first and the last logged step (start-up and the final
    evaluation left out)."""
    with competing_job(loaded, args.load_threads), tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "art_fast.cli", "train", args.train,
               "--set", f"data.root={args.data}", "--set", f"output_dir={tmp}/run",
               "--set", f"train.max_steps={args.train_steps}", "--set", "train.eval_every=0",
               "--set", "train.log_every=10", "--set", "train.progress=false",
               "--set", f"train.adapt_threads={str(adapt).lower()}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_load: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        text = proc.stdout + proc.stderr
    points = [(int(m[1]), float(m[2])) for m in _RATE.finditer(text)]
    batch = int(re.search(r"global batch (\d+)", text)[1])
    if len(points) < 2 or points[-1][1] <= 0 or points[0][1] <= 0:
        raise RuntimeError(f"bench_load: too few logged steps in {args.train} "
                           f"(--train-steps >= 20): {points}")
    (s0, r0), (s1, r1) = points[0], points[-1]
    seconds = s1 * batch / r1 - s0 * batch / r0
    changes = re.findall(r"threads: (\d+) -> (\d+)", text)
    return {"clips_s": (s1 - s0) * batch / seconds, "step_ms": seconds / (s1 - s0) * 1e3,
            "threads_end": int(changes[-1][1]) if changes else None,
            "thread_changes": len(changes)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", nargs="+", default=["", "OMP_WAIT_POLICY=PASSIVE"],
                   help="OpenMP settings to compare: space-separated KEY=VALUE lists, '' for "
                        "the default environment")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="threads of the step (default: all "
                                                          "cores)")
    p.add_argument("--load-threads", type=int, default=2)
    p.add_argument("--threads-mode", nargs="+", default=["fixed", "adaptive"],
                   choices=["fixed", "adaptive"],
                   help="fixed: --threads throughout; adaptive: the trainer's thread "
                        "governor (train.adapt_threads) starting from --threads")
    p.add_argument("--train", default=None, help="instead of the synthetic step: a training "
                   "config (e.g. configs/binding_tiny.yaml) run by art-fast train on --data")
    p.add_argument("--data", default=None, help="the data.root of --train")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--adapt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.threads = a.threads or (os.cpu_count() or 1)
    if a.worker:
        print(json.dumps(worker(a.steps, a.threads, a.adapt)))
        return 0
    if a.train is not None:
        if not a.data:
            p.error("--train needs --data (the set's data.root)")
        return main_train(a, argv)
    busy0 = h.cpu_busy()
    rows = []
    for env_text in a.env:
        for mode in a.threads_mode:
            idle = run_setting(env_text, mode == "adaptive", False, a)
            loaded = run_setting(env_text, mode == "adaptive", True, a)
            rows.append(dict(setting=env_text or "(default)", threads=mode,
                             idle_ms=idle["median_ms"], idle_min_ms=idle["min_ms"],
                             idle_threads=idle["threads_end"], loaded_ms=loaded["median_ms"],
                             loaded_min_ms=loaded["min_ms"],
                             loaded_threads=loaded["threads_end"],
                             slowdown=loaded["median_ms"] / idle["median_ms"]))
    head = h.environment("cpu", busy={"start": busy0, "end": h.cpu_busy()})
    head.update(steps=a.steps, step_threads=a.threads, load_threads=a.load_threads)
    cols = [h.Column("OpenMP setting", "setting"), h.Column("threads", "threads"),
            h.Column("idle median ms", "idle_ms", ".1f", right=True),
            h.Column("idle min ms", "idle_min_ms", ".1f", right=True),
            h.Column("idle threads", "idle_threads", right=True),
            h.Column("loaded median ms", "loaded_ms", ".1f", right=True),
            h.Column("loaded min ms", "loaded_min_ms", ".1f", right=True),
            h.Column("loaded threads", "loaded_threads", right=True),
            h.Column("slowdown", "slowdown", ".2f", right=True)]
    cmd = " ".join(repr(x) if x == "" else x for x in (argv if argv is not None else sys.argv[1:]))
    return _write(a, cmd, head, cols, rows, "bench_load",
                  "The demo-sized step, idle and beside a competing CPU job", "")


def main_train(a: argparse.Namespace, argv: list[str] | None) -> int:
    """The ``--train`` mode: the real training loop, idle and loaded, per threads mode."""
    busy0 = h.cpu_busy()
    rows = []
    for mode in a.threads_mode:
        idle = run_training(mode == "adaptive", False, a)
        loaded = run_training(mode == "adaptive", True, a)
        rows.append(dict(threads=mode, idle_ms=idle["step_ms"], idle_clips_s=idle["clips_s"],
                         loaded_ms=loaded["step_ms"], loaded_clips_s=loaded["clips_s"],
                         loaded_threads=loaded["threads_end"],
                         loaded_changes=loaded["thread_changes"],
                         slowdown=loaded["step_ms"] / idle["step_ms"]))
    head = h.environment("cpu", busy={"start": busy0, "end": h.cpu_busy()})
    head.update(config=a.train, train_steps=a.train_steps, load_threads=a.load_threads)
    cols = [h.Column("threads", "threads"),
            h.Column("idle ms/step", "idle_ms", ".1f", right=True),
            h.Column("idle clips/s", "idle_clips_s", ".1f", right=True),
            h.Column("loaded ms/step", "loaded_ms", ".1f", right=True),
            h.Column("loaded clips/s", "loaded_clips_s", ".1f", right=True),
            h.Column("loaded: threads at the end", "loaded_threads", right=True,
                     missing="unchanged"),
            h.Column("slowdown", "slowdown", ".2f", right=True)]
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    return _write(a, cmd, head, cols, rows, "bench_load_train",
                  "art-fast train, idle and beside a competing CPU job",
                  " The rate is measured between the first and the last logged step (every 10).")


def _write(a: argparse.Namespace, cmd: str, head: dict[str, Any], cols: list, rows: list,
           name: str, title: str, note: str) -> int:
    """The result pair ``<out>/<name>.{json,md}`` (header, command, the load, the table)."""
    md = h.markdown(title,
                    [[f"- {k}: {v}" for k, v in head.items()],
                     [f"Command: `python benchmarks/bench_load.py {cmd}`", "",
                      f"Loaded: beside a Python process doing 512 x 512 matmuls on "
                      f"{a.load_threads} threads (default environment).{note}"]],
                    cols, rows)
    out = Path(a.out) if a.out else h.results_dir("cpu")
    paths = h.write_results(out, name, {"header": head, "rows": rows}, md)
    print(md)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
