"""ptxas resources of every CUDA kernel, checked without a GPU: each csrc/cuda/*.cu
is compiled for sm_80 and sm_90 with the build's nvcc flags (benchmarks/cuda_ptxas.py) and
``-Xptxas -v``; a compile error or a register spill in any kernel instantiation fails. The
table (kernel, arch, registers, shared memory, spills, stack, 64-bit divisions) is written as
Markdown + JSON to the test's temp dir; `make cuda-ptxas` writes it to
benchmarks/results/aot/. Skipped only when nvcc is absent."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cuda_ptxas  # noqa: E402

ARCHS = (80, 90)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if cuda_ptxas.find_nvcc() is None:
        pytest.skip("nvcc not found (CUDA_HOME, PATH, /usr/local/cuda*): the ptxas check needs "
                    "the CUDA toolkit")
    out = tmp_path_factory.mktemp("cuda_ptxas")
    res = cuda_ptxas.run(ARCHS)
    res["out_files"] = cuda_ptxas.write(res, str(out))
    print(f"\ncuda_ptxas: {len(res['compile_seconds'])} nvcc runs in {res['wall_seconds']} s "
          f"({res['jobs']} parallel); table in {out}")
    return res


def test_every_kernel_file_compiles(result):
    assert not result["errors"], "\n\n".join(
        f"{e['file']} sm_{e['arch']}:\n{e['log']}" for e in result["errors"])
    files = {os.path.relpath(p, ROOT) for p in cuda_ptxas.kernel_sources()}
    assert files, "no csrc/cuda/*.cu found"
    for f in files:
        for arch in ARCHS:
            kernels = [r for r in result["rows"]
                       if r["file"] == f and r["arch"] == f"sm_{arch}" and r["entry"]]
            assert kernels, f"ptxas reported no kernel of {f} for sm_{arch}"
            assert all(r["registers"] is not None for r in kernels), kernels


def test_no_register_spills(result):
    spills = [f"{r['kernel']} ({r['file']}, {r['arch']}): {r['spill_stores']} B stores, "
              f"{r['spill_loads']} B loads, {r['registers']} registers"
              for r in result["spills"]]
    assert not spills, "register spills:\n" + "\n".join(spills)


def test_the_flags_are_the_builds(result):
    """The compile uses setup.py's nvcc flags (read from it), torch's defaults and torch's
    include directories (the .cu files hold their host code too, which includes torch's
    headers)."""
    flags = result["flags"]
    nvcc, defines = cuda_ptxas.setup_flags()
    assert all(f in flags for f in nvcc + defines), (nvcc, defines, flags)
    assert all("-I" + d in flags for d in cuda_ptxas.torch_include_dirs()), flags
    assert "-O3" in flags and "-DART_FAST_WITH_CUDA" in defines
    assert any(f.startswith("-std=") for f in flags)
    assert "--expt-relaxed-constexpr" in flags


def test_the_large_regime_kernels_are_all_there(result):
    """Both info_nce large-regime paths (exact FMA, tensor cores) in every mode and dtype."""
    names = {(r["kernel"], r["arch"]) for r in result["rows"]}
    for arch in ARCHS:
        for mode in range(3):
            for t in ("float", "double", "__half", "__nv_bfloat16"):
                assert (f"tile_kernel<{t}, {mode}>", f"sm_{arch}") in names
            for t in ("float", "__half", "__nv_bfloat16"):
                assert (f"tc_tile_kernel<{t}, {mode}>", f"sm_{arch}") in names


def test_no_64bit_division_in_the_kernels(result):
    """Index math inside a (b, h) pair / group is 32-bit: no div/rem.s64/u64 in any kernel's
    PTX (each is a ~70-instruction subroutine call in SASS)."""
    div = [f"{r['kernel']} ({r['file']}, {r['arch']}): {r['div64']}"
           for r in result["rows"] if r["entry"] and r["div64"]]
    assert not div, "64-bit integer divisions:\n" + "\n".join(div)


def test_the_table_is_written(result):
    md, js = result["out_files"]
    with open(md, encoding="utf-8") as f:
        text = f.read()
    assert "| kernel |" in text and "tc_tile_kernel<__half, 0>" in text
    with open(js, encoding="utf-8") as f:
        data = json.load(f)
    assert data["rows"] and {"kernel", "arch", "registers", "smem", "spill_stores",
                             "spill_loads", "stack", "div64"} <= set(data["rows"][0])


def test_parse_ptxas_report():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]
ptxas info    : Function properties for _Z3barv
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z3bazv' for 'sm_90'
ptxas info    : Function properties for _Z3bazv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 352 bytes cmem[0]
"""
    rows = {r["mangled"]: r for r in cuda_ptxas.parse_ptxas(log)}
    assert rows["_Z3fooPf"] == {"mangled": "_Z3fooPf", "entry": True, "registers": 40,
                                "smem": 2048, "barriers": 1, "stack": 16, "spill_stores": 8,
                                "spill_loads": 12}
    assert rows["_Z3barv"]["entry"] is False and rows["_Z3barv"]["stack"] == 8
    assert rows["_Z3bazv"]["registers"] == 8 and rows["_Z3bazv"]["smem"] == 0
    assert cuda_ptxas.short_name(
        "art_fast::cuda::(anonymous namespace)::tile_kernel<float, 1>"
        "(art_fast::cuda::(anonymous namespace)::TileArgs<float>)") == "tile_kernel<float, 1>"
    ptx = (".visible .entry _Z1av(\n  div.s64 %rd1, %rd2, %rd3;\n}\n"
           ".func _Z1bv(\n  rem.u64 %rd1, %rd2, %rd3;\n  div.s32 %r1, %r2, %r3;\n}\n")
    assert cuda_ptxas.div64_counts(ptx) == {"_Z1av": 1, "_Z1bv": 1}
