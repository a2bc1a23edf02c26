"""Packaging: pyproject.toml's metadata, ranges for users and exact pins in
constraints.txt for `make install` / CI, every third-party module the package imports at run
time covered by a declared dependency, the license."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import art_fast

ROOT = Path(__file__).resolve().parents[1]
# The installed package's sources: art_fast/ and kernels/ (installed as art_fast.kernels).
PACKAGE_DIRS = (ROOT / "art_fast", ROOT / "kernels")
# Modules a declared dependency brings with it (module -> the declared distribution that
# requires it): triton comes with torch's Linux wheels and is optional (art_fast._backend
# imports art_fast.kernels inside try/except and reports the triton backend unusable).
PROVIDED_BY = {"triton": "torch"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _reqs(lines: list[str]) -> list[Requirement]:
    return [Requirement(s) for s in lines]


def _constraints() -> dict[str, str]:
    """constraints.txt: canonical name -> the pinned version (every line is ``name==version``)."""
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice"
        pins[name] = specs[0].version
    return pins


def _declared(pyproject: dict) -> list[Requirement]:
    """Runtime dependencies, every optional extra and the build requirements."""
    project = pyproject["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    lines += pyproject["build-system"]["requires"]
    return _reqs(lines)


def test_pyproject_metadata(pyproject):
    project = pyproject["project"]
    assert project["name"] == "art_fast"
    assert project["requires-python"] == ">=3.10"
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert project["readme"] == "README.md" and project["description"]
    # the version is art_fast.__version__, read by setuptools (no second copy to drift)
    assert "version" in project["dynamic"] and "version" not in project
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "art_fast.__version__"}
    assert importlib.metadata.version("art_fast") == art_fast.__version__
    # the console script, as setup.py declared it before
    assert project["scripts"] == {"art-fast": "art_fast.cli:main"}
    from art_fast.cli import main

    assert callable(main)
    build = {canonicalize_name(r.name) for r in _reqs(pyproject["build-system"]["requires"])}
    assert {"setuptools", "wheel", "torch"} <= build
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    dev = {canonicalize_name(r.name) for r in _reqs(project["optional-dependencies"]["dev"])}
    assert {"pytest", "pytest-benchmark", "ruff"} <= dev


def test_setup_py_holds_no_metadata():
    """The metadata lives in pyproject.toml only; setup.py builds the extension."""
    text = (ROOT / "setup.py").read_text()
    for key in ("install_requires", "entry_points", "python_requires", "version=", "name="):
        assert key not in text, key
    assert "ext_modules=ext_modules" in text


def test_dependencies_are_ranges(pyproject):
    project = pyproject["project"]
    runtime = _reqs(project["dependencies"])
    names = [canonicalize_name(r.name) for r in runtime]
    assert len(names) == len(set(names))
    for req in _declared(pyproject):
        assert all(s.operator not in ("==", "===") for s in req.specifier), (
            f"{req}: pyproject.toml declares ranges; exact pins go to constraints.txt")
    assert {"torch", "torchvision", "open-clip-torch", "decord2", "av", "numpy", "pyyaml",
            "omegaconf", "tqdm", "matplotlib"} <= set(names)
    # test and lint tools are not runtime dependencies; einops is never imported
    assert not {"pytest", "pytest-benchmark", "ruff", "einops"} & set(names)
    torch_req = next(r for r in runtime if canonicalize_name(r.name) == "torch")
    assert Version("2.6") in torch_req.specifier and Version("2.5") not in torch_req.specifier


def _runtime_imports() -> dict[str, list[str]]:
    """Top-level module -> the files (repo-relative) importing it, for every absolute import in
    the package's sources (stdlib and art_fast itself left out)."""
    found: dict[str, list[str]] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in sys.stdlib_module_names or top == "art_fast":
                        continue
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_a_declared_dependency(pyproject):
    declared = {canonicalize_name(r.name) for r in _reqs(pyproject["project"]["dependencies"])}
    imports = _runtime_imports()
    assert {"torch", "numpy", "yaml", "omegaconf", "open_clip", "av", "decord", "PIL",
            "tqdm"} <= set(imports)
    dists = importlib.metadata.packages_distributions()
    missing = []
    for mod, files in sorted(imports.items()):
        if mod in PROVIDED_BY:
            owner = PROVIDED_BY[mod]
            assert owner in declared, (mod, owner)
            needs = [canonicalize_name(Requirement(r).name)
                     for r in importlib.metadata.requires(owner) or []]
            assert canonicalize_name(mod) in needs, f"{owner} no longer requires {mod}"
            continue
        names = {canonicalize_name(d) for d in dists.get(mod, [])}
        if not names & declared:
            missing.append(f"{mod} (distribution {sorted(names) or 'unknown'}; {files[0]})")
    assert missing == [], f"imported by art_fast but not declared in pyproject.toml: {missing}"


def test_no_einops_import():
    assert "einops" not in _runtime_imports()


def test_constraints_pin_every_declared_dependency(pyproject):
    pins = _constraints()
    for req in _declared(pyproject):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside the declared {req}")
    # the machine's cap (torch<=2.14.1) and the tested pair stay
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    # the build requirements (requirements.txt) are pinned too
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.txt: {req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
        assert not req.specifier or all(s.operator != "==" for s in req.specifier), req


def test_omegaconf_and_its_requirements_are_pinned():
    """art_fast.train.config parses configs with OmegaConf: pinned, with what it requires (only
    PyYAML for 2.4: the ANTLR runtime its interpolation grammar needs is vendored)."""
    pins = _constraints()
    assert pins["omegaconf"] == importlib.metadata.version("omegaconf") == "2.4.0"
    for line in importlib.metadata.requires("omegaconf") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (dev tools)
        name = canonicalize_name(req.name)
        assert name in pins, f"omegaconf requires {req}, not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_make_install_uses_the_constraints():
    text = (ROOT / "Makefile").read_text()
    rule = text[text.index("$(STAMP): "):]
    rule = rule[: rule.index("\n\n")]
    assert re.search(r"pip install -c constraints\.txt -r requirements\.txt", rule)
    assert re.search(r'pip install --no-build-isolation -c constraints\.txt -e "\.\[dev\]"', rule)


def test_license():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the art_fast authors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_bench_runs_from_outside_the_checkout(tmp_path):
    """``art-fast bench`` is part of the package (art_fast.bench_ops): run from a folder outside
    the repository, it writes its results where --out says. The smallest run that still goes
    through every step: one op, the eager and C++ providers, forward only."""
    exe = shutil.which("art-fast", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "art_fast.cli"]
    out = tmp_path / "results"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ""  # art_fast as installed, not through the checkout on sys.path
    res = subprocess.run(
        [*cmd, "bench", "--quick", "--device", "cpu", "--out", str(out), "--ops", "topk_regions",
         "--providers", "eager", "cpu", "--modes", "fwd", "--threads", "1"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench_ops_quick.json", "bench_ops_quick.md"]
    assert list(cwd.iterdir()) == []
    payload = json.loads((out / "bench_ops_quick.json").read_text())
    assert payload["header"]["quick"] is True and payload["header"]["device"] == "cpu"
    rows = payload["rows"]
    assert {r["provider"] for r in rows} <= {"eager", "cpu"} and rows
    assert all(r["op"] == "topk_regions" and r["mode"] == "fwd" for r in rows)
    assert "art_fast op benchmarks" in (out / "bench_ops_quick.md").read_text()


def test_bench_help_names_the_command(capsys):
    from art_fast.cli import main

    assert main(["bench", "--help-bench"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: art-fast bench ") and "--quick" in out
    assert main(["bench", "--no-such-option"]) == 2
