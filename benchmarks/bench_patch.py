#!/usr/bin/env python
"""``art_fast.patch`` on modules art_fast did not build: the same module unpatched (torch's
``nn.MultiheadAttention``) and patched (its cross-attention through ``art_fast.cross_attention``
with the chosen backend), forward and forward + backward, both timed in one run.

Cases: open_clip's ``AttentionalPooler`` (CoCa) with 1 query (the contrastive pooler) and with
its default 256 queries (the captioning pooler), over 197 ViT-B/16 tokens of width 768, d 512,
8 heads; and an X-CLIP-style video decoder step: ``nn.MultiheadAttention(512, 8)`` (sequence
first) with one video token per clip over 8 frames x 50 tokens.

Results: ``<out>/bench_patch.json`` and ``<out>/bench_patch.md`` with device, versions, date.

Usage::

    python benchmarks/bench_patch.py [--device cpu|cuda] [--backend cpu] [--batch B]
        [--threads N] [--min-run-time S] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

import art_fast  # noqa: E402


class VideoDecoderStep(nn.Module):
    """An X-CLIP-style decoder's cross-attention: video tokens ``[M, B, E]`` (sequence first)
    over the frames' tokens ``[T * L, B, E]``."""

    def __init__(self, width: int = 512, heads: int = 8) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attn(x, y, y, need_weights=False)[0]


def cases(batch: int) -> list[dict[str, Any]]:
    from open_clip.transformer import AttentionalPooler

    out = []
    for nq in (1, 256):
        out.append(dict(name=f"open_clip AttentionalPooler, {nq} quer{'y' if nq == 1 else 'ies'}",
                        shape=f"x[{batch},197,768] d512 h8",
                        make=lambda nq=nq: AttentionalPooler(512, 768, n_head=8, n_queries=nq),
                        inputs=lambda: (torch.randn(batch, 197, 768),)))
    out.append(dict(name="X-CLIP-style decoder cross-attention, 1 video token",
                    shape=f"x[1,{batch},512] y[400,{batch},512] h8",
                    make=VideoDecoderStep,
                    inputs=lambda: (torch.randn(1, batch, 512), torch.randn(400, batch, 512))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default=None,
                   help="art_fast backend of the patched calls (default: cpu on CPU, auto on "
                        "CUDA)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    backend = a.backend or ("cpu" if a.device == "cpu" else "auto")
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    busy0 = h.cpu_busy()
    rows = []
    for c in cases(a.batch):
        torch.manual_seed(0)
        plain = c["make"]().to(a.device)
        patched = copy.deepcopy(plain)
        art_fast.patch(patched, backend=backend)
        inputs = [t.to(a.device).requires_grad_() for t in c["inputs"]()]
        for label, mod in (("unpatched", plain), (f"patched ({backend})", patched)):
            def fwd(mod: nn.Module = mod, inputs: list = inputs) -> torch.Tensor:
                with torch.no_grad():
                    return mod(*inputs)

            def fwd_bwd(mod: nn.Module = mod, inputs: list = inputs) -> None:
                out = mod(*inputs)
                out.backward(torch.ones_like(out))

            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                t = (h.time_cpu(fn, threads, a.min_run_time) if a.device == "cpu"
                     else h.time_cuda(fn, 200.0))
                rows.append(dict(case=c["name"], shape=c["shape"], mode=mode, module=label,
                                 median_ms=t.median_ms, lo_ms=t.lo_ms, hi_ms=t.hi_ms,
                                 min_ms=t.min_ms))
        for mode in ("fwd", "fwd+bwd"):
            base, fast = (r for r in rows if r["case"] == c["name"] and r["mode"] == mode)
            fast["speedup"] = base["median_ms"] / fast["median_ms"]
    head = h.environment(a.device, busy={"start": busy0, "end": h.cpu_busy()},
                         packages={"open_clip": "open_clip_torch"})
    head.update(batch=a.batch, backend=backend, min_run_time=a.min_run_time)
    cols = [h.Column("case", "case"), h.Column("shape", "shape"), h.Column("mode", "mode"),
            h.Column("module", "module"), h.Column("median ms", "median_ms", ".3f", right=True),
            h.Column("p25-p75 ms", lambda r: f"{r['lo_ms']:.3f}-{r['hi_ms']:.3f}", right=True),
            h.Column("speedup", lambda r: r.get("speedup"), ".2f", missing="", right=True)]
    md = h.markdown("art_fast.patch on third-party modules",
                    [[f"- {k}: {v}" for k, v in head.items()],
                     ["Command: `python benchmarks/bench_patch.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]) + "`"]],
                    cols, rows)
    out = Path(a.out) if a.out else h.results_dir(a.device)
    paths = h.write_results(out, "bench_patch", {"header": head, "rows": rows}, md)
    print(md)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
