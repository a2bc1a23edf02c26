"""benchmarks/_harness.py, the part every benchmark script shares: the Markdown
writer on hand-made rows, the atomic result writer, the environment header, CPU timing and
CPU peak memory."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "benchmarks" / "_harness.py"


@functools.cache
def _load():
    """benchmarks/_harness.py as a module (sys.path as it was afterwards), registered under its
    name as the scripts import it (its dataclasses look their module up there)."""
    if "_harness" in sys.modules:
        return sys.modules["_harness"]
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("_harness", HARNESS)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_harness"] = mod
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop("_harness", None)
        raise
    finally:
        sys.path[:] = path
    return mod


# --------------------------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------------------------


def test_fmt():
    h = _load()
    assert h.fmt(None) == "n/a"
    assert h.fmt(float("nan"), ".2f") == "n/a"
    assert h.fmt(None, ".2f", missing="") == ""
    assert h.fmt(1.005, ".1f") == "1.0"
    assert h.fmt(3) == "3"
    assert h.fmt(1234567, ",") == "1,234,567"
    assert h.fmt("text") == "text"


def test_markdown_document_from_hand_made_rows():
    h = _load()
    cols = [
        h.Column("name", "name"),
        h.Column("ms", "ms", ".2f"),
        h.Column("n", "n", right=True),
        h.Column("share", lambda r: None if r["share"] is None else 100 * r["share"], "+.1f",
                 missing=""),
        h.Column("range", lambda r: f"{r['lo']}-{r['hi']}"),
    ]
    rows = [
        {"name": "a", "ms": 1.234, "n": 3, "share": 0.5, "lo": 1, "hi": 2},
        {"name": "b", "ms": None, "n": 10, "share": None, "lo": 0, "hi": 0},
        {"name": "c", "ms": float("nan"), "n": 0, "share": -0.0123, "lo": 5, "hi": 9},
    ]
    md = h.markdown("Title", ["line one", ["two a", "two b"]], cols, rows,
                    ["Notes:", ["- x", "- y"]])
    expected = (
        "# Title\n"
        "\n"
        "line one\n"
        "\n"
        "two a\n"
        "two b\n"
        "\n"
        "| name | ms | n | share | range |\n"
        "|---|---|---:|---|---|\n"
        "| a | 1.23 | 3 | +50.0 | 1-2 |\n"
        "| b | n/a | 10 |  | 0-0 |\n"
        "| c | n/a | 0 | -1.2 | 5-9 |\n"
        "\n"
        "Notes:\n"
        "\n"
        "- x\n"
        "- y\n"
    )
    assert md == expected


def test_markdown_without_title_or_notes():
    h = _load()
    md = h.markdown(None, ["settings"], [h.Column("x", "x", ".1f", right=True)],
                    [{"x": 0.25}, {"x": 2}])
    assert md == "settings\n\n| x |\n|---:|\n| 0.2 |\n| 2.0 |\n"
    # empty blocks and None are left out of a document, no doubled blank lines
    assert h.document("a", None, [], "", ["b", "c"]) == "a\n\nb\nc\n"
    assert h.table([h.Column("x", "x")], []) == ["| x |", "|---|"]


# --------------------------------------------------------------------------------------------
# Result files.
# --------------------------------------------------------------------------------------------


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_results_pair(tmp_path):
    h = _load()
    out = tmp_path / "new" / "folder"  # created when missing
    payload = {"header": {"device": "cpu", "busy": None}, "rows": [{"x": 1.5}, {"x": 2}]}
    md = "# t\n\n| x |\n|---|\n"
    jpath, mpath = h.write_results(out, "bench", payload, md)
    assert (jpath, mpath) == (out / "bench.json", out / "bench.md")
    text = jpath.read_text()
    assert text == json.dumps(payload, indent=1) + "\n"
    assert json.loads(text) == payload
    assert mpath.read_text() == md
    assert _leftovers(out, {"bench.json", "bench.md"}) == []
    # the files get the ordinary mode (umask applied), not a temporary file's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert jpath.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_keeps_the_old_file_while_writing(tmp_path):
    h = _load()
    path = tmp_path / "r.md"
    path.write_text("old\n")
    seen = []

    def write(f):
        f.write("new, ")
        f.flush()
        seen.append(path.read_text())  # what a reader sees in the middle of the write
        f.write("whole\n")

    h.atomic_write(path, write)
    assert seen == ["old\n"]
    assert path.read_text() == "new, whole\n"
    assert _leftovers(tmp_path, {"r.md"}) == []


def test_failed_json_write_leaves_the_old_file(tmp_path, monkeypatch):
    h = _load()
    h.write_results(tmp_path, "r", {"rows": [1, 2, 3]}, "old md\n")
    before = (tmp_path / "r.json").read_bytes()

    # a value json cannot encode, deep in the payload: the encoder fails halfway through
    with pytest.raises(TypeError):
        h.write_json(tmp_path / "r.json", {"rows": [1, 2], "bad": object()})
    assert (tmp_path / "r.json").read_bytes() == before
    assert _leftovers(tmp_path, {"r.json", "r.md"}) == []

    def dump_then_fail(obj, f, **kwargs):
        f.write('{"rows": [')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", dump_then_fail)
    with pytest.raises(OSError, match="disk full"):
        h.write_results(tmp_path, "r", {"rows": []}, "new md\n")
    assert (tmp_path / "r.json").read_bytes() == before
    assert (tmp_path / "r.md").read_text() == "old md\n"  # the pair's md is not written either
    assert _leftovers(tmp_path, {"r.json", "r.md"}) == []


# --------------------------------------------------------------------------------------------
# Environment header.
# --------------------------------------------------------------------------------------------


def test_environment_header():
    h = _load()
    head = h.environment("cpu", busy=0.25, packages={
        "pytest": "pytest", "first_found": ("no-such-dist-art-fast-test", "pytest"),
        "absent": "no-such-dist-art-fast-test"})
    for key in ("device", "device_name", "cores", "threads", "python", "torch", "triton", "cuda",
                "art_fast", "git_commit", "date_utc", "other_cpu_busy"):
        assert key in head, key
    assert head["device"] == "cpu" and head["device_name"]
    assert head["cores"] >= 1 and head["threads"] == torch.get_num_threads()
    assert head["torch"] == torch.__version__
    import art_fast

    assert head["art_fast"] == art_fast.__version__
    assert head["pytest"] == head["first_found"] == importlib.metadata.version("pytest")
    assert head["absent"] is None
    assert head["other_cpu_busy"] == 0.25
    date = dt.datetime.strptime(head["date_utc"], "%Y-%m-%dT%H:%M:%SZ")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert abs((now - date).total_seconds()) < 600
    json.dumps(head)  # the header goes into the JSON file as it is


def test_device_slug_and_cpu_busy():
    h = _load()
    slug = h.device_slug("cpu")
    assert slug.startswith("cpu-") and slug.endswith(f"-{h.core_count()}c")
    assert all(c.isalnum() or c == "-" for c in slug)
    assert h.results_dir("cpu") == REPO / "benchmarks" / "results" / slug
    busy = h.cpu_busy(0.05)
    assert busy is None or 0.0 <= busy <= 1.0


# --------------------------------------------------------------------------------------------
# Timing and peak memory.
# --------------------------------------------------------------------------------------------


def test_time_cpu_trivial_function():
    h = _load()
    x = torch.ones(64)
    t = h.time_cpu(lambda: x + 1, threads=1, min_run_time=0.02)
    values = (t.median_ms, t.lo_ms, t.hi_ms, t.min_ms)
    assert all(math.isfinite(v) and v > 0 for v in values), t
    assert t.min_ms <= t.lo_ms <= t.median_ms <= t.hi_ms, t
    assert t.runs >= 1


def test_time_wall_counts_calls():
    h = _load()
    calls, syncs = [], []
    times = h.time_wall(lambda: calls.append(1), warmup=2, reps=3, sync=lambda: syncs.append(1))
    assert len(times) == 3 and all(math.isfinite(s) and s >= 0 for s in times)
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert len(syncs) == 4  # after the warm-up, then after each timed call


def test_peak_bytes_cpu_sees_a_known_allocation():
    h = _load()
    size = 8 * 2**20

    def allocate():
        t = torch.ones(size, dtype=torch.uint8)
        return int(t[-1])

    peak = h.peak_bytes(allocate, "cpu")
    assert peak is not None and peak >= size, peak
    quiet = h.peak_bytes(lambda: None, "cpu")
    assert quiet is not None and quiet < size, quiet
