"""benchmarks/gpu_check.sh, proven on CPU: its dry run executes every step that
needs no GPU (env, deps, the CUDA build decision, the install check) and records the exact
command of every GPU step; a missing dependency is named on one line; bad usage exits 2; the
script is `bash -n` and shellcheck clean. The CPU probes of the dry run (collection, the
sanitizer driver on CPU) are left to `make gpu-check-dry`: they would triple this test's time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# The per-op steps follow art_fast.ops.SPECS (the ops in the order of their module names).
STEPS = [
    "env", "deps", "cuda_build", "install", "selftest",
    "tests_cuda", "tests_triton_xattn", "tests_triton_nce", "tests_triton_topk", "tests_misc",
    "tests_gpu_other", "memcheck", "racecheck", "bench_ops_xattn", "bench_ops_nce",
    "bench_ops_topk", "bench_train_tiny", "bench_train_vitb16",
]
GPU_STEPS = STEPS[4:]


def _installed_from_checkout() -> bool:
    """The dry run reuses the installed package (GPU_CHECK_SKIP_BUILD=1): art_fast and
    art_fast.kernels must come from this checkout (`pip install -e .`, as `make install`)."""
    spec = importlib.util.find_spec("art_fast.kernels")
    import art_fast

    return (spec is not None and Path(spec.origin).resolve().is_relative_to(ROOT)
            and Path(art_fast.__file__).resolve().is_relative_to(ROOT))


needs_install = pytest.mark.skipif(
    not _installed_from_checkout(),
    reason="art_fast is not installed from this checkout (pip install --no-build-isolation -e .)")


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("GPU_CHECK_") and k != "TRITON_INTERPRET"}
    full = {**base, "PYTHON": sys.executable, "GPU_CHECK_SKIP_BUILD": "1",
            "GPU_CHECK_DRY_PROBES": "0", "GPU_CHECK_ALLOW_NO_CUDA": "1",
            "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=600)


def _rows(summary: str) -> dict[str, tuple[str, str]]:
    """step -> (status, note) from the table of summary.md."""
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\) \| ", line.strip().strip("|"))]
        if len(cells) == 5 and cells[0] in STEPS:
            rows[cells[0]] = (cells[1], cells[4])
    return rows


@needs_install
def test_dry_run(tmp_path):
    out = tmp_path / "out"
    res = _run(["--dry-run", str(out)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert list(rows) == STEPS, summary
    assert summary.startswith("# gpu_check: PASS (dry run)")
    assert rows["env"][0] == "PASS" and rows["deps"][0] == "PASS", summary
    assert rows["cuda_build"][0] in ("PASS", "SKIP"), summary  # SKIP: no nvcc / a mismatch
    assert rows["install"][0] == "SKIP" and "GPU_CHECK_SKIP_BUILD=1" in rows["install"][1]
    for step in GPU_STEPS:
        status, note = rows[step]
        if status == "SKIP":  # the reason is given
            assert step in ("tests_cuda", "bench_train_tiny", "bench_train_vitb16"), summary
            assert "CUDA kernels" in note or "open_clip" in note, note
        else:
            assert status == "DRYRUN" and "would run: " in note, (step, status, note)
            assert f"DRYRUN {step}: $ " in res.stdout

    # the sanitizer runs the driver of the repository (importable from it), not a file in OUT
    for tool in ("memcheck", "racecheck"):
        note = rows[tool][1]
        assert f"--tool {tool}" in note, note
        assert f"{ROOT}/benchmarks/sanitize_ops.py" in note, note
        assert f"PYTHONPATH={ROOT}" in note, note
        assert str(out) not in note, note
    assert (ROOT / "benchmarks" / "sanitize_ops.py").is_file()
    assert "--device cuda" in rows["bench_ops_xattn"][1]
    assert "-m art_fast.cli info --selftest" in rows["selftest"][1]
    assert "-p no:cacheprovider" in rows["tests_triton_nce"][1]
    # one Triton test step and one benchmark step per op of art_fast.ops.SPECS, on its one
    # test file (parametrised over every backend)
    from art_fast.ops import SPECS

    notes = " ".join(note for _status, note in rows.values())
    assert "test_triton_" not in notes
    triton_steps = [s for s in STEPS if s.startswith("tests_triton_")]
    bench_steps = [s for s in STEPS if s.startswith("bench_ops_")]
    assert len(triton_steps) == len(bench_steps) == len(SPECS)
    for op, t_step, b_step in zip(SPECS, triton_steps, bench_steps):
        assert f"-m gpu tests/test_{op}.py -k triton" in rows[t_step][1], rows[t_step]
        assert f"--ops {op} " in rows[b_step][1], rows[b_step]
        assert f"tests/test_{op}.py" in rows["tests_cuda"][1]
        assert f"--ignore=tests/test_{op}.py" in rows["tests_gpu_other"][1]

    # OUT stays flat: the summary and one archive with every step's log
    assert sorted(p.name for p in out.iterdir()) == ["results.tar.gz", "summary.md"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    for step in STEPS:
        assert f"gpu_check/{step}.log" in names, sorted(names)
    assert {"gpu_check/summary.md", "gpu_check/console.log"} <= names
    assert not list(tmp_path.glob("gpu_check.*")), "the work folder was not removed"


@needs_install
def test_missing_dependency_is_named(tmp_path):
    out = tmp_path / "out"
    res = _run(["--dry-run", str(out)], tmp_path,
               GPU_CHECK_EXTRA_REQUIRED="art_fast_no_such_module_xyz")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if "missing required Python module" in x]
    assert len(lines) == 1 and "art_fast_no_such_module_xyz" in lines[0], res.stderr
    assert "pip cannot download" in lines[0]
    rows = _rows((out / "summary.md").read_text())
    assert list(rows) == STEPS
    assert rows["deps"][0] == "FAIL" and "art_fast_no_such_module_xyz" in rows["deps"][1]
    for step in STEPS[2:]:
        assert rows[step][0] == "FAIL", (step, rows[step])
        assert rows[step][1] == ("not run: missing required module(s): "
                                 "art_fast_no_such_module_xyz (see deps)"), rows[step]


@needs_install
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_gpu_run_without_a_gpu_fails_clearly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real run is not a CPU test")
    out = tmp_path / "out"
    res = _run([str(out)], tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _rows((out / "summary.md").read_text())
    for step in GPU_STEPS:
        if rows[step][0] == "SKIP":
            continue
        assert rows[step] == ("FAIL", "not run: no CUDA device is visible to torch (on a machine "
                              "without a GPU, use --dry-run)"), (step, rows[step])


@pytest.mark.parametrize("args,env", [
    ([], {}),
    (["a", "b"], {}),
    (["--bogus", "OUT"], {}),
    (["OUT"], {"GPU_CHECK_DRY_RUN": "maybe"}),
    (["OUT"], {"GPU_CHECK_BUDGET": "ten"}),
    (["OUT"], {"GPU_CHECK_BOX_install": "-1"}),
])
def test_bad_usage_exits_2(tmp_path, args, env):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    res = _run(args, tmp_path, **env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "usage: benchmarks/gpu_check.sh" in res.stderr
    assert not (tmp_path / "OUT").exists() or not any((tmp_path / "OUT").iterdir())
    assert not list(tmp_path.glob("gpu_check.*")), "a work folder was left behind"


def test_help(tmp_path):
    res = _run(["--help"], tmp_path)
    assert res.returncode == 0
    assert "--dry-run" in res.stdout and "summary.md" in res.stdout


def test_script_is_clean():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
