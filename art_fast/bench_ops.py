"""Benchmark the three hot-path ops of art_fast against their references (DESIGN §7).

Every op x shapes x providers x modes:

- ops: ``cross_attention``, ``topk_regions``, ``info_nce`` at the paper's shapes (``--quick``:
  tiny shapes for a smoke test);
- providers: ``eager`` (the reference, ``backend="torch"``), ``compile`` (the reference function
  under ``torch.compile(fullgraph=True)``, compile time excluded), ``cpu`` / ``triton`` /
  ``cuda`` (art_fast's kernels, where usable for the tensors' device), and for cross_attention
  on CUDA ``sdpa_<backend>`` (``scaled_dot_product_attention`` restricted to one SDPBackend);
- modes: ``fwd`` (forward under no_grad), ``bwd`` (``torch.autograd.grad`` through a
  precomputed forward graph, ``retain_graph=True``), ``fwd+bwd`` (forward, then
  ``torch.autograd.grad`` w.r.t. every float input). Multi-output ops backpropagate a random
  cotangent through their main output (out / pooled / loss).

Each provider's forward output and input gradients are compared once with the eager ones before
anything is timed; the row says ``ok`` or ``MISMATCH``. Timing: ``torch.utils.benchmark`` on
CPU, ``triton.testing.do_bench`` on CUDA (median). Peak memory: the CUDA caching allocator's peak
above the live bytes before the call; on CPU the peak of the bytes held by torch's CPU
allocator during one call (profiler memory events; scratch memory a kernel takes outside the
torch allocator is not seen). On CUDA each row also gets the fraction of the HBM roofline from
counted bytes (tensor inputs read + outputs written, cotangent and gradients included in the
backward modes).

Results: ``<out>/bench_ops.json`` (header + rows) and ``<out>/bench_ops.md`` (the table, also
printed), ``<out>`` defaulting to ``benchmarks/results/<device-slug>/`` (of the source checkout;
for an installed package, under the current directory); ``--quick`` writes
``bench_ops_quick.*`` instead so a smoke test never overwrites real results.

Usage (this module is ``art_fast.bench_ops``, part of the package;
``benchmarks/bench_ops.py`` is the same command)::

    art-fast bench [--device cpu|cuda] [--ops OP ...] [--providers P ...]
        [--modes M ...] [--dtype float32|bfloat16|float16] [--quick] [--out DIR] [--threads N]
    python benchmarks/bench_ops.py ...      # from a source checkout
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch._functorch.config as functorch_config
import torch.nn.functional as F

import art_fast
import art_fast.bench_harness as h
from art_fast._spec import Case, OpSpec
from art_fast.ops import SPECS

MODES = ("fwd", "bwd", "fwd+bwd")
KERNEL_PROVIDERS = ("cpu", "triton", "cuda")
H200_PEAK_GBPS = 4800.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Outputs = torch.Tensor | tuple[torch.Tensor, ...]
Runner = Callable[[], Outputs]


# --------------------------------------------------------------------------------------------
# The ops: shapes, inputs, public function and reference come from each op's spec
# (art_fast.ops.SPECS, art_fast/_spec.py); only the extra providers are this script's.
# --------------------------------------------------------------------------------------------


def _sdpa_providers(case: Case) -> dict[str, Runner]:
    """``sdpa_<backend>``: scaled_dot_product_attention pinned to each SDPBackend (CUDA only)."""
    if case.args[0].device.type != "cuda":
        return {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = case.args
    out: dict[str, Runner] = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def run(backend: Any = backend) -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        out[f"sdpa_{name.split('_')[0].lower()}"] = run
    return out


EXTRA_PROVIDERS: dict[str, Callable[[Case], dict[str, Runner]]] = {
    "cross_attention": _sdpa_providers,
}


# --------------------------------------------------------------------------------------------
# Providers and modes.
# --------------------------------------------------------------------------------------------


def main_output(out: Outputs) -> torch.Tensor:
    """The output gradients flow back through: the tensor itself, or the first of a tuple."""
    return out if isinstance(out, torch.Tensor) else out[0]


def build_providers(spec: OpSpec, case: Case, device: str, notes: list[str]) -> dict[str, Runner]:
    """Every provider usable for ``case``, name -> zero-argument forward; others go to notes."""
    args, kwargs = case.args, case.kwargs
    providers: dict[str, Runner] = {
        "eager": lambda: spec.fn(*args, **kwargs, backend="torch"),
    }
    # A fresh, static-shape compile per case: no recompile limits, no dynamic-shape kernels.
    # Donated buffers forbid retain_graph=True, which the `bwd` mode needs.
    torch._dynamo.reset()
    functorch_config.donated_buffer = False
    compiled = torch.compile(spec.reference, fullgraph=True, dynamic=False)
    providers["compile"] = lambda: compiled(*args, **kwargs)
    usable = art_fast.available_backends(spec.name)
    reasons = art_fast.backend_status()
    for name in KERNEL_PROVIDERS:
        wanted = "cpu" if name == "cpu" else "cuda"
        if name not in usable:
            _note(notes, f"{spec.name}/{name}: skipped, {reasons[name][spec.name]}")
        elif device != wanted:
            _note(notes, f"{spec.name}/{name}: skipped, needs {wanted.upper()} tensors")
        else:
            providers[name] = lambda name=name: spec.fn(*args, **kwargs, backend=name)
    if spec.name in EXTRA_PROVIDERS:
        providers.update(EXTRA_PROVIDERS[spec.name](case))
    return providers


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def mode_runner(run: Runner, case: Case, mode: str, gen: torch.Generator) -> Runner:
    """The zero-argument callable timed for ``mode`` (builds the graph for ``bwd`` once)."""
    if mode == "fwd":

        def fwd() -> Outputs:
            with torch.no_grad():
                return run()

        return fwd
    inputs = case.grad_inputs
    out = main_output(run())
    cot = torch.randn(out.shape, generator=gen).to(out)
    if mode == "bwd":
        return partial(torch.autograd.grad, out, inputs, cot, retain_graph=True)
    out = None  # fwd+bwd builds its own graph each call; free this one

    def fwd_bwd() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(main_output(run()), inputs, cot)

    return fwd_bwd


def _flat(out: Outputs) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _close(x: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    if x.shape != ref.shape:
        return False
    if not ref.is_floating_point():
        return bool(torch.equal(x, ref))
    x, ref = x.detach().float(), ref.detach().float()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return bool(torch.allclose(x, ref, rtol=tol, atol=tol * max(scale, 1e-6), equal_nan=True))


def check(run: Runner, eager: Runner, case: Case, gen_seed: int, spec: OpSpec) -> str:
    """``ok`` when the forward outputs and input gradients match eager's within the spec's
    ``check_tol`` (``max |x - ref| <= tol * (1 + max |ref|)``), else ``MISMATCH``."""
    tol = spec.check_tol.get(case.args[0].dtype, 2e-3)
    with torch.no_grad():
        got, want = _flat(run()), _flat(eager())
    if len(got) != len(want) or not all(_close(g, w, tol) for g, w in zip(got, want)):
        return "MISMATCH (fwd)"
    grads = []
    for fn in (run, eager):
        out = main_output(fn())
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed)).to(out)
        grads.append(torch.autograd.grad(out, case.grad_inputs, cot))
    if not all(_close(g, w, tol) for g, w in zip(*grads)):
        return "MISMATCH (grad)"
    return "ok"


# --------------------------------------------------------------------------------------------
# Measurement: counted bytes (time and peak memory: _harness.time_* / peak_bytes).
# --------------------------------------------------------------------------------------------


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def counted_bytes(case: Case, eager_out: Outputs, mode: str) -> int:
    """Bytes any implementation must move at least: tensor inputs read, outputs written; in
    the backward modes also the cotangent read and the input gradients written."""
    fwd = _nbytes(case.args) + _nbytes(_flat(eager_out))
    bwd = _nbytes((main_output(eager_out),)) + _nbytes(case.grad_inputs)
    return {"fwd": fwd, "bwd": _nbytes(case.args) + bwd, "fwd+bwd": fwd + bwd}[mode]


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    """Command-line settings the measurement needs."""

    device: str
    dtype: torch.dtype
    threads: int
    quick: bool
    peak_gbps: float
    min_run_time: float
    rep_ms: float
    providers: tuple[str, ...] | None
    modes: tuple[str, ...]


def bench_case(
    spec: OpSpec, params: dict[str, int], cfg: Config, notes: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    """All rows of one op at one shape: every usable provider x mode."""
    gen = torch.Generator().manual_seed(seed)
    case = spec.make_case(params, cfg.dtype, cfg.device, gen)
    providers = build_providers(spec, case, cfg.device, notes)
    if cfg.providers is not None:
        providers = {k: v for k, v in providers.items() if k in cfg.providers or k == "eager"}
    with torch.no_grad():
        eager_out = providers["eager"]()
    rows = []
    for name, run in providers.items():
        if cfg.providers is not None and name not in cfg.providers:
            continue  # eager was kept only as the check's truth
        try:
            status = ("ref" if name == "eager"
                      else check(run, providers["eager"], case, seed + 1, spec))
        except Exception as exc:  # noqa: BLE001  (an unusable provider is a note)
            _note(notes, f"{spec.name}/{name} at {case.label}: skipped, {_short(exc)}")
            continue
        for mode in cfg.modes:
            try:
                row = bench_row(run, case, mode, cfg, gen)
            except Exception as exc:  # noqa: BLE001  (an unusable mode is a note)
                _note(notes, f"{spec.name}/{name} {mode} at {case.label}: skipped, {_short(exc)}")
                continue
            nbytes = counted_bytes(case, eager_out, mode)
            row.update(
                op=spec.name,
                shape=case.label,
                params=params,
                provider=name,
                mode=mode,
                check=status,
                bytes=nbytes,
            )
            if cfg.device == "cuda":
                row["roofline"] = nbytes / (row["median_ms"] * 1e-3) / (cfg.peak_gbps * 1e9)
            rows.append(row)
            print(
                f"  {spec.name:16s} {case.label:36s} {name:16s} {mode:8s} "
                f"{row['median_ms']:10.3f} ms  {status}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def bench_row(
    run: Runner, case: Case, mode: str, cfg: Config, gen: torch.Generator
) -> dict[str, Any]:
    """Time one provider in one mode (warmed up first) and measure its peak memory."""
    fn = mode_runner(run, case, mode, gen)
    for _ in range(2):  # warm-up: compiles, autotunes, allocator caches
        fn()
    if cfg.device == "cuda":
        torch.cuda.synchronize()
        timing = h.time_cuda(fn, cfg.rep_ms)
    else:
        timing = h.time_cpu(fn, cfg.threads, cfg.min_run_time)
    peak = h.peak_bytes(fn, cfg.device)
    row = asdict(timing)
    row["peak_mib"] = None if peak is None else peak / 2**20
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``x_eager`` / ``x_compile``: the baseline's median over the row's, same op/shape/mode."""
    base = {(r["op"], r["shape"], r["mode"], r["provider"]): r["median_ms"] for r in rows}
    for r in rows:
        for prov in ("eager", "compile"):
            ref = base.get((r["op"], r["shape"], r["mode"], prov))
            r[f"x_{prov}"] = ref / r["median_ms"] if ref and r["median_ms"] > 0 else None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:200]


# --------------------------------------------------------------------------------------------
# Environment header and output.
# --------------------------------------------------------------------------------------------


def header(cfg: Config, notes: list[str], busy: dict[str, float | None]) -> dict[str, Any]:
    """The environment (:func:`_harness.environment`) with the run's settings and notes;
    ``busy``: the other CPU use before and after the run."""
    cpu = cfg.device == "cpu"
    head = h.environment(cfg.device, busy)
    head.update(
        threads=cfg.threads if cpu else None,
        dtype=str(cfg.dtype).removeprefix("torch."),
        quick=cfg.quick,
        backends=art_fast.available_backends(),
        timer=(
            f"torch.utils.benchmark blocked_autorange({cfg.min_run_time}s)"
            if cpu
            else "triton.testing.do_bench"
        ),
        peak_memory=(
            "torch CPU allocator peak during one call (profiler)"
            if cpu
            else "torch.cuda.max_memory_allocated delta"
        ),
        peak_gbps=None if cpu else cfg.peak_gbps,
        notes=notes,
    )
    return head


COLUMNS = [
    h.Column("op", "op"),
    h.Column("shape", "shape"),
    h.Column("mode", "mode"),
    h.Column("provider", "provider"),
    h.Column("check", "check"),
    h.Column("median ms", "median_ms", ".3f"),
    h.Column("spread ms", lambda r: f"{r['lo_ms']:.3f}-{r['hi_ms']:.3f}"),
    h.Column("peak MiB", "peak_mib", ".2f"),
    h.Column("x eager", "x_eager", ".2f"),
    h.Column("x compile", "x_compile", ".2f"),
]
GPU_COLUMNS = [
    h.Column("GB/s", lambda r: r["bytes"] / r["median_ms"] / 1e6, ".0f"),
    h.Column("% roofline", lambda r: 100 * r["roofline"], ".1f"),
]


def markdown(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown document: settings line, one table, notes."""
    gpu = head["device"] == "cuda"
    settings = (
        f"{head['date_utc']}; {head['cores']} cores"
        + (f", {head['threads']} threads" if head["threads"] else "")
        + f"; {head['dtype']}; torch {head['torch']}, triton {head['triton']}, "
        f"python {head['python']}; art_fast {head['art_fast']} @ {head['git_commit']}; "
        f"timer: {head['timer']}; memory: {head['peak_memory']}"
        + (f"; roofline at {head['peak_gbps']:.0f} GB/s" if gpu else "")
        + f"; other CPU use {head['other_cpu_busy']['start']} / {head['other_cpu_busy']['end']}"
        + f"; {head['wall_s']} s"
    )
    notes = ["Notes:", [f"- {n}" for n in head["notes"]]] if head["notes"] else []
    return h.markdown(
        f"art_fast op benchmarks: {head['device_name']}",
        [settings],
        COLUMNS + (GPU_COLUMNS if gpu else []),
        rows,
        notes,
    )


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); ``prog``: the command's name in the help
    (default: the script's file name, ``sys.argv[0]``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--ops", nargs="+", choices=tuple(SPECS), default=tuple(SPECS))
    p.add_argument(
        "--providers",
        nargs="+",
        default=None,
        help="only these providers (eager always runs as the check's truth)",
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA (DESIGN §7 targets)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, short timing (smoke test)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/<device-slug>; for an installed package "
        "under the current directory)",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--peak-gbps",
        type=float,
        default=H200_PEAK_GBPS,
        help="HBM bandwidth for the roofline, GB/s (default: H200)",
    )
    p.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="CPU seconds per measurement (default 2.0, 0.05 with --quick)",
    )
    p.add_argument(
        "--rep-ms",
        type=float,
        default=None,
        help="CUDA do_bench repetition time in ms (default 100, 20 with --quick)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark, write JSON + Markdown, print the Markdown (``prog``: as for
    :func:`parse_args`)."""
    args = parse_args(argv, prog)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bfloat16" if args.device == "cuda" else "float32")]
    cfg = Config(
        device=args.device,
        dtype=dtype,
        threads=args.threads,
        quick=args.quick,
        peak_gbps=args.peak_gbps,
        min_run_time=args.min_run_time or (0.05 if args.quick else 2.0),
        rep_ms=args.rep_ms or (20.0 if args.quick else 100.0),
        providers=tuple(args.providers) if args.providers else None,
        modes=tuple(args.modes),
    )
    torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every provider
    torch.backends.cudnn.allow_tf32 = False
    notes: list[str] = []
    busy0 = h.cpu_busy()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for op in args.ops:
        spec = SPECS[op]
        for params in spec.shapes(cfg.device, cfg.quick):
            rows += bench_case(spec, params, cfg, notes)
    add_speedups(rows)
    wall_s = round(time.perf_counter() - t0, 1)
    head = header(cfg, notes, {"start": busy0, "end": h.cpu_busy()})
    head["wall_s"] = wall_s
    if cfg.device == "cpu" and max(v or 0.0 for v in head["other_cpu_busy"].values()) > 0.2:
        # Other work on the cores stalls OpenMP barriers for a scheduler tick each: small ops
        # then read 10-100x slow, in multiples of the tick.
        head["notes"].insert(
            0,
            f"machine busy (other work used {head['other_cpu_busy']} of the cores before / "
            "after the run): CPU timings are unreliable, rerun on an idle machine",
        )
        print(f"bench_ops: warning: {head['notes'][0]}", file=sys.stderr)
    stem = "bench_ops_quick" if cfg.quick else "bench_ops"
    md = markdown(head, rows)
    out_dir = args.out or h.results_dir(cfg.device)
    h.write_results(out_dir, stem, {"header": head, "rows": rows}, md)
    print(md)
    print(f"wrote {out_dir / stem}.json and .md in {head['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
