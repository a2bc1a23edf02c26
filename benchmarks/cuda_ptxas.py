"""ptxas resource table of the CUDA kernels (csrc/cuda/*.cu), without a GPU.

Each kernel file is compiled to a cubin per architecture with ``nvcc -cubin -Xptxas -v`` and
the nvcc flags of the real build (setup.py's ``"nvcc"`` list and define_macros, torch's
COMMON_NVCC_FLAGS, default -std and include directories, read from the sources and found on
disk without importing torch); the ptxas report is parsed per kernel instantiation: registers,
spill stores / loads (bytes), static shared memory, stack frame, barriers. A spill or a compile
error is a failure.

    python benchmarks/cuda_ptxas.py --out benchmarks/results/aot --arch 80,90

writes cuda_ptxas.md and cuda_ptxas.json to --out (`make cuda-ptxas`); exit status 1 on a
spill or a compile error, 2 when nvcc (or torch's headers) is not found.
tests/test_cuda_ptxas.py runs the same (part of `make test`).

Each .cu file holds its op's kernels and, after them, its launchers and registration (the host
functions are in csrc/<op>.h), so it includes torch's headers (ATen, c10, torch/library.h): the
compile gets torch's include directories as the build does
(torch.utils.cpp_extension.include_paths(), computed from where torch is installed; Python's
headers are not needed, no torch/extension.h there). The host code adds no kernel: the table
holds the kernels only. Dynamic shared memory (extern __shared__) is sized at launch and is not
in the table.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ARCHS = (80, 90)

# torch.utils.cpp_extension.COMMON_NVCC_FLAGS as of torch 2.x (used when torch's source
# cannot be read).
_FALLBACK_COMMON = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]


# ---- toolchain ---------------------------------------------------------------------------------
def _valid_root(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc"))


def find_nvcc() -> str | None:
    """nvcc of $CUDA_HOME / $CUDA_PATH, else the one on PATH, else /usr/local/cuda*/bin."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        val = os.environ.get(var, "").strip()
        if _valid_root(val):
            return os.path.join(val, "bin", "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _valid_root(cand):
            return os.path.join(cand, "bin", "nvcc")
    return None


def toolkit_root(nvcc: str) -> str:
    """The toolkit root nvcc uses (its --dryrun TOP: sees through a wrapper script)."""
    try:
        res = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        for line in (res.stdout + res.stderr).splitlines():
            m = re.match(r"#\$ TOP=(.*)$", line.strip())
            if m:
                return os.path.realpath(m.group(1).strip().strip('"'))
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"release (\d+\.\d+), (V[\d.]+)", out)
    return f"{m.group(1)} ({m.group(2)})" if m else "?"


def find_demangler(root: str | None) -> str | None:
    """cu++filt of the toolkit, else one on PATH, else GNU c++filt (kernel names use the
    Itanium mangling), else None (mangled names are kept)."""
    cands = [os.path.join(root, "bin", "cu++filt")] if root else []
    for c in cands:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("cu++filt") or shutil.which("c++filt")


# ---- the build's flags ---------------------------------------------------------------------------
def setup_flags(setup_py: str = os.path.join(ROOT, "setup.py")) -> tuple[list[str], list[str]]:
    """(setup.py's literal nvcc flags, its -D defines), read with ast (setup.py runs setup()
    on import). The isystem flags it adds at build time (pip library headers such as cublas,
    when the toolkit lacks them) are not needed: the torch headers the .cu files include pull
    in the CUDA runtime only."""
    with open(setup_py, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    nvcc: list[str] = []
    defines: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "nvcc":
                    nvcc = [n.value for n in ast.walk(v)
                            if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "append" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "define_macros" and node.args
                and isinstance(node.args[0], ast.Tuple)):
            name, val = (e.value if isinstance(e, ast.Constant) else None
                         for e in node.args[0].elts)
            defines.append(f"-D{name}" if val is None else f"-D{name}={val}")
    if not nvcc:
        raise RuntimeError(f"no \"nvcc\" flag list found in {setup_py}")
    return nvcc, defines


def torch_nvcc_defaults() -> tuple[list[str], str]:
    """(COMMON_NVCC_FLAGS, default -std) of the installed torch's cpp_extension, read from
    its source (importing it would import torch)."""
    common, std = list(_FALLBACK_COMMON), "-std=c++17"
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return common, std
    path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "cpp_extension.py")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return common, std
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name)
                                                 and t.id == "COMMON_NVCC_FLAGS"
                                                 for t in node.targets)
                and isinstance(node.value, ast.List)):
            common = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    m = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", text)
    if m:
        std = f"-std={m.group(1)}"
    return common, std


def torch_include_dirs() -> list[str]:
    """torch's C++ include directories, as torch.utils.cpp_extension.include_paths() gives
    them (<torch>/include and <torch>/include/torch/csrc/api/include), found without importing
    torch. Raises FileNotFoundError when torch or its headers are not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torch is not installed: the .cu files include its headers")
    inc = os.path.join(list(spec.submodule_search_locations)[0], "include")
    if not os.path.isfile(os.path.join(inc, "torch", "library.h")):
        raise FileNotFoundError(f"torch's C++ headers are not in {inc}")
    return [inc, os.path.join(inc, "torch", "csrc", "api", "include")]


def build_flags() -> list[str]:
    """The nvcc flags of setup.py's build of csrc/cuda/*.cu (architecture flags aside)."""
    nvcc, defines = setup_flags()
    common, std = torch_nvcc_defaults()
    flags = common + ["--compiler-options", "-fPIC"] + nvcc
    if not any(f.startswith("-std=") for f in flags):
        flags.append(std)
    flags += defines + ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    flags += ["-I" + d for d in [os.path.join(ROOT, "csrc"), *torch_include_dirs()]]
    return flags


# ---- ptxas report ------------------------------------------------------------------------------
_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"ptxas info\s*: Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*: Used (\d+) registers(.*)$")


def parse_ptxas(log: str) -> list[dict]:
    """One record per function in the ptxas -v report: entry kernels (with registers, smem,
    barriers) and non-inlined device functions (stack, spills)."""
    funcs: dict[str, dict] = {}
    order: list[str] = []
    current = None  # the entry function whose "Used" line comes next
    props_for = None

    def rec(name: str) -> dict:
        if name not in funcs:
            funcs[name] = {"mangled": name, "entry": False, "registers": None, "smem": 0,
                           "barriers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0}
            order.append(name)
        return funcs[name]

    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            rec(current)["entry"] = True
            continue
        m = _PROPS.search(line)
        if m:
            props_for = m.group(1)
            rec(props_for)
            continue
        m = _FRAME.search(line)
        if m and props_for is not None:
            r = rec(props_for)
            r["stack"], r["spill_stores"], r["spill_loads"] = (int(x) for x in m.groups())
            props_for = None
            continue
        m = _USED.search(line)
        if m and current is not None:
            r = rec(current)
            r["registers"] = int(m.group(1))
            rest = m.group(2)
            s = re.search(r"(\d+) bytes smem", rest)
            b = re.search(r"used (\d+) barriers", rest)
            r["smem"] = int(s.group(1)) if s else 0
            r["barriers"] = int(b.group(1)) if b else 0
            current = None
    return [funcs[n] for n in order]


_PTX_FUNC = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+|\.extern\s+)*\.(?:entry|func)\s+"
                       r"(?:\([^)]*\)\s*)?([\w$]+)")
_DIV64 = re.compile(r"\b(?:div|rem)\.[su]64\b")


def div64_counts(ptx: str) -> dict[str, int]:
    """Number of 64-bit integer divisions / remainders (div/rem.s64/u64) in the PTX of each
    function (ptxas turns each into a ~70-instruction subroutine call)."""
    counts: dict[str, int] = {}
    cur = None
    for line in ptx.splitlines():
        m = _PTX_FUNC.match(line)
        if m:
            cur = m.group(1)
            counts.setdefault(cur, 0)
        elif cur is not None and _DIV64.search(line):
            counts[cur] += 1
    return counts


def demangle(names: list[str], demangler: str | None) -> dict[str, str]:
    if not demangler or not names:
        return {n: n for n in names}
    try:
        res = subprocess.run([demangler], input="\n".join(names) + "\n", capture_output=True,
                             text=True, timeout=60)
        out = res.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {n: n for n in names}
    if res.returncode != 0 or len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def short_name(demangled: str) -> str:
    """tile_kernel<float, 1> from art_fast::cuda::(anonymous namespace)::tile_kernel<float,
    1>(art_fast::...): the qualifiers and the argument list dropped."""
    depth, cut = 0, len(demangled)
    for i, ch in enumerate(demangled):  # the argument list: the first '(' outside <...>
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not demangled.startswith("(anonymous", i):
            cut = i
            break
    head = demangled[:cut]
    depth, start = 0, 0
    for i in range(len(head) - 1):  # the last '::' outside <...> and (anonymous namespace)
        ch = head[i]
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0 and head.startswith("::", i):
            start = i + 2
    return head[start:]


# ---- compile -----------------------------------------------------------------------------------
def kernel_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def _compile(nvcc: str, flags: list[str], src: str, arch: int, workdir: str) -> dict:
    stem = os.path.splitext(os.path.basename(src))[0]
    keep = os.path.join(workdir, f"{stem}.sm_{arch}")
    os.makedirs(keep, exist_ok=True)
    out = os.path.join(keep, f"{stem}.cubin")
    cmd = [nvcc, *flags, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin",
           "-Xptxas", "-v", "-keep", "-keep-dir", keep, "-o", out, src]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    div64: dict[str, int] = {}
    ptx = os.path.join(keep, f"{stem}.ptx")
    if res.returncode == 0 and os.path.isfile(ptx):
        with open(ptx, encoding="utf-8", errors="replace") as f:
            div64 = div64_counts(f.read())
    return {"file": os.path.relpath(src, ROOT), "arch": arch, "returncode": res.returncode,
            "log": res.stdout + res.stderr, "seconds": time.perf_counter() - t0,
            "cmd": cmd, "cubin": out if res.returncode == 0 else None, "div64": div64}


def run(archs=DEFAULT_ARCHS, sources: list[str] | None = None, jobs: int | None = None,
        workdir: str | None = None) -> dict:
    """Compile every (source, arch) in parallel; returns {"rows", "errors", "spills", ...}.
    Raises FileNotFoundError when nvcc or torch's headers are absent."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (CUDA_HOME, PATH, /usr/local/cuda*)")
    root = toolkit_root(nvcc)
    flags = build_flags()
    sources = kernel_sources() if sources is None else sources
    jobs = jobs or max(1, os.cpu_count() or 1)
    own_tmp = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="art_fast_ptxas_")
    t0 = time.perf_counter()
    tasks = [(s, a) for s in sources for a in archs]
    with ThreadPoolExecutor(max_workers=min(jobs, len(tasks)) or 1) as ex:
        results = list(ex.map(lambda t: _compile(nvcc, flags, t[0], t[1], workdir), tasks))
    wall = time.perf_counter() - t0
    rows, errors = [], []
    for r in results:
        if r["returncode"] != 0:
            errors.append({"file": r["file"], "arch": r["arch"], "log": r["log"][-4000:]})
            continue
        for f in parse_ptxas(r["log"]):
            rows.append({"file": r["file"], "arch": f"sm_{r['arch']}", **f,
                         "div64": r["div64"].get(f["mangled"])})
    names = demangle(sorted({r["mangled"] for r in rows}), find_demangler(root))
    for r in rows:
        r["demangled"] = names[r["mangled"]]
        r["kernel"] = short_name(r["demangled"])
    spills = [r for r in rows if r["spill_stores"] > 0 or r["spill_loads"] > 0]
    if own_tmp:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"nvcc": nvcc, "nvcc_version": nvcc_version(nvcc), "toolkit": root,
            "flags": flags, "archs": [f"sm_{a}" for a in archs], "jobs": jobs,
            "wall_seconds": round(wall, 2),
            "compile_seconds": {f"{r['file']}:sm_{r['arch']}": round(r["seconds"], 2)
                                for r in results},
            "rows": rows, "errors": errors, "spills": spills}


def to_markdown(result: dict) -> str:
    lines = [
        "# ptxas resources of the CUDA kernels",
        "",
        f"nvcc {result['nvcc_version']} ({result['nvcc']}); "
        f"{len(result['compile_seconds'])} compiles in {result['wall_seconds']} s "
        f"({result['jobs']} parallel).",
        "",
        "Flags: `" + " ".join(result["flags"]).replace(ROOT + os.sep, "") + "` plus "
        "`-gencode=arch=compute_XX,code=sm_XX -cubin -Xptxas -v`.",
        "",
        "smem: static shared memory in bytes (dynamic shared memory is sized at launch); "
        "stack: stack frame in bytes; spills: spill stores / loads in bytes; div64: 64-bit "
        "integer divisions / remainders in the function's PTX (each a subroutine call in "
        "SASS).",
        "",
        "| file | kernel | arch | registers | smem | spills (st/ld) | stack | barriers | div64 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["file"], r["kernel"], r["arch"])):
        regs = "-" if r["registers"] is None else str(r["registers"])
        kind = "" if r["entry"] else " (device function)"
        lines.append(f"| {os.path.basename(r['file'])} | `{r['kernel']}`{kind} | {r['arch']} | "
                     f"{regs} | {r['smem']} | {r['spill_stores']}/{r['spill_loads']} | "
                     f"{r['stack']} | {r['barriers']} | "
                     f"{'-' if r['div64'] is None else r['div64']} |")
    lines.append("")
    if result["errors"]:
        lines.append("## Compile errors")
        for e in result["errors"]:
            lines += ["", f"{e['file']} sm_{e['arch']}:", "", "```", e["log"], "```"]
    lines.append(f"Spills: {len(result['spills'])}; compile errors: {len(result['errors'])}.")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "cuda_ptxas.md")
    js = os.path.join(out_dir, "cuda_ptxas.json")
    with open(md, "w", encoding="utf-8") as f:
        f.write(to_markdown(result))
    text = json.dumps({k: v for k, v in result.items() if k not in ("spills", "out_files")},
                      indent=1)
    with open(js, "w", encoding="utf-8") as f:
        f.write(text.replace(ROOT + os.sep, "") + "\n")  # paths relative to the checkout
    return md, js


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "aot"))
    ap.add_argument("--arch", default=",".join(str(a) for a in DEFAULT_ARCHS),
                    help="comma-separated SM versions, e.g. 80,90")
    ap.add_argument("--jobs", type=int, default=None, help="parallel nvcc runs (default: cores)")
    args = ap.parse_args(argv)
    archs = tuple(int(a) for a in args.arch.replace(" ", "").split(",") if a)
    try:
        result = run(archs, jobs=args.jobs)
    except FileNotFoundError as e:
        print(f"cuda_ptxas: {e}", file=sys.stderr)
        return 2
    md, js = write(result, args.out)
    print(to_markdown(result))
    print(f"wrote {md} and {js}")
    for e in result["errors"]:
        print(f"cuda_ptxas: compile error in {e['file']} for sm_{e['arch']}", file=sys.stderr)
    for r in result["spills"]:
        print(f"cuda_ptxas: {r['kernel']} ({r['file']}, {r['arch']}) spills "
              f"{r['spill_stores']} B stores / {r['spill_loads']} B loads", file=sys.stderr)
    return 1 if result["errors"] or result["spills"] else 0


if __name__ == "__main__":
    sys.exit(main())
