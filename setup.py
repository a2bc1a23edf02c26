"""Build of art_fast and its extension art_fast._C (the metadata: pyproject.toml).

Build without isolation, against the installed torch (DESIGN §9):

    pip install --no-build-isolation -c constraints.txt -e ".[dev]"
    python setup.py build_ext --inplace

Environment:
  ART_FAST_CUDA=0|1     force the CUDA kernels off / on (default: on when the installed torch
                        has CUDA and a CUDA toolkit of the same major version is found; the
                        reason is printed when they are left out). With 1 the build fails,
                        saying why, when they cannot be built.
  CUDA_HOME             the CUDA toolkit root; when unset, found from nvcc (its --dryrun TOP,
                        which sees through wrapper scripts) or /usr/local/cuda*. Library
                        headers the toolkit lacks (cublas, cusparse, ... that torch's headers
                        include) are taken from the pip nvidia-* packages (site-packages/
                        nvidia/*/include), searched after the toolkit's own.
  TORCH_CUDA_ARCH_LIST  CUDA architectures; "8.0;9.0" when unset and no GPU is visible.
  ART_FAST_MARCH        -march for the C++ CPU kernels (default "native": the kernels are built
                        where they run; set "" for a portable x86-64 build).
  MAX_JOBS              parallel compile jobs (default: bounded by the cores, at most 4).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import site
import subprocess
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _valid_cuda_root(path: str | None) -> bool:
    """A CUDA toolkit root: bin/nvcc and the runtime headers (include/ or targets/*/include/)."""
    if not path or not os.path.isfile(os.path.join(path, "bin", "nvcc")):
        return False
    return os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) or bool(
        glob.glob(os.path.join(path, "targets", "*", "include", "cuda_runtime.h"))
    )


def _nvcc_top(nvcc: str) -> str | None:
    """The toolkit root that nvcc itself uses (its TOP), also behind a wrapper script."""
    try:
        res = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (res.stdout + res.stderr).splitlines():
        m = re.match(r"#\$ TOP=(.*)$", line.strip())
        if m:
            return os.path.realpath(m.group(1).strip().strip('"'))
    return None


def _find_cuda_home() -> tuple[str | None, str]:
    """(toolkit root or None, how it was found / why not). CUDA_HOME must be the root of the
    toolkit, not the folder of an nvcc wrapper (DESIGN §9): /usr/local/bin/nvcc that execs
    /usr/local/cuda-13.0/bin/nvcc gives /usr/local/cuda-13.0, not /usr/local."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        val = os.environ.get(var, "").strip()
        if val:
            if _valid_cuda_root(val):
                return os.path.realpath(val), f"${var}"
            print(f"art_fast: ignoring ${var}={val}: no bin/nvcc and cuda_runtime.h there")
    nvcc = shutil.which("nvcc")
    if nvcc:
        top = _nvcc_top(nvcc)
        if _valid_cuda_root(top):
            return top, f"TOP of {nvcc} --dryrun"
        real = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _valid_cuda_root(real):
            return real, f"the folder above {os.path.realpath(nvcc)}"
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _valid_cuda_root(cand):
            return os.path.realpath(cand), cand
    if nvcc:
        return None, f"nvcc is {nvcc}, but no CUDA toolkit root (bin/nvcc + cuda_runtime.h) found"
    return None, "nvcc is not on PATH and no CUDA toolkit was found (CUDA_HOME, /usr/local/cuda*)"


def _nvcc_version(cuda_home: str) -> str | None:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


# Headers that torch's CUDA headers include besides the runtime; a toolkit installed from the
# pip nvidia-* packages (or a minimal one) lacks them, and the pip wheels torch depends on
# ship them under site-packages/nvidia/*/include.
_LIBRARY_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h", "curand.h")


def _toolkit_includes(cuda_home: str) -> list[str]:
    return [os.path.join(cuda_home, "include")] + glob.glob(
        os.path.join(cuda_home, "targets", "*", "include")
    )


def _pip_cuda_includes(cuda_home: str) -> list[str]:
    """site-packages/nvidia/*/include folders that hold library headers the toolkit lacks;
    they go on the search path *after* the toolkit's (-isystem), so the toolkit's runtime
    headers win."""
    have = _toolkit_includes(cuda_home)
    missing = [h for h in _LIBRARY_HEADERS
               if not any(os.path.isfile(os.path.join(d, h)) for d in have)]
    if not missing:
        return []
    roots = []
    for p in [sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")] + (
        site.getsitepackages() if hasattr(site, "getsitepackages") else []
    ):
        if p and os.path.isdir(p) and p not in roots:
            roots.append(p)
    found: list[str] = []
    for root in roots:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if any(os.path.isfile(os.path.join(inc, h)) for h in missing) and inc not in found:
                found.append(inc)
    return found


def _cuda_config(torch_mod) -> tuple[bool, str, str | None]:
    """(build the CUDA sources?, why / why not, toolkit root). Raises SystemExit when
    ART_FAST_CUDA=1 and they cannot be built."""
    flag = os.environ.get("ART_FAST_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"ART_FAST_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "ART_FAST_CUDA=0", None
    has_sources = bool(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

    def no(reason: str) -> tuple[bool, str, None]:
        if flag == "1":
            raise SystemExit(f"art_fast: ART_FAST_CUDA=1, but the CUDA kernels cannot be built: "
                             f"{reason}")
        return False, reason, None

    if not has_sources:
        return no("csrc/cuda has no CUDA sources in this version")
    if torch_mod.version.cuda is None:
        return no(f"the installed torch {torch_mod.__version__} is a CPU-only build")
    cuda_home, how = _find_cuda_home()
    if cuda_home is None:
        return no(how)
    ver = _nvcc_version(cuda_home)
    if ver is None:
        return no(f"{cuda_home}/bin/nvcc --version failed")
    if ver.split(".")[0] != torch_mod.version.cuda.split(".")[0]:
        return no(f"nvcc {ver} ({cuda_home}) does not match torch's CUDA {torch_mod.version.cuda}")
    return True, f"CUDA_HOME={cuda_home} (from {how}), nvcc {ver}", cuda_home


def _extensions():
    try:
        import torch
    except ImportError:
        print("art_fast: torch is not importable; building without art_fast._C")
        return [], {}

    os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))
    march = os.environ.get("ART_FAST_MARCH", "native").strip()
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fno-tree-loop-distribute-patterns"]
    if march:
        cxx.append(f"-march={march}")
    # Every op registers itself (csrc/<op>.h: its contract and input checks, included by the
    # two others; csrc/cpu/<op>.cpp: schemas and CPU kernels; csrc/cuda/<op>.cu: CUDA kernels
    # and host code), so the sources are globbed: a new op is new files, no list to edit here.
    # csrc/ops.cpp is the module's entry point.
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    )
    define_macros = []
    use_cuda, why, cuda_home = _cuda_config(torch)
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when first imported (and would take
        # /usr/local from a /usr/local/bin/nvcc wrapper): set it before that import.
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(the visible GPU's)")
        extra_inc = _pip_cuda_includes(cuda_home)
        isystem = [f for inc in extra_inc for f in ("-isystem", inc)]
        print(f"art_fast: building the CUDA kernels: {why}; TORCH_CUDA_ARCH_LIST={arch}"
              + (f"; library headers from {extra_inc}" if extra_inc else ""))
        sources += sorted(
            os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
        )
        # In every source of a CUDA build: csrc/<op>.h then declares the op's CUDA launchers.
        define_macros.append(("ART_FAST_WITH_CUDA", None))
        ext = cpp_ext.CUDAExtension(
            "art_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx + isystem,
                                "nvcc": ["-O3", "-lineinfo"] + isystem},
            extra_link_args=["-fopenmp"],
        )
    else:
        print(f"art_fast: building the CPU kernels only (no CUDA kernels: {why})")
        import torch.utils.cpp_extension as cpp_ext

        ext = cpp_ext.CppExtension(
            "art_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_ext.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

# The metadata (name, version from art_fast.__version__, dependencies, the art-fast script,
# license) is in pyproject.toml; this file adds the package layout and the extension.
setup(
    packages=find_packages(include=["art_fast", "art_fast.*"]) + ["art_fast.kernels"],
    package_dir={"art_fast.kernels": "kernels"},
    package_data={"art_fast.model": ["configs/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
