"""What every benchmark script shares: ``art_fast.bench_harness``, re-exported.

The harness moved into the package (``art-fast bench`` runs from an installed
art_fast); this module keeps the scripts' ``import _harness as h`` working. Importing it puts
the repository root on ``sys.path`` first (art_fast without an install), so the scripts of this
checkout use this checkout's art_fast. See :mod:`art_fast.bench_harness` for the contents:
timing (``time_cpu``, ``time_cuda``, ``time_wall``), peak memory (``peak_bytes``), the
environment header (``environment`` and its parts), Markdown (``markdown``, ``table``,
``document``, ``fmt``, ``Column``) and the atomic result files (``write_results``,
``atomic_write``, ``write_json``, ``write_text``). ``ROOT`` and ``RESULTS`` here are always this
checkout's.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from art_fast.bench_harness import *  # noqa: E402,F403  (every public name)

ROOT = _ROOT
RESULTS = ROOT / "benchmarks" / "results"
