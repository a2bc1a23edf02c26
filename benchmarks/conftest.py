"""Keep the op benchmarks out of ordinary test runs.

``benchmarks/test_*.py`` are collected only when pytest runs with ``--benchmark-only`` (as
``make bench`` does, with pytest-benchmark installed); any other run that reaches this folder,
a bare ``pytest`` at the repository root included, ignores them, and one that names a file
here explicitly skips its tests. ``pytest tests/`` never loads this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _benchmark_only(config: pytest.Config) -> bool:
    if not config.pluginmanager.hasplugin("benchmark"):
        return False
    try:
        return bool(config.getoption("benchmark_only"))
    except ValueError:
        return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Ignore this folder's test files unless the run is ``--benchmark-only``."""
    path = Path(collection_path).resolve()
    if path.parent == HERE and path.name.startswith("test_") and not _benchmark_only(config):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's tests when named explicitly in a run that is not benchmark-only."""
    if _benchmark_only(config):
        return
    skip = pytest.mark.skip(reason="op benchmarks run only with --benchmark-only (make bench)")
    for item in items:
        if Path(item.path).resolve().parent == HERE:
            item.add_marker(skip)
