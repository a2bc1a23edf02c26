"""pytest-benchmark suite of the hot-path ops at small sizes: each op x {eager, cpu} x fwd+bwd.

Runs only through ``make bench`` (``pytest benchmarks/ --benchmark-only``); ``benchmarks/
conftest.py`` keeps it out of every other pytest run, and ``pytest tests/`` never sees it. The
ops and their inputs come from the op specs (``art_fast.ops.SPECS``), the fwd+bwd step from
:mod:`bench_ops`, so both benchmarks measure the same thing. Timings are reported, never
asserted on.
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
from art_fast.ops import SPECS

THREADS = int(os.environ.get("ART_FAST_BENCH_THREADS", "2"))
PROVIDERS = ("eager", "cpu")
BACKEND = {"eager": "torch", "cpu": "cpu"}



@pytest.fixture(scope="module", autouse=True)
def _threads() -> Any:
    """Benchmark with ``ART_FAST_BENCH_THREADS`` (default 2) intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", tuple(SPECS))
def test_fwd_bwd(benchmark: Any, op: str, provider: str) -> None:
    """Forward, then ``torch.autograd.grad`` w.r.t. every float input, of one op."""
    spec = SPECS[op]
    backend = BACKEND[provider]
    if backend not in art_fast.available_backends(op):
        pytest.skip(f"{op}/{provider}: {art_fast.backend_status()[backend][op]}")
    # the spec's "small" shapes: the paper's structure at a fraction of the batch
    case = spec.make_case(spec.bench_shapes["small"][0], torch.float32, "cpu",
                          torch.Generator().manual_seed(0))

    def run() -> bench_ops.Outputs:
        return spec.fn(*case.args, **case.kwargs, backend=backend)

    step = bench_ops.mode_runner(run, case, "fwd+bwd", torch.Generator().manual_seed(1))
    step()  # warm-up outside the measurement
    benchmark.group = f"{op} fwd+bwd {case.label}"
    benchmark.extra_info.update(op=op, provider=provider, shape=case.label, threads=THREADS)
    grads = benchmark(step)
    assert len(grads) == len(case.grad_inputs)
