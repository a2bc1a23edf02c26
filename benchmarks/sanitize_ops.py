#!/usr/bin/env python
"""A small driver of every art_fast op for compute-sanitizer (benchmarks/gpu_check.sh).

Runs ``cross_attention``, ``topk_regions`` and ``info_nce`` forward and backward through each
kernel path of the chosen backends (default: ``cuda`` and ``triton``) on small shapes, so that
``compute-sanitizer --tool memcheck`` / ``--tool racecheck`` see every kernel launch in a few
seconds:

- cross_attention: per-group queries, queries broadcast over B (stride 0) and shared
  ``[1, H, M, D]`` queries; with and without the attention weights; N below and above one
  tile of patches;
- topk_regions: N in shared memory (N <= 1024 on CUDA) and in the global scratch buffer
  (N > 1024); k = N;
- info_nce: the tiny regime (M, N <= 64) and the large one (tiles), anchors that are the
  candidates, ignored rows (-100), normalize on/off, reductions mean / sum / none.

Every output is checked to be finite (the inputs give no NaN); a kernel that reads garbage
usually trips this even without the sanitizer.

Autotuning: the Triton kernels autotune over several configs at each new shape, which under
the sanitizer multiplies the launches (and the minutes). By default this driver sets
``ART_FAST_TRITON_CONFIGS=first`` before art_fast is imported, so every autotuned kernel keeps
its first config (the launches are checked, not their speed); ``--all-configs`` keeps them all,
so that every config is sanitized.

``--device cpu`` runs the same calls on CPU tensors with the ``cpu`` backend and the Triton
interpreter (TRITON_INTERPRET=1, set here before art_fast is imported): the dry run of
gpu_check.sh uses it to prove the driver itself before a GPU is spent on it.

``--quick`` keeps the first shape of each op only (the dry run's smoke test of the driver).

Usage::

    python benchmarks/sanitize_ops.py [--device cuda|cpu] [--backends cuda triton]
        [--dtypes float32 bfloat16 float16 float64] [--all-configs] [--quick]

Exit status 0 when every call ran and gave finite results, 1 otherwise, 2 for bad usage (or a
backend that is not usable here, with the reason).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DTYPES = ("float32", "bfloat16", "float16", "float64")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--backends", nargs="+", choices=("cuda", "triton", "cpu", "torch"),
                   default=None, help="default: cuda triton (cpu triton with --device cpu)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32", "bfloat16"])
    p.add_argument("--all-configs", action="store_true",
                   help="keep every autotune config of the Triton kernels")
    p.add_argument("--quick", action="store_true",
                   help="the first shape of each op only (a smoke test of this driver)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    backends = args.backends or (["cpu", "triton"] if args.device == "cpu" else
                                 ["cuda", "triton"])
    if args.device == "cpu" and "triton" in backends:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined
    if not args.all_configs:
        # every autotuned kernel keeps its first config (kernels/_common.configs reads this
        # when the kernels are defined, at import; an explicit setting wins)
        os.environ.setdefault("ART_FAST_TRITON_CONFIGS", "first")
    import torch

    import art_fast

    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitize_ops: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    status = art_fast.backend_status()
    for b in backends:
        for op in ("cross_attention", "topk_regions", "info_nce"):
            if status[b][op] != "usable":
                print(f"sanitize_ops: backend {b!r} is not usable for {op}: {status[b][op]}",
                      file=sys.stderr)
                return 2
    if "triton" in backends and args.device == "cuda":
        print(f"sanitize_ops: autotune configs: "
              f"ART_FAST_TRITON_CONFIGS={os.environ.get('ART_FAST_TRITON_CONFIGS', 'all')}")

    dev = args.device
    n_shapes = 1 if args.quick else None
    calls = 0
    bad: list[str] = []
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape, dt):
        x = torch.randn(*shape, generator=gen).to(device=dev, dtype=dt)
        return x.requires_grad_()

    def check(what: str, *tensors) -> None:
        nonlocal calls
        calls += 1
        for t in tensors:
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(what)
                return

    t0 = time.perf_counter()
    for backend in backends:
        for dname in args.dtypes:
            dt = getattr(torch, dname)
            tag = f"{backend}/{dname}"
            # ---- cross_attention ----------------------------------------------------------
            for B, H, M, N, D in ((3, 2, 5, 37, 40), (2, 2, 16, 300, 64))[:n_shapes]:
                k, v = leaf(B, H, N, D, dt=dt), leaf(B, H, N, D, dt=dt)
                for qmode in ("full", "expand", "shared"):
                    if qmode == "full":
                        q = leaf(B, H, M, D, dt=dt)
                        qa = q
                    else:
                        q = leaf(1, H, M, D, dt=dt)
                        qa = q.expand(B, -1, -1, -1) if qmode == "expand" else q
                    for weights in (False, True):
                        res = art_fast.cross_attention(qa, k, v, return_weights=weights,
                                                       backend=backend)
                        out, w = res if weights else (res, None)
                        loss = out.float().sum() + (w.float().square().sum() if weights else 0)
                        gq, gk, gv = torch.autograd.grad(loss, (q, k, v))
                        check(f"{tag} cross_attention N={N} q={qmode} weights={weights}",
                              out, w, gq, gk, gv)
            # ---- topk_regions -------------------------------------------------------------
            for B, M, N, C, kk in ((2, 3, 50, 7, 5), (2, 3, 1100, 7, 9), (1, 2, 11, 4, 11))[
                :n_shapes
            ]:
                s, vals = leaf(B, M, N, dt=dt), leaf(B, N, C, dt=dt)
                pooled, idx, wt = art_fast.topk_regions(s, vals, kk, backend=backend)
                gs, gvals = torch.autograd.grad(pooled.float().sum() + wt.float().sum(), (s, vals))
                check(f"{tag} topk_regions N={N} k={kk}", pooled, wt, gs, gvals)
            # ---- info_nce -----------------------------------------------------------------
            for G, M, N, D in ((4, 6, 5, 33), (2, 70, 90, 33))[:n_shapes]:
                a, c = leaf(G, M, D, dt=dt), leaf(G, N, D, dt=dt)
                t = torch.randint(0, N, (G, M), generator=gen).to(dev)
                t[0, 0] = -100
                for reduction in ("mean", "sum", "none"):
                    for normalize in (True, False):
                        loss = art_fast.info_nce(a, c, t, reduction=reduction,
                                                 normalize=normalize, backend=backend)
                        ga, gc = torch.autograd.grad(loss.float().sum(), (a, c))
                        check(f"{tag} info_nce {M}x{N} {reduction} normalize={normalize}",
                              loss, ga, gc)
                # anchors that are the candidates (M == N)
                same = leaf(G, M, D, dt=dt)
                ts = torch.randint(0, M, (G, M), generator=gen).to(dev)
                loss = art_fast.info_nce(same, same, ts, backend=backend)
                (g,) = torch.autograd.grad(loss.float(), (same,))
                check(f"{tag} info_nce {M}x{M} same", loss, g)
    if dev == "cuda":
        torch.cuda.synchronize()
    dt_s = time.perf_counter() - t0
    if bad:
        print(f"sanitize_ops: {len(bad)} of {calls} calls gave non-finite results:",
              file=sys.stderr)
        for b in bad:
            print(f"  {b}", file=sys.stderr)
        return 1
    print(f"sanitize_ops: {calls} calls of every op (forward + backward) on {dev} with "
          f"backends {' '.join(backends)}, dtypes {' '.join(args.dtypes)}: all finite "
          f"({dt_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
