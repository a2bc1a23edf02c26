"""Every Triton kernel compiles for a real GPU (sm_80, sm_90) at the shapes its host functions
launch, within shared memory and without register spills at the paper shapes: checked ahead of
time with Triton's compiler and the wheel's ptxas, no GPU needed (benchmarks/triton_aot.py).
The interpreter the other Triton tests use accepts code the compiler rejects, so
this is the test that stands for "it compiles on a GPU" in CPU CI.

Both run the harness in a subprocess without TRITON_INTERPRET (this test process sets it, and
with it set the kernels are interpreted functions that cannot be compiled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "ART_FAST_TRITON_CONFIGS")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "benchmarks"),
                                         os.path.join(ROOT, "tests")])
    return env


def _require_triton_compiler() -> None:
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError as exc:  # torch without triton (a CPU-only wheel)
        pytest.skip(f"triton with its NVIDIA backend is not installed: {exc}")


def test_checker_catches_the_three_faults():
    """The harness is not a rubber stamp: a plain global in jit code is a compile ERROR, a tile
    too big for shared memory is SMEM on both targets, a tile too big for registers is SPILL."""
    _require_triton_compiler()
    script = textwrap.dedent("""
        import json
        import aot_faults, triton_aot
        with triton_aot.record_launches() as launches:
            aot_faults.launch_all()
        out = {}
        for arch in (80, 90):
            for r in triton_aot.check_launches(launches, arch):
                out[f"{r.kernel}/{arch}"] = [r.verdict, r.note, r.smem, r.spill_stores]
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for arch in (80, 90):
        verdict, note, _smem, _sp = got[f"_plain_global/{arch}"]
        assert verdict == "ERROR" and "OFFSET" in note, (arch, note)
        verdict, note, smem, _sp = got[f"_huge_smem/{arch}"]
        assert verdict == "SMEM" and smem > 232448, (arch, note)
        verdict, note, _smem, spills = got[f"_spiller/{arch}"]
        assert verdict == "SPILL" and spills > 0, (arch, note)


@pytest.mark.slow
def test_every_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    """The ``ci`` set: every kernel x every config the launchers and autotuners can pick, at the
    paper shapes, float32 and bfloat16, sm_80 and sm_90 (``make gpu-aot`` runs the full sweep:
    float16/float64, the regime limits, other D)."""
    _require_triton_compiler()
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "triton_aot.py"), "--set", "ci",
         "--out", str(tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800,
    )
    tables = list(tmp_path.glob("triton_aot_ci_triton*.json"))
    assert len(tables) == 1, res.stdout[-2000:] + res.stderr[-3000:]
    table = tables[0]
    rows = json.loads(table.read_text())["rows"]
    failures = [f"{r['verdict']} {r['op']}.{r['kernel']} {r['dtype']} sm_{r['arch']} "
                f"[{r['config']}]: {r['note']}" for r in rows if r["verdict"]]
    assert not failures, "\n".join(failures)
    assert res.returncode == 0, res.stderr[-3000:]
    # every op and both targets were compiled, and each row carries its resources
    assert {r["op"] for r in rows} == {"cross_attention", "topk_regions", "info_nce"}
    assert {r["arch"] for r in rows} == {80, 90}
    assert all(r["registers"] > 0 and r["spill_stores"] == 0 for r in rows
               if r["spills_fail"])


def test_first_config_mode_keeps_one_config_per_autotuner():
    """ART_FAST_TRITON_CONFIGS=first (what gpu_check.sh sets for its GPU test groups) leaves
    every autotuned kernel with exactly its list's first config; a bad value is refused."""
    script = textwrap.dedent("""
        import json
        from triton.runtime.autotuner import Autotuner
        from art_fast.kernels import cross_attention, info_nce, topk_regions
        out = {}
        for mod in (cross_attention, info_nce, topk_regions):
            for name, obj in vars(mod).items():
                tuners = obj.values() if isinstance(obj, dict) else [obj]
                for i, t in enumerate(tuners):
                    if isinstance(t, Autotuner):
                        out[f"{mod.__name__}.{name}.{i}"] = [str(c) for c in t.configs]
        print(json.dumps(out))
    """)
    got = {}
    for mode in ("all", "first"):
        env = _env()
        env["ART_FAST_TRITON_CONFIGS"] = mode
        res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        got[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["all"].keys() == got["first"].keys() and len(got["all"]) >= 6
    assert any(len(v) > 1 for v in got["all"].values())
    for name, cfgs in got["all"].items():
        assert got["first"][name] == cfgs[:1], name
    env = _env()
    env["ART_FAST_TRITON_CONFIGS"] = "fastest"
    res = subprocess.run([sys.executable, "-c", "import art_fast.kernels.info_nce"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "ART_FAST_TRITON_CONFIGS must be" in res.stderr
