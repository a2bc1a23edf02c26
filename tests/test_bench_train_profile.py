"""benchmarks/bench_train.py --profile on the tiny config (1 warm-up + 1 profiled step, backend
torch) and its data-wait loop (1 + 1 steps on a binding set written for the run): every named
region is in the table with a time >= 0, the rows add up to the step, the Chrome trace is valid
JSON holding the model's ranges. No timing is asserted."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_train.py"


@functools.cache
def _load_script() -> ModuleType:
    """benchmarks/bench_train.py as a module (sys.path as it was afterwards)."""
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path
    return mod


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, dict[str, Any]]:
    """One --profile run; returns (the script module, the out folder, the JSON results)."""
    bt = _load_script()
    out = tmp_path_factory.mktemp("profile")
    cache = tmp_path_factory.mktemp("text_bank")
    rc = bt.main(["--device", "cpu", "--configs", "tiny", "--backends", "torch", "--profile",
                  "--profile-warmup", "1", "--profile-steps", "1", "--data-steps", "1",
                  "--data-warmup", "1", "--cache", str(cache), "--out", str(out)])
    assert rc == 0
    return bt, out, json.loads((out / "bench_train_profile.json").read_text())


def test_every_region_is_timed_and_the_rows_add_up(profiled):
    bt, out, res = profiled
    assert (out / "bench_train_profile.md").is_file()
    (prof,) = res["profiles"]
    assert (prof["config"], prof["backend"], prof["profiled_steps"]) == ("tiny", "torch", 1)
    rows = {r["region"]: r for r in prof["rows"]}
    for name in (*bt.STEP_REGIONS, *bt.FORWARD_REGIONS, "forward: rest", "other", "step"):
        assert name in rows, name
        assert rows[name]["ms"] >= 0, (name, rows[name]["ms"])
    for name in bt.FORWARD_REGIONS:  # every region ran (its own range was recorded)
        assert rows[name]["ms"] > 0 or name == "art.temporal", name
    assert rows["step"]["ms"] > 0 and rows["step"]["share"] == pytest.approx(1.0)
    top = [r for r in prof["rows"] if r["level"] == 0]
    assert [r["region"] for r in top] == [*bt.STEP_REGIONS, "other"]
    assert math.fsum(r["share"] for r in top) == pytest.approx(1.0, abs=1e-6)
    # the forward's parts add up to step.forward, the backward's split to step.backward
    fwd = [r for r in prof["rows"] if r["level"] == 1 and r["region"] in
           (*bt.FORWARD_REGIONS, "forward: rest")]
    assert math.fsum(r["ms"] for r in fwd) == pytest.approx(rows["step.forward"]["ms"])
    bwd = [r for r in prof["rows"] if r["level"] == 1 and r not in fwd]
    assert any(r["region"] == "backward of art.backbone" for r in bwd)
    assert math.fsum(r["ms"] for r in bwd) == pytest.approx(rows["step.backward"]["ms"])


def test_trace_is_valid_json_with_the_regions(profiled):
    _bt, out, res = profiled
    trace = out / res["profiles"][0]["trace"]
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"step", "step.backward", "art.backbone", "art.temporal", "art.loss.mtc"} <= names


def test_data_wait_is_measured(profiled):
    _bt, _out, res = profiled
    data = res["data_wait"]
    from art_fast.train.config import load_config

    cfg = load_config(REPO / "configs" / "binding_tiny.yaml")  # the default --data-config
    assert data is not None and data["steps"] == 1 and data["batch"] == cfg.train.batch_size
    assert data["frames"] == cfg.data.num_frames and data["num_workers"] == cfg.data.num_workers
    assert data["wait_ms"]["mean"] >= 0 and data["compute_ms"]["mean"] > 0
    assert 0 <= data["wait_share"] <= 1


def test_bench_train_adamw_rows(tmp_path):
    """The plain step table with two AdamW implementations: one row per (model, backend,
    implementation), the first losses equal across implementations (the optimiser acts after
    the first forward)."""
    out = tmp_path / "bt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--configs", "tiny", "--backends",
         "cpu", "--reps", "1", "--adamw", "fused", "for-loop", "--batch", "2", "--frames", "2",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "bench_train.json").read_text())["rows"]
    assert [(r["model"], r["adamw"], r["compile"]) for r in rows] == [
        ("bare backbone", "fused", "off"), ("ART", "fused", "off"),
        ("bare backbone", "for-loop", "off"), ("ART", "for-loop", "off")]
    art = [r for r in rows if r["model"] == "ART"]
    assert art[0]["first_loss"] == art[1]["first_loss"]
    assert "| AdamW |" in (out / "bench_train.md").read_text()
