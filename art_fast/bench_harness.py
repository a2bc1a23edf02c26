"""What every benchmark script shares: timing, peak memory, the environment header and the
result files. Part of the package (``art-fast bench`` runs from an
installed art_fast); ``benchmarks/_harness.py`` re-exports it for the scripts of a checkout.

- Timing: :func:`time_cpu` (``torch.utils.benchmark`` blocked autorange), :func:`time_cuda`
  (``triton.testing.do_bench``, imported only when called; CUDA events without triton), both
  returning a :class:`Timing`; :func:`time_wall` for whole steps (wall clock, ``reps`` calls).
- Peak memory: :func:`peak_bytes` (the CUDA caching allocator's peak above the live bytes, or on
  CPU the peak of the torch CPU allocator's bytes from the profiler's memory events).
- Environment: :func:`environment`, the one header dict every result file starts from (device,
  CPU cores, threads, python / torch / triton / CUDA / art_fast versions, git commit, date in
  UTC, the load other work put on the machine), and its parts (:func:`device_name`,
  :func:`device_slug`, :func:`cpu_model`, :func:`core_count`, :func:`version`,
  :func:`git_commit`, :func:`cpu_busy`, :func:`utc_now`).
- Output: :func:`markdown` (a title, settings blocks, one table of :class:`Column` cells, notes),
  :func:`table`, :func:`document` and :func:`fmt` for scripts with another layout, and
  :func:`write_results`, the ``<stem>.json`` + ``<stem>.md`` pair, each file written to a temporary
  file in the same folder and renamed over the old one (:func:`atomic_write`): a reader never sees
  half a file, and a failure while writing leaves the previous result as it was.

Source checkout or installed package: :data:`ROOT` is the repository root when art_fast runs
from a checkout (an editable install, or the tree on ``sys.path``), else None. Results then go
by default to ``<ROOT>/benchmarks/results/<device-slug>``, else to
``./benchmarks/results/<device-slug>`` under the current directory; :func:`git_commit` reads
the checkout's commit, and is None for an installed package.

The scripts of ``benchmarks/`` import this module as ``_harness`` (``benchmarks/_harness.py``,
which also puts the repository root on ``sys.path``: art_fast without an install) and import
no other script.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from ._cpu import cpu_times


def _source_root() -> Path | None:
    """The repository root above this package when it is a source checkout (setup.py and
    benchmarks/ beside art_fast/), else None (an installed package)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "setup.py").is_file() and (root / "benchmarks").is_dir() else None


ROOT: Path | None = _source_root()
"""The repository root of a source checkout, or None for an installed package."""
RESULTS: Path | None = None if ROOT is None else ROOT / "benchmarks" / "results"
"""Where results go by default in a source checkout (None for an installed package: then
:func:`results_dir` uses ``./benchmarks/results``)."""
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Block = str | Sequence[str]  # a paragraph of a Markdown document: one line, or several


# --------------------------------------------------------------------------------------------
# Timing and peak memory.
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Median, spread (20th / 80th percentile on CUDA, 25th / 75th on CPU) and minimum, in ms;
    ``runs`` is the number of calls timed (-1 when ``do_bench`` does not say).

    The minimum is the robust figure on a busy machine; the median is the one reported.
    """

    median_ms: float
    lo_ms: float
    hi_ms: float
    min_ms: float
    runs: int


def time_cpu(fn: Callable[[], Any], threads: int, min_run_time: float) -> Timing:
    """Time ``fn()`` with ``torch.utils.benchmark.Timer.blocked_autorange`` on ``threads``
    threads for at least ``min_run_time`` seconds: median and quartiles over the blocks."""
    from torch.utils.benchmark import Timer

    m = Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time
    )
    times = sorted(m.times)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    runs = len(times) * m.number_per_run
    return Timing(m.median * 1e3, q[0] * 1e3, q[2] * 1e3, times[0] * 1e3, runs)


def time_cuda(fn: Callable[[], Any], rep_ms: float) -> Timing:
    """Time ``fn()`` on the current CUDA device: ``triton.testing.do_bench`` (CUDA events, L2
    flushed; median, 20th / 80th percentile, minimum) over ``rep_ms`` milliseconds, or CUDA
    events around each call (at least 5) when triton is not installed."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        med, lo, hi, low = do_bench(
            fn, warmup=max(rep_ms / 4, 5), rep=rep_ms, quantiles=[0.5, 0.2, 0.8, 0.0]
        )
        return Timing(med, lo, hi, low, -1)
    fn()
    torch.cuda.synchronize()
    times = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while time.perf_counter() < t_end or len(times) < 5:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    q = statistics.quantiles(times, n=5, method="inclusive")
    return Timing(statistics.median(times), q[0], q[3], min(times), len(times))


def time_wall(
    fn: Callable[[], Any], warmup: int, reps: int, sync: Callable[[], Any] | None = None
) -> list[float]:
    """``warmup`` untimed calls of ``fn()``, then the wall-clock seconds of each of ``reps``
    calls; ``sync`` (e.g. ``torch.cuda.synchronize``) runs after every call, inside the time."""
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def peak_bytes(fn: Callable[[], Any], device: str) -> int | None:
    """Peak bytes allocated by one call of ``fn()`` above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, less ``memory_allocated`` before.
    CPU: the peak of the running sum of the torch CPU allocator's memory events recorded by the
    profiler during the call (scratch memory a kernel takes outside the torch allocator is not
    seen). None when the private profiler API is not usable.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        return max(itertools.accumulate((e.nbytes() for e in events), initial=0))
    except Exception:  # noqa: BLE001  (private profiler API: n/a rather than fail)
        return None


# --------------------------------------------------------------------------------------------
# Environment header.
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's answer)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def core_count() -> int:
    """CPU cores this process may run on."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_name(device: str) -> str:
    """Human-readable name of ``device`` (``cpu`` or ``cuda``): the GPU's, or the CPU model."""
    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


def device_slug(device: str) -> str:
    """Folder name for the results, e.g. ``cpu-amd-epyc-2c`` or ``nvidia-h200``."""
    name = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    return name if device == "cuda" else f"cpu-{name}-{core_count()}c"


def results_dir(device: str) -> Path:
    """The default output folder of a script: ``benchmarks/results/<device-slug>`` in the
    source checkout (:data:`RESULTS`), or under the current directory for an installed
    package."""
    base = RESULTS if RESULTS is not None else Path.cwd() / "benchmarks" / "results"
    return base / device_slug(device)


def version(*dists: str) -> str | None:
    """The installed version of the first of the distributions ``dists`` that is installed
    (None when none is)."""
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def git_commit(short: bool = False) -> str | None:
    """The repository's HEAD commit (abbreviated with ``short``), with ``-dirty`` appended when
    tracked files are modified; None when git cannot tell or art_fast is an installed package
    (no checkout: the commit of a repository it happens to lie in would be another one's)."""
    if ROOT is None:
        return None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty.strip() else "")) or None


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all cores busy over the next ``seconds`` while this process sleeps: the
    load other work puts on the machine (None when unknown)."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def utc_now(fmt: str = DATE_FORMAT) -> str:
    """The current date and time in UTC, formatted with ``fmt`` (default ISO 8601, ``Z``)."""
    return dt.datetime.now(dt.timezone.utc).strftime(fmt)


def environment(
    device: str,
    busy: Any = None,
    packages: Mapping[str, str | Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The header every result file starts from, in this order: ``device`` (``cpu`` /
    ``cuda``), ``device_name``, ``cores``, ``threads`` (torch's intra-op threads), the versions
    of ``python``, ``torch``, ``triton``, ``cuda`` (torch's CUDA, None on a CPU build), of each
    of ``packages`` (key -> distribution name, or names tried in order), and ``art_fast``,
    then ``git_commit``, ``date_utc`` (:data:`DATE_FORMAT`) and ``other_cpu_busy`` (``busy``:
    a :func:`cpu_busy` reading taken by the caller, or several in a dict). A script adds its
    own settings to the dict it gets."""
    import art_fast

    head: dict[str, Any] = {
        "device": device,
        "device_name": device_name(device),
        "cores": core_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "cuda": torch.version.cuda,
    }
    for key, dists in (packages or {}).items():
        head[key] = version(*([dists] if isinstance(dists, str) else dists))
    head.update(
        art_fast=art_fast.__version__,
        git_commit=git_commit(),
        date_utc=utc_now(),
        other_cpu_busy=busy,
    )
    return head


# --------------------------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------------------------


def fmt(x: Any, spec: str = "", missing: str = "n/a") -> str:
    """``format(x, spec)``, or ``missing`` when ``x`` is None or a float NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return format(x, spec)


@dataclass(frozen=True)
class Column:
    """One column of a Markdown table: its title, the cell's value (a row key, or a function of
    the row), the format spec of that value (:func:`fmt`), the text for a missing value and
    whether the column is right-aligned."""

    title: str
    value: str | Callable[[Mapping[str, Any]], Any]
    spec: str = ""
    missing: str = "n/a"
    right: bool = False

    def cell(self, row: Mapping[str, Any]) -> str:
        """The formatted cell of ``row``."""
        x = row[self.value] if isinstance(self.value, str) else self.value(row)
        return fmt(x, self.spec, self.missing)


def table(columns: Sequence[Column], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The lines of a Markdown table: the titles, the ``|---|`` rule (``---:`` for a
    right-aligned column), one line per row."""
    lines = [
        "| " + " | ".join(c.title for c in columns) + " |",
        "|" + "".join("---:|" if c.right else "---|" for c in columns),
    ]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return lines


def document(*blocks: Block | None) -> str:
    """A Markdown document: the blocks (a line, or a list of lines) separated by one blank
    line, empty ones and None left out, ending with a newline."""
    lines: list[str] = []
    for block in blocks:
        if not block:
            continue
        if lines:
            lines.append("")
        lines += [block] if isinstance(block, str) else list(block)
    return "\n".join(lines) + "\n"


def markdown(
    title: str | None,
    intro: Sequence[Block],
    columns: Sequence[Column],
    rows: Iterable[Mapping[str, Any]],
    outro: Sequence[Block] = (),
) -> str:
    """A result document: ``# title`` (none when None), the ``intro`` blocks (settings,
    environment), the table of ``rows``, the ``outro`` blocks (notes), blank-line separated."""
    return document(
        None if title is None else f"# {title}", *intro, table(columns, rows), *outro
    )


# --------------------------------------------------------------------------------------------
# Result files.
# --------------------------------------------------------------------------------------------


def atomic_write(path: Path | str, write: Callable[[IO[str]], Any]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, then
    rename it over ``path`` (``os.replace``): the file appears whole or not at all; when
    ``write`` raises, the temporary file is removed and ``path`` stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_json(path: Path | str, payload: Any) -> Path:
    """``payload`` as JSON (indent 1, trailing newline), written with :func:`atomic_write`."""

    def write(f: IO[str]) -> None:
        json.dump(payload, f, indent=1)
        f.write("\n")

    return atomic_write(path, write)


def write_text(path: Path | str, text: str) -> Path:
    """``text`` written with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text))


def write_results(
    out_dir: Path | str, stem: str, payload: Mapping[str, Any], md: str
) -> tuple[Path, Path]:
    """The result pair ``<out_dir>/<stem>.json`` (``payload``) and ``<out_dir>/<stem>.md``
    (``md``), each written atomically; ``out_dir`` is created when missing. Returns both
    paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / f"{stem}.json", payload), write_text(out / f"{stem}.md", md)
