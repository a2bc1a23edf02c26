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


def test_bench_load_train_mode(tmp_path):
    """--train: the real art-fast train loop (a tiny config on the tests' synthetic set),
    idle and loaded, its log parsed into a rate; the result pair is written."""
    import yaml
    from test_train_helpers import tiny_overrides

    overrides = dict(x.split("=", 1) for x in tiny_overrides(str(tmp_path / "unused")))
    config: dict = {}
    for key, value in overrides.items():
        if key in ("output_dir", "data.root", "train.max_steps", "train.log_every",
                   "train.progress"):
            continue
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, f"{ROOT}/benchmarks/bench_load.py", "--train", str(cfg_path),
         "--data", overrides["data.root"], "--train-steps", "20", "--threads-mode", "adaptive",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((out / "bench_load_train.json").read_text())["rows"]
    assert row["threads"] == "adaptive" and row["idle_ms"] > 0 and row["loaded_ms"] > 0
    assert abs(row["slowdown"] - row["loaded_ms"] / row["idle_ms"]) < 1e-9
    assert "art-fast train, idle and beside" in (out / "bench_load_train.md").read_text()


def test_bench_load_train_needs_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, f"{ROOT}/benchmarks/bench_load.py", "--train", "configs/x.yaml"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--train needs --data" in proc.stderr
