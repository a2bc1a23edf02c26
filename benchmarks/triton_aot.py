#!/usr/bin/env python
"""Compile every Triton kernel of art_fast ahead of time for real GPU targets, with no GPU.

The interpreter (``TRITON_INTERPRET=1``, what the CPU tests run) accepts code that the
compiler rejects, and says nothing about shared memory or registers. This script runs the
kernels' own host functions (``_fwd_host``/``_bwd_host`` of ``art_fast.kernels.*``) on "meta"
tensors (shapes and dtypes, no data) at the shapes of each scenario (declared by each Triton
module as ``AOT_SCENARIOS``: a new op's kernels are compiled with no edit here), records
every launch they make (kernel, arguments, constexprs, grid; for an autotuned kernel every
config the autotuner can pick), and compiles each one with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` and the wheel's own ptxas: the same specialisation
(argument types, 16-divisibility, constexprs, num_warps/num_stages) that a launch on a GPU
would compile.

Per compiled kernel it reports (Markdown + JSON, ``triton_aot_<set>_triton<version>.*``): op,
scenario, kernel, dtype, arch, config, grid, shared memory (Triton's dynamic + ptxas' static
bytes), registers per thread, spill store/load bytes (ptxas -v), and the MMA path read off the
TTGIR (``wgmma``: Hopper warpgroup MMA; ``mma``: mma.sync tensor cores; ``fma``: tl.dot lowered
to FMAs, e.g. float32 with input_precision="ieee" or float64; ``-``: no dot).

Verdicts, per row:
- ``ERROR``: the compile failed (the first line of the error is the note);
- ``SMEM``: shared memory over the target's opt-in limit per block (sm_80: 166912 B, sm_90:
  232448 B): such a config fails at launch with OutOfResources (an autotuner skips it
  silently, a plain launch crashes);
- ``SPILL``: register spills in a scenario whose ``spills`` flag is set (the paper shapes and
  the stated regime limits, float32 and bfloat16); spills elsewhere are reported, not failed.
Exit status 1 when any row has a verdict, 0 otherwise.

Sets (``--set``): ``ci`` (what ``make test`` runs through tests/test_triton_aot.py: the paper
shapes in float32 and bfloat16 for sm_80 and sm_90) and ``full`` (``make gpu-aot``: also
float16 and float64, the regime limits, wider D, normalize off, weights on). Compiles run in
parallel (``--jobs``, default the core count); Triton's cache (``~/.triton/cache``) makes a
second run fast.

Usage::

    python benchmarks/triton_aot.py [--set ci|full] [--arch 80,90] [--out DIR] [--jobs N]
        [--ops OP ...] [--list]

Must run without ``TRITON_INTERPRET`` (it is removed from the environment of the workers; the
script refuses to run with it set, since the kernels would then be interpreted functions).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root (art_fast importable from a checkout)
sys.path.insert(0, str(ROOT / "benchmarks"))

from cuda_ptxas import parse_ptxas  # noqa: E402  (one parser of ptxas -v logs for both)

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 163 KiB,
# H100/H200 227 KiB.
SMEM_LIMIT = {80: 166912, 90: 232448}
DTYPES = ("float32", "bfloat16", "float16", "float64")
# The ops with Triton kernels: one module each in kernels/ (each declares its scenarios).
OPS = tuple(sorted(p.stem for p in (ROOT / "kernels").glob("*.py")
                   if not p.stem.startswith("_")))


# ---- scenarios ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """One host-function call at given shapes: ``run(dtype)`` calls the host on meta tensors."""

    op: str
    name: str
    run: Callable[[Any], None]
    dtypes: tuple[str, ...]
    sets: tuple[str, ...]  # which --set values include it
    spills: bool  # spills fail this scenario (paper shapes, stated limits) in fp32/bf16


# The phase the scenario's host calls are in (stamped on every recorded launch).
PHASE = ["fwd"]


def _meta(torch, shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


PAPER = ("float32", "bfloat16")
DTYPE_SETS = {"paper": PAPER, "all": DTYPES}
SET_NAMES = {"ci": ("ci", "full"), "full": ("full",)}


def _backward() -> None:
    PHASE[0] = "bwd"


def scenarios(ops: tuple[str, ...] = OPS) -> list[Scenario]:
    """Every op's scenarios, declared by its Triton module as ``AOT_SCENARIOS``: tuples
    ``(name, run, dtypes, sets, spills)``, ``run(dtype, meta, backward)`` calling the host
    functions on ``meta(shape, dtype)`` tensors (``backward()`` marks the start of the
    backward's launches), ``dtypes`` "paper"
    (float32, bfloat16) or "all", ``sets`` "ci" (ci and full) or "full", ``spills`` whether
    spills fail it. Imported here, not at import of this script (TRITON_INTERPRET must be
    off)."""
    import torch

    out = []
    for op in ops:
        mod = importlib.import_module(f"art_fast.kernels.{op}")
        for name, run, dtypes, sets, spills in mod.AOT_SCENARIOS:
            out.append(Scenario(
                op, name,
                lambda dtype, run=run: run(dtype, lambda shape, dt: _meta(torch, shape, dt),
                                           _backward),
                DTYPE_SETS[dtypes], SET_NAMES[sets], spills))
    return out


# ---- recording launches -----------------------------------------------------------------------

@dataclass
class Launch:
    """A kernel launch the host made: enough to compile it again (picklable)."""

    module: str
    kernel: str  # attribute name in the module
    args: list  # tensors encoded as ("ptr", dtype name), scalars as they are
    kwargs: dict  # constexprs and launch options, tl dtypes encoded as ("tl", name)
    grid: tuple[int, ...]
    config: str  # "BLOCK_M=64 BLOCK_N=64 w4 s2" (the constexprs a config or launch sets)
    call: int = 0  # which launch of the host functions (an autotuned one: one per config)
    phase: str = "fwd"  # "fwd" or "bwd": the host function that launched it


def _encode(value):
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return ("ptr", str(value.dtype).removeprefix("torch."))
    if isinstance(value, tl.dtype):
        return ("tl", value.name)
    return value


def _decode(value):
    import torch
    import triton.language as tl

    if isinstance(value, tuple) and len(value) == 2 and value[0] == "ptr":
        return _FakePtr(getattr(torch, value[1]))
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "tl":
        return getattr(tl, {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16",
                            "fp16": "float16"}.get(value[1], value[1]))
    return value


class _FakePtr:
    """Stands in for a tensor argument: Triton's binder reads its dtype and data_ptr() (0:
    16-byte aligned, as every CUDA allocation of torch is)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def data_ptr(self) -> int:
        return 0


def _kernel_attr(fn) -> tuple[str, str]:
    mod = importlib.import_module(fn.__module__)
    for name, obj in vars(mod).items():
        if obj is fn or getattr(obj, "fn", None) is fn:
            return fn.__module__, name
    raise RuntimeError(f"cannot find kernel {fn} in {fn.__module__}")


def _config_str(kw: dict, names: list[str]) -> str:
    parts = [f"{n}={kw[n]}" for n in names if n in kw]
    parts.append(f"w{kw.get('num_warps', 4)}")
    parts.append(f"s{kw.get('num_stages', 3)}")
    return " ".join(parts)


def _grid(grid, named: dict) -> tuple[int, ...]:
    g = grid(named) if callable(grid) else grid
    return tuple(int(x) for x in g)


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Intercept every Triton launch (plain and autotuned) while the host functions run on
    meta tensors; yields the list the launches are appended to. Nothing runs."""
    from art_fast.kernels import _common
    from triton.runtime import autotuner, jit

    launches: list[Launch] = []
    orig_jit, orig_tune = jit.JITFunction.run, autotuner.Autotuner.run
    calls = [0]
    PHASE[0] = "fwd"

    def add(fn, args, kwargs, grid, config_kw):
        module, attr = _kernel_attr(fn)
        kw = {**kwargs, **config_kw}
        named = {**dict(zip(fn.arg_names, args)), **kw}
        constexpr_names = [p.name for p in fn.params if p.is_constexpr]
        tunable = [n for n in constexpr_names if n.startswith("BLOCK") or n == "GROUPS"]
        launches.append(Launch(module, attr, [_encode(a) for a in args],
                               {k: _encode(v) for k, v in kw.items()}, _grid(grid, named),
                               _config_str(kw, tunable), calls[0], PHASE[0]))

    def jit_run(self, *args, grid, warmup, **kwargs):
        calls[0] += 1
        add(self, args, kwargs, grid, {})

    def tune_run(self, *args, **kwargs):
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        calls[0] += 1
        for cfg in self.configs:
            add(self.fn, args, kwargs, grid, cfg.all_kwargs())

    jit.JITFunction.run, autotuner.Autotuner.run = jit_run, tune_run
    _common.RECORDING[0] = True
    try:
        yield launches
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run = orig_jit, orig_tune
        _common.RECORDING[0] = False
        PHASE[0] = "fwd"


# ---- compiling --------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    scenario: str
    kernel: str
    dtype: str
    arch: int
    config: str
    grid: str
    smem: int = -1
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    mma: str = ""
    seconds: float = 0.0
    verdict: str = ""  # "" (ok), ERROR, SMEM, SPILL
    note: str = ""
    spills_fail: bool = False
    scenarios: list[str] = field(default_factory=list)




def _ptxas_log(kernel, arch: int, captured: str) -> str:
    """The ptxas -v log of a compiled kernel: the one Triton printed while compiling it, or,
    on a cache hit (no compile happened), our own run of the wheel's ptxas on its PTX with
    Triton's flags."""
    if any(f["registers"] is not None for f in parse_ptxas(captured)):
        return captured
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path if _accepts_arch(get_ptxas) else get_ptxas().path
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        res = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={gpu}", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True)
    return res.stdout + res.stderr


def _accepts_arch(get_ptxas) -> bool:
    import inspect

    return len(inspect.signature(get_ptxas).parameters) > 0


def _mma_path(ttgir: str) -> str:
    if "versionMajor = 3" in ttgir and "nvidia_mma" in ttgir:
        return "wgmma"
    if "nvidia_mma" in ttgir:
        return "mma"
    if re.search(r"\btt\.dot\b", ttgir):
        return "fma"
    return "-"


def compile_launch(job: tuple[Launch, int]) -> dict:
    """Compile one recorded launch for sm_<arch>; returns the measured fields of its Row."""
    launch, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    t0 = time.perf_counter()
    mod = importlib.import_module(launch.module)
    obj = getattr(mod, launch.kernel)
    fn = obj.fn if hasattr(obj, "configs") else obj
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    args = [_decode(a) for a in launch.args]
    kw = {k: _decode(v) for k, v in launch.kwargs.items()}
    out: dict[str, Any] = {}
    try:
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, opts = binder(*args, **kw)
        options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
        knobs = getattr(triton, "knobs", None)
        if knobs is not None and hasattr(knobs.nvidia, "dump_ptxas_log"):
            knobs.nvidia.dump_ptxas_log = True
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
        log = _ptxas_log(kernel, arch, buf.getvalue())
        funcs = parse_ptxas(log)
        regs = [f["registers"] for f in funcs if f["registers"] is not None]
        out.update(
            smem=int(kernel.metadata.shared) + sum(f["smem"] for f in funcs),
            registers=max(regs) if regs else -1,
            spill_stores=sum(f["spill_stores"] for f in funcs) if regs else -1,
            spill_loads=sum(f["spill_loads"] for f in funcs) if regs else -1,
            mma=_mma_path(kernel.asm.get("ttgir", "")),
        )
        if not regs:
            out["note"] = "ptxas -v log not found: registers/spills unknown"
    except Exception as exc:  # a compile error is a result, not a crash of the sweep
        root = exc
        while root.__cause__ is not None:  # Triton chains the real error (an assertion in
            root = root.__cause__          # its semantic layer, a NameError) behind it
        if root is not exc:
            frame = traceback.extract_tb(root.__traceback__)[-1] if root.__traceback__ else None
            where = f" ({os.path.basename(frame.filename)}:{frame.lineno}: {frame.line})" \
                if frame else ""
            exc = RuntimeError(f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                               f" ... caused by {type(root).__name__}: {root}{where}")
        msg = [m.strip() for m in f"{type(exc).__name__}: {exc}".strip().splitlines()]
        msg = [m for m in msg if m]
        # the first line names the place, the last one the cause (e.g. the NameError)
        note = msg[0] if len(msg) < 2 else f"{msg[0][:150]} ... {msg[-1][:200]}"
        out.update(verdict="ERROR", note=note)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _judge(row: Row) -> None:
    if row.verdict == "ERROR":
        return
    if row.smem > SMEM_LIMIT[row.arch]:
        row.verdict = "SMEM"
        row.note = f"{row.smem} B shared > {SMEM_LIMIT[row.arch]} B (sm_{row.arch} opt-in limit)"
    elif row.spills_fail and (row.spill_stores > 0 or row.spill_loads > 0):
        row.verdict = "SPILL"
        row.note = f"{row.spill_stores} B spill stores, {row.spill_loads} B spill loads"
    elif row.spill_stores < 0 and row.spills_fail:
        row.verdict = "ERROR"
        row.note = row.note or "no ptxas log"


def check_launches(launches: list[Launch], arch: int, spills_fail: bool = True) -> list[Row]:
    """Compile and judge recorded launches in this process (for tests of the checker)."""
    rows = []
    for ln in launches:
        row = Row("-", "-", ln.kernel, "-", arch, ln.config, "x".join(map(str, ln.grid)),
                  spills_fail=spills_fail)
        for k, v in compile_launch((ln, arch)).items():
            setattr(row, k, v)
        _judge(row)
        rows.append(row)
    return rows


# ---- the sweep --------------------------------------------------------------------------------

def plan(set_name: str, archs: list[int],
         ops: list[str]) -> list[tuple[Row, tuple[Launch, int]]]:
    """Record the launches of every scenario of ``set_name``; one (Row, compile job) per
    distinct compile (kernel, specialisation, config, arch), the Row listing every scenario
    that launches it."""
    import torch

    rows: dict[tuple, Row] = {}
    jobs: dict[tuple, tuple[Launch, int]] = {}
    for sc in scenarios(tuple(ops)):
        if set_name not in sc.sets:
            continue
        for dname in sc.dtypes:
            with record_launches() as launches:
                sc.run(getattr(torch, dname))
            for ln in launches:
                sig = [a for a in ln.args if isinstance(a, tuple)]
                for arch in archs:
                    # int arguments matter only through their specialisation (== 1, % 16)
                    ints = tuple((a == 1, a % 16 == 0) if isinstance(a, int) else None
                                 for a in ln.args)
                    key = (ln.module, ln.kernel, repr(sig), ints, repr(sorted(ln.kwargs.items())),
                           arch)
                    strict = sc.spills and dname in PAPER
                    if key not in rows:
                        rows[key] = Row(sc.op, sc.name, ln.kernel, dname, arch, ln.config,
                                        "x".join(map(str, ln.grid)), spills_fail=strict,
                                        scenarios=[sc.name])
                        jobs[key] = (ln, arch)
                    else:
                        r = rows[key]
                        r.spills_fail = r.spills_fail or strict
                        if sc.name not in r.scenarios:
                            r.scenarios.append(sc.name)
    return [(rows[k], jobs[k]) for k in rows]


def run(set_name: str, archs: list[int], ops: list[str], jobs: int) -> list[Row]:
    planned = plan(set_name, archs, ops)
    rows = [row for row, _ in planned]
    work = [job for _, job in planned]
    # fork keeps the imported modules; the workers never touch CUDA
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
        results = list(pool.map(compile_launch, work, chunksize=1))
    for row, res in zip(rows, results):
        for k, v in res.items():
            setattr(row, k, v)
        _judge(row)
    return rows


def _versions() -> dict[str, str]:
    import torch
    import triton

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "ptxas": _ptxas_version(),
        "note": "compiled ahead of time for the targets (no GPU); smem = Triton dynamic + "
                "ptxas static bytes; spills from ptxas -v",
    }


def _ptxas_version() -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        p = get_ptxas(90).path if _accepts_arch(get_ptxas) else get_ptxas().path
        out = subprocess.run([p, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+)", out)
        return m.group(1) if m else out.strip().splitlines()[-1]
    except Exception as exc:  # report, never fail on the version line
        return f"unknown ({exc})"


def _stem(set_name: str) -> str:
    """Output name: the set and the triton version (the GPU box runs another triton than CI)."""
    import triton

    return f"triton_aot_{set_name}_triton{triton.__version__}"


def write(rows: list[Row], out: Path, set_name: str, archs: list[int], wall: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    head = _versions()
    head.update(set=set_name, archs=archs, wall_seconds=round(wall, 1), compiles=len(rows),
                failures=sum(1 for r in rows if r.verdict))
    stem = _stem(set_name)
    with open(out / f"{stem}.json", "w") as f:
        json.dump({"header": head, "rows": [asdict(r) for r in rows]}, f, indent=1)
    lines = [f"# Triton kernels compiled ahead of time ({set_name} set)", ""]
    lines += [f"- {k}: {v}" for k, v in head.items()]
    lines += ["", "| op | kernel | dtype | sm | config | grid | smem B | regs | spill st/ld B "
              "| mma | verdict | scenarios |", "|" + "---|" * 12]
    for r in sorted(rows, key=lambda r: (r.op, r.kernel, r.dtype, r.arch, r.config)):
        verdict = r.verdict or "ok"
        if r.note:
            verdict += f": {r.note}"
        lines.append(
            f"| {r.op} | {r.kernel} | {r.dtype} | {r.arch} | {r.config} | {r.grid} | {r.smem} "
            f"| {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.mma} "
            f"| {verdict.replace('|', '/')} | {'; '.join(r.scenarios)} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=("ci", "full"), default="ci", dest="set_name")
    p.add_argument("--arch", default="80,90", help="comma-separated compute capabilities")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--out", type=Path, default=None,
                   help="folder for triton_aot_<set>_triton<version>.{md,json} (default: "
                        "benchmarks/results/aot)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--list", action="store_true", help="print the planned compiles and exit")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("triton_aot: run without TRITON_INTERPRET=1 (the kernels would be interpreted "
              "functions, which cannot be compiled)", file=sys.stderr)
        return 2
    if os.environ.get("ART_FAST_TRITON_CONFIGS", "all").strip().lower() not in ("", "all"):
        print("triton_aot: run without ART_FAST_TRITON_CONFIGS (it would hide every autotune "
              "config but the first)", file=sys.stderr)
        return 2
    try:
        archs = [int(a) for a in args.arch.split(",")]
    except ValueError:
        print(f"triton_aot: --arch must be comma-separated integers like 80,90, got "
              f"{args.arch!r}", file=sys.stderr)
        return 2
    bad = [a for a in archs if a not in SMEM_LIMIT]
    if bad:
        print(f"triton_aot: --arch supports {sorted(SMEM_LIMIT)}, got {bad}", file=sys.stderr)
        return 2
    if args.list:
        for r, _job in plan(args.set_name, archs, args.ops):
            print(f"{r.op:16s} {r.kernel:12s} {r.dtype:9s} sm_{r.arch} {r.config:40s} "
                  f"{'; '.join(r.scenarios)}")
        return 0
    t0 = time.perf_counter()
    rows = run(args.set_name, archs, args.ops, args.jobs)
    wall = time.perf_counter() - t0
    out = args.out or ROOT / "benchmarks" / "results" / "aot"
    write(rows, out, args.set_name, archs, wall)
    failed = [r for r in rows if r.verdict]
    for r in failed:
        print(f"triton_aot: {r.verdict} {r.op}.{r.kernel} {r.dtype} sm_{r.arch} [{r.config}] "
              f"({'; '.join(r.scenarios)}): {r.note}")
    print(f"triton_aot: {len(rows)} compiles, {len(failed)} failing, {wall:.0f} s; table in "
          f"{out / (_stem(args.set_name) + '.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
