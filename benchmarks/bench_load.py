#!/usr/bin/env python
"""The demo-sized training step on an idle machine and beside a competing CPU job.

A step is bench_train's ``tiny`` config (the demo's tiny tower, 8 clips x 8 frames x 64 px,
forward with labels, backward, AdamW, the bank's EMA) on the ``cpu`` backend. Each OpenMP
setting (``--env``: a set of environment variables, which OpenMP reads when the process
starts, so each setting runs in a fresh process) is timed twice: alone, and beside a
competing job (another Python process doing 512 x 512 matmuls on ``--load-threads`` threads,
with the default environment). Reported: median and minimum step time, and the slowdown
loaded / idle of each setting.

Results: ``<out>/bench_load.json`` and ``<out>/bench_load.md`` with device, versions, date.

Usage::

    python benchmarks/bench_load.py [--env "" "OMP_WAIT_POLICY=PASSIVE" ...] [--steps N]
        [--threads N] [--load-threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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


def worker(steps: int, threads: int) -> dict[str, float]:
    """Time ``steps`` training steps (after 3 warm-up steps) in this process."""
    import torch

    import art_fast
    from art_fast import ART

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

    times = []
    with art_fast.use_backend("cpu"):
        for _ in range(3):
            step()
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": times[len(times) // 2] * 1e3, "min_ms": times[0] * 1e3}


def run_setting(env_text: str, loaded: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    for item in env_text.split():
        key, _, value = item.partition("=")
        env[key] = value
    hog = None
    if loaded:
        hog = subprocess.Popen([sys.executable, "-c", HOG, str(args.load_threads)])
        time.sleep(2.0)  # the competitor at full speed before the step starts
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                              "--threads", str(args.threads)], env=env, check=True,
                             capture_output=True, text=True).stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", nargs="+", default=["", "OMP_WAIT_POLICY=PASSIVE"],
                   help="OpenMP settings to compare: space-separated KEY=VALUE lists, '' for "
                        "the default environment")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="threads of the step (default: all "
                                                          "cores)")
    p.add_argument("--load-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.threads = a.threads or (os.cpu_count() or 1)
    if a.worker:
        print(json.dumps(worker(a.steps, a.threads)))
        return 0
    busy0 = h.cpu_busy()
    rows = []
    for env_text in a.env:
        idle = run_setting(env_text, False, a)
        loaded = run_setting(env_text, True, a)
        rows.append(dict(setting=env_text or "(default)", idle_ms=idle["median_ms"],
                         idle_min_ms=idle["min_ms"], loaded_ms=loaded["median_ms"],
                         loaded_min_ms=loaded["min_ms"],
                         slowdown=loaded["median_ms"] / idle["median_ms"]))
    head = h.environment("cpu", busy={"start": busy0, "end": h.cpu_busy()})
    head.update(steps=a.steps, step_threads=a.threads, load_threads=a.load_threads)
    cols = [h.Column("OpenMP setting", "setting"),
            h.Column("idle median ms", "idle_ms", ".1f", right=True),
            h.Column("idle min ms", "idle_min_ms", ".1f", right=True),
            h.Column("loaded median ms", "loaded_ms", ".1f", right=True),
            h.Column("loaded min ms", "loaded_min_ms", ".1f", right=True),
            h.Column("slowdown", "slowdown", ".2f", right=True)]
    cmd = " ".join(repr(x) if x == "" else x for x in (argv if argv is not None else sys.argv[1:]))
    md = h.markdown("The demo-sized step, idle and beside a competing CPU job",
                    [[f"- {k}: {v}" for k, v in head.items()],
                     [f"Command: `python benchmarks/bench_load.py {cmd}`", "",
                      f"Loaded: beside a Python process doing 512 x 512 matmuls on "
                      f"{a.load_threads} threads (default environment)."]],
                    cols, rows)
    out = Path(a.out) if a.out else h.results_dir("cpu")
    paths = h.write_results(out, "bench_load", {"header": head, "rows": rows}, md)
    print(md)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
