"""pytest-benchmark suite of the hot-path ops at small sizes: each op x {eager, cpu} x fwd+bwd.

Runs only through ``make bench`` (``pytest benchmarks/ --benchmark-only``); ``benchmarks/
conftest.py`` keeps it out of every other pytest run, and ``pytest tests/`` never sees it. The
op table, inputs and the fwd+bwd step are :mod:`bench_ops`'s, so both benchmarks measure the
same thing. Timings are reported, never asserted on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ops

import art_fast

THREADS = int(os.environ.get("ART_FAST_BENCH_THREADS", "2"))
PROVIDERS = ("eager", "cpu")
BACKEND = {"eager": "torch", "cpu": "cpu"}

# Small shapes: the paper's structure (N = 196, k_region = 16, D = 256) at a tenth of the batch.
SHAPES: dict[str, dict[str, int]] = {
    "cross_attention": {"B": 16, "H": 8, "M": 16, "N": 196, "D": 32},
    "topk_regions": {"B": 128, "M": 16, "N": 196, "C": 32, "k": 16},
    "info_nce": {"G": 16, "M": 16, "N": 16, "D": 256},
}


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Any:
    """Benchmark with ``ART_FAST_BENCH_THREADS`` (default 2) intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", tuple(SHAPES))
def test_fwd_bwd(benchmark: Any, op: str, provider: str) -> None:
    """Forward, then ``torch.autograd.grad`` w.r.t. every float input, of one op."""
    spec = bench_ops.OPS[op]
    backend = BACKEND[provider]
    if backend not in art_fast.available_backends(op):
        pytest.skip(f"{op}/{provider}: {art_fast.backend_status()[backend][op]}")
    case = spec.make_case(SHAPES[op], torch.float32, "cpu", torch.Generator().manual_seed(0))

    def run() -> bench_ops.Outputs:
        return spec.op(*case.args, **case.kwargs, backend=backend)

    step = bench_ops.mode_runner(run, case, "fwd+bwd", torch.Generator().manual_seed(1))
    step()  # warm-up outside the measurement
    benchmark.group = f"{op} fwd+bwd {case.label}"
    benchmark.extra_info.update(op=op, provider=provider, shape=case.label, threads=THREADS)
    grads = benchmark(step)
    assert len(grads) == len(case.grad_inputs)
