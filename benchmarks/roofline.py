#!/usr/bin/env python
"""A roofline ESTIMATE of each op's H200 time at the paper shapes, until a GPU measures it.

No GPU has run these kernels. This script predicts, per op x dtype x mode (fwd, bwd), a lower
bound on the time of the Triton path from counted work, not from a measurement:

- bytes: the tensors the kernels read and write, counting the passes they make by design (the
  cross_attention backward's two passes over k/v, info_nce's norms pass, topk_regions' dense
  weight row); every pass is counted as HBM traffic, even where L2 would serve it;
- FLOPs: the matrix products' 2*m*n*k (recomputations the kernels do included: the backward
  recomputes the scores);
- the compute peak of the path the compiler chose, read from the ahead-of-time table
  (``benchmarks/results/aot/triton_aot_full_triton<version>.json``, ``mma`` column): ``wgmma``
  790 TFLOP/s (bf16, measured on this workplace's H200 with a large torch matmul), ``mma``
  (mma.sync on Hopper) taken as half of that, ``fma`` (float32 with input_precision="ieee",
  float64) 67 / 34 TFLOP/s (the H200's FP32 / FP64 vector peaks);
- HBM at 4.3 TB/s (a device-to-device copy measured on this workplace's H200; spec 4.8);
- the share of the GPU the grid can fill: min(1, programs / 132 SMs) scales both peaks
  (a grid of 32 programs uses at most 32 of the 132 SMs), with the smallest grid among the
  op's main kernels (not the _norms / _sum_over_b passes) and the first autotune config;
- about 4 us per kernel launch (the number of launches is recorded from the host functions).

estimate = launches * 4 us + max(bytes / BW, FLOPs / peak) / fill. It is marked as an estimate
wherever it is shown; benchmarks/gpu_check.sh measures the real times (bench_ops.py on CUDA).

Usage: python benchmarks/roofline.py [--aot TABLE.json]
    [--out benchmarks/results/aot/roofline_h200.md]
Run without TRITON_INTERPRET (it records the host functions' launches, see triton_aot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import triton_aot  # noqa: E402

HBM = 4.3e12
SMS = 132
LAUNCH_S = 4e-6
PEAK = {"wgmma": 790e12, "mma": 395e12, "fma32": 67e12, "fma64": 34e12}
SIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def _work(op: str, mode: str, dt: str) -> tuple[float, float, str]:
    """(bytes, FLOPs, shape) at the paper shape of ``op``."""
    e = SIZE[dt]
    acc = 8 if dt == "float64" else 4
    if op == "cross_attention":
        B, H, M, N, D = 512, 8, 16, 196, 32
        qkv = (B * H * M * D + 2 * B * H * N * D) * e
        if mode == "fwd":
            return qkv + B * H * M * D * e + 2 * B * H * M * acc, 4 * B * H * M * N * D, \
                "B*T=512 H=8 M=16 N=196 D=32"
        # two passes over k/v: scores and dP twice, dv, dk, dq once (7 products)
        return 2 * qkv + B * H * M * D * e + 2 * B * H * M * acc, 14 * B * H * M * N * D, ""
    if op == "topk_regions":
        B, M, N, C, k = 4096, 16, 196, 32, 16
        if mode == "fwd":
            byts = (B * M * N + B * N * C + B * M * C + B * M * k) * e + B * M * k * 8
            return byts, 0.0, "[4096,16,196] x [4096,196,32] k=16"
        # scores/values/grad read, grad scores + grad values written, the dense weight row
        # written and read (acc), W^T g_pooled product
        byts = (2 * B * M * N + 2 * B * N * C + B * M * C) * e + B * M * k * 8 + \
            2 * B * M * N * acc
        return byts, 2 * B * M * N * C, ""
    if op == "info_nce tiny":
        G, M, N, D = 100000, 16, 16, 256
        f = 2 * G * M * N * D
        if mode == "fwd":  # norms pass + logits pass both read a and c
            return 2 * G * (M + N) * D * e, f, "G=1e5 M=N=16 D=256"
        return 3 * G * (M + N) * D * e, 3 * f, ""
    G, M, N, D = 1, 32768, 32768, 256
    f = 2 * G * M * N * D
    if mode == "fwd":
        return 2 * G * (M + N) * D * e, f, "G=1 M=N=32768 D=256"
    # rows and columns passes each recompute the logits per output D chunk (nd = D / 128 = 2
    # chunks): 2 (nd + 1) f instead of 4 f (kernels/info_nce.py)
    nd = -(-D // 128)
    return 3 * G * (M + N) * D * e, 2 * (nd + 1) * f, ""


_OPKEY = {"cross_attention": ("cross_attention", "paper M=16"),
          "topk_regions": ("topk_regions", "paper"),
          "info_nce tiny": ("info_nce", "paper tiny"),
          "info_nce large": ("info_nce", "large 32768 (limit)")}
_KERNELS = {"fwd": {"_fwd", "_tiny_fwd", "_rows_fwd", "_norms"},
            "bwd": {"_bwd", "_bwd_rows", "_bwd_values", "_sum_over_b", "_tiny_bwd",
                    "_rows_bwd", "_cols_bwd", "_norms"}}


# The kernels that carry an op's work (the grid fill is theirs; _norms and _sum_over_b are
# small passes beside them).
_MAIN = {"_fwd", "_tiny_fwd", "_rows_fwd", "_bwd", "_bwd_rows", "_bwd_values", "_tiny_bwd",
         "_rows_bwd", "_cols_bwd"}


def _kernels(op: str, scen: str, dt: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Per phase (fwd, bwd), the kernels (name, grid of its first config) one call of the host
    function launches, in order."""
    import torch

    sc = next(s for s in triton_aot.SCENARIOS if s.op == op and s.name == scen)
    with triton_aot.record_launches() as launches:
        sc.run(getattr(torch, dt))
    out: dict[str, list[tuple[str, tuple[int, ...]]]] = {"fwd": [], "bwd": []}
    seen: set[int] = set()
    for ln in launches:
        if ln.call not in seen:  # an autotuned launch is recorded once per config
            seen.add(ln.call)
            out[ln.phase].append((ln.kernel, ln.grid))
    return out


def _programs(grid: tuple[int, ...]) -> int:
    n = 1
    for g in grid:
        n *= g
    return n


def estimate(aot_rows: list[dict]) -> list[dict]:
    """One row per op x dtype x mode (see the module docstring for the model)."""
    out = []
    for opname, (op, scen) in _OPKEY.items():
        for dt in ("float32", "bfloat16"):
            per_mode = _kernels(op, scen, dt)
            for mode in ("fwd", "bwd"):
                kernels = per_mode[mode]
                byts, flops, shape = _work(opname, mode, dt)
                names = {k for k, _ in kernels}
                paths = {r["mma"] for r in aot_rows if r["op"] == op and r["dtype"] == dt
                         and r["arch"] == 90 and r["kernel"] in names} - {"-"}
                if "fma" in paths or not paths:
                    peak, path = PEAK["fma64" if dt == "float64" else "fma32"], "fma"
                elif "mma" in paths:
                    peak, path = PEAK["mma"], "mma"
                else:
                    peak, path = PEAK["wgmma"], "wgmma"
                programs = min(_programs(g) for k, g in kernels if k in _MAIN)
                fill = min(1.0, programs / SMS)
                t_mem, t_cmp = byts / HBM, (flops / peak if flops else 0.0)
                t = len(kernels) * LAUNCH_S + max(t_mem, t_cmp) / fill
                out.append(dict(op=opname, dtype=dt, mode=mode, shape=shape,
                                launches=len(kernels), programs=programs,
                                mbytes=round(byts / 1e6, 1), gflop=round(flops / 1e9, 2),
                                path=path if flops else "-", fill=round(fill, 2),
                                est_ms=round(t * 1e3, 3),
                                bound="memory" if t_mem >= t_cmp else "compute"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--aot", type=Path, default=None,
                   help="the full AOT table (default: the one of the installed triton under "
                        "benchmarks/results/aot/)")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks" / "results" / "aot" / "roofline_h200.md")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("roofline: run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if args.aot is None:
        args.aot = ROOT / "benchmarks" / "results" / "aot" / (triton_aot._stem("full") + ".json")
    if not args.aot.exists():
        print(f"roofline: {args.aot} is missing; run `make gpu-aot` first", file=sys.stderr)
        return 2
    aot = json.loads(args.aot.read_text())
    rows = estimate(aot["rows"])
    lines = ["# H200 roofline ESTIMATE of the Triton path (not a measurement)", "",
             f"From counted bytes/FLOPs and the ahead-of-time table of triton "
             f"{aot['header'].get('triton')} ({aot['header'].get('date')}); model and "
             "constants in benchmarks/roofline.py. No GPU has run these kernels.", "",
             "| op | shape | dtype | mode | launches | programs | MB | GFLOP | MMA path "
             "| grid fill | bound | estimate ms |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['mode']} | "
                     f"{r['launches']} | {r['programs']} | {r['mbytes']} | {r['gflop']} | "
                     f"{r['path']} | {r['fill']} | {r['bound']} | {r['est_ms']} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
