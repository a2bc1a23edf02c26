#!/usr/bin/env python
"""Benchmark the three hot-path ops of art_fast against their references (DESIGN §7).

The benchmark is :mod:`art_fast.bench_ops` (part of the package, so that
``art-fast bench`` runs from an installed art_fast; its docstring describes the providers,
modes, timing and outputs); this script is the same command from a source checkout, with this
checkout's art_fast, and re-exports the module's names (``Outputs``, ``mode_runner``,
``parse_args``, ...) for ``benchmarks/test_bench_ops.py`` and ``benchmarks/gpu_check.sh``.

Usage::

    python benchmarks/bench_ops.py [--device cpu|cuda] [--ops OP ...] [--providers P ...]
        [--modes M ...] [--dtype float32|bfloat16|float16] [--quick] [--out DIR] [--threads N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402,F401  (puts the repository root on sys.path)

from art_fast.bench_ops import *  # noqa: E402,F403  (every public name)
from art_fast.bench_ops import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
