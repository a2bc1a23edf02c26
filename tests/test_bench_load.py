"""benchmarks/bench_load.py runs end to end (one step per setting, idle and beside the
competing job) and writes its result pair; the competing process does not outlive it.
No timing assertions: the numbers belong to the benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests._util import ROOT


def test_bench_load_runs_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, f"{ROOT}/benchmarks/bench_load.py", "--steps", "1", "--env", "",
         "OMP_WAIT_POLICY=PASSIVE", "--threads-mode", "fixed", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((out / "bench_load.json").read_text())
    assert [r["setting"] for r in payload["rows"]] == ["(default)", "OMP_WAIT_POLICY=PASSIVE"]
    for r in payload["rows"]:
        assert r["idle_ms"] > 0 and r["loaded_ms"] > 0
        assert abs(r["slowdown"] - r["loaded_ms"] / r["idle_ms"]) < 1e-9
    assert "| OMP_WAIT_POLICY=PASSIVE | fixed |" in (out / "bench_load.md").read_text()
    if shutil.which("pgrep"):
        left = subprocess.run(["pgrep", "-f", "a @ a"], capture_output=True, text=True)
        assert left.stdout.strip() == "", "the competing job outlived the benchmark"


def test_bench_load_adaptive_row(tmp_path):
    """The adaptive mode runs the trainer's governor in the step loop and reports the thread
    count it ended at (within [1, the start count])."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, f"{ROOT}/benchmarks/bench_load.py", "--steps", "1", "--env", "",
         "--threads-mode", "adaptive", "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((out / "bench_load.json").read_text())["rows"]
    assert row["threads"] == "adaptive"
    assert 1 <= row["idle_threads"] <= 2 and 1 <= row["loaded_threads"] <= 2
