"""Build of art_fast and its extension art_fast._C.

Build without isolation, against the installed torch (DESIGN §9):

    pip install --no-build-isolation -e .
    python setup.py build_ext --inplace

Environment:
  ART_FAST_CUDA=0|1     force the CUDA sources off / on (default: on when the installed torch
                        has CUDA, nvcc is found and csrc/cuda has sources).
  TORCH_CUDA_ARCH_LIST  CUDA architectures; "8.0;9.0" when unset and no GPU is visible.
  ART_FAST_MARCH        -march for the C++ CPU kernels (default "native": the kernels are built
                        where they run; set "" for a portable x86-64 build).
  MAX_JOBS              parallel compile jobs (default: bounded by the cores, at most 4).
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted(torch_mod) -> bool:
    flag = os.environ.get("ART_FAST_CUDA", "").strip()
    has_sources = bool(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if flag == "1" and not has_sources:
        raise SystemExit("ART_FAST_CUDA=1, but csrc/cuda has no CUDA sources in this version")
    if flag in ("0", "1"):
        return flag == "1"
    if not has_sources:
        return False
    if torch_mod.version.cuda is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None or shutil.which("nvcc") is not None


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("art_fast: torch is not importable; building without art_fast._C")
        return [], {}

    os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))
    march = os.environ.get("ART_FAST_MARCH", "native").strip()
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fno-tree-loop-distribute-patterns"]
    if march:
        cxx.append(f"-march={march}")
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    )
    define_macros = []
    if _cuda_wanted(torch):
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(
            os.path.relpath(p, ROOT)
            for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
        )
        define_macros.append(("ART_FAST_WITH_CUDA", None))
        ext = CUDAExtension(
            "art_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "art_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="art_fast",
    version="0.1.0",
    description="ART (Action-Region Tracking) for fine-grained video action recognition, "
    "with custom kernels for its hot paths",
    python_requires=">=3.10",
    packages=find_packages(include=["art_fast", "art_fast.*"]) + ["art_fast.kernels"],
    package_dir={"art_fast.kernels": "kernels"},
    package_data={"art_fast.model": ["configs/*.json"]},
    entry_points={"console_scripts": ["art-fast = art_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.6", "numpy", "pyyaml", "tqdm", "einops", "open_clip_torch", "av", "pillow"
    ],
    zip_safe=False,
)
