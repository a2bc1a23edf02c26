"""The CUDA kernels are compiled in CI (no GPU there): every op has a CUDA kernel registered
whenever the extension was built with CUDA, and the build does include them wherever torch has
CUDA and nvcc is found (DESIGN §8). These tests run on CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from art_fast import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = [entry for entries in _ext.ENTRIES.values() for entry in entries]


def _compiled_with_cuda() -> bool:
    if not _ext.EXT_LOADED:
        pytest.skip(f"art_fast._C is not usable: {_ext.EXT_ERROR}")
    import art_fast._C as C

    return bool(C.compiled_with_cuda)


def _toolchain() -> str | None:
    """Why this environment can build the CUDA kernels (torch with CUDA and an nvcc), else None."""
    if torch.version.cuda is None:
        return None
    nvcc = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME", "")
    if nvcc is None and home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        nvcc = os.path.join(home, "bin", "nvcc")
    if nvcc is None:
        return None
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) and {nvcc}"


def test_ci_builds_the_cuda_kernels():
    """With ART_FAST_REQUIRE_CUDA_BUILD=1 (the Makefile's test target), an extension built
    without its CUDA kernels in an environment that can compile them is a failure, not a
    skip."""
    toolchain = _toolchain()
    if toolchain is None:
        pytest.skip("no CUDA toolchain here (torch without CUDA, or no nvcc)")
    built = _compiled_with_cuda()
    if os.environ.get("ART_FAST_REQUIRE_CUDA_BUILD", "") == "1":
        assert built, (
            f"this environment has {toolchain}, but art_fast._C was built without the CUDA "
            "kernels; rebuild with `ART_FAST_CUDA=1 python setup.py build_ext --inplace` "
            "(the error says why they cannot be built)"
        )
    elif not built:
        pytest.skip(f"art_fast._C was built without CUDA although {toolchain} are present; "
                    "set ART_FAST_REQUIRE_CUDA_BUILD=1 to make this a failure")


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cuda_kernel(op):
    if not _compiled_with_cuda():
        pytest.skip("art_fast._C was built without CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{op}", "CUDA"), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{op}", "CPU"), op
    assert _ext.has_kernel(op, "CUDA")


def test_cuda_backend_status_names_the_reason():
    """Built with CUDA but no GPU visible: the backend says so (and `auto` does not pick it);
    built without: it says that instead."""
    import art_fast

    if not _ext.EXT_LOADED:
        pytest.skip(f"art_fast._C is not usable: {_ext.EXT_ERROR}")
    status = art_fast.backend_status()["cuda"]
    if torch.cuda.is_available() and _compiled_with_cuda():
        assert all(v == "usable" for v in status.values()), status
    elif _compiled_with_cuda():
        assert all(v == "no CUDA device is visible" for v in status.values()), status
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available: no CUDA"):
            art_fast.cross_attention(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 3, 4),
                                     torch.randn(1, 1, 3, 4), backend="cuda")
    else:
        assert all("without CUDA kernels" in v for v in status.values()), status


def _setup_py(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "setup.py", *args], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=300)


def test_setup_reports_the_cuda_decision():
    """setup.py says whether it builds the CUDA kernels and why (without building anything);
    the toolkit root it finds holds bin/nvcc (not the folder of an nvcc wrapper script)."""
    res = _setup_py("--name", ART_FAST_CUDA="0")
    assert res.returncode == 0, res.stderr
    assert "CPU kernels only (no CUDA kernels: ART_FAST_CUDA=0)" in res.stdout
    bad = _setup_py("--name", ART_FAST_CUDA="yes")
    assert bad.returncode != 0 and "ART_FAST_CUDA must be 0 or 1" in bad.stdout + bad.stderr
    if _toolchain() is None:
        return
    res = _setup_py("--name")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("art_fast: building"))
    assert "building the CUDA kernels: CUDA_HOME=" in line, line
    home = line.split("CUDA_HOME=", 1)[1].split(" ", 1)[0]
    assert os.path.isfile(os.path.join(home, "bin", "nvcc")), line


def test_setup_fails_loudly_when_cuda_is_forced_but_impossible(tmp_path):
    """ART_FAST_CUDA=1 with a toolkit whose nvcc does not match torch's CUDA: the build stops
    and says why (with the default it would fall back to the CPU kernels, saying why)."""
    if torch.version.cuda is None:
        pytest.skip("torch without CUDA: covered by the CPU-only message")
    fake = tmp_path / "cuda"
    (fake / "bin").mkdir(parents=True)
    (fake / "include").mkdir()
    (fake / "include" / "cuda_runtime.h").write_text("")
    nvcc = fake / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 1.0, V1.0.0'\n")
    nvcc.chmod(0o755)
    res = _setup_py("--name", ART_FAST_CUDA="1", CUDA_HOME=str(fake))
    assert res.returncode != 0
    assert "ART_FAST_CUDA=1, but the CUDA kernels cannot be built" in res.stdout + res.stderr
    assert "nvcc 1.0" in res.stdout + res.stderr
    res = _setup_py("--name", CUDA_HOME=str(fake))
    assert res.returncode == 0, res.stderr
    assert "CPU kernels only (no CUDA kernels: nvcc 1.0" in res.stdout
