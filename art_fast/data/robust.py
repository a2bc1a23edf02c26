"""Broken videos: bounded retries, a substitute sample, a per-run report, a stop past a fraction.

Policy (used by every reader of :mod:`art_fast.data.datasets`, and by
:class:`RobustVideoDataset` around any other dataset):

1. Loading sample ``i`` fails with a :class:`~art_fast.data.video.VideoDecodeError` or an
   ``OSError`` (missing file, permission, I/O): it is retried ``max_retries`` more times.
2. Still failing: the file is recorded in :class:`BadVideoLog` (one line
   ``<path>\\t<error>`` appended to ``<output_dir>/bad_videos.txt``) and logged at WARNING, and
   the next index ``(i + 1) % len`` is loaded instead (deterministic; files already known to be
   bad are skipped without retrying).
3. The run stops with a ``RuntimeError`` naming ``max_bad_fraction`` and the count only when
   more than one distinct file of this dataset is bad *and* their number exceeds
   ``max_bad_fraction * len(dataset)``: a run never dies on a single bad file.

Counting across DataLoader workers: each worker is a separate process with its own copy of the
dataset, so the count is taken from the shared report file, not from memory. Every write opens
the file in append mode, writes one line with a single ``write`` and closes it (appends of a
short line are atomic on local file systems); after each new bad file a worker re-reads the
file and counts the distinct paths that belong to its own dataset (so the train and
validation sets can share one report, and a resumed run keeps counting what it found before).
Without an ``output_dir`` the count is per process (per worker), which can only under-count.
Other exceptions (programming errors) propagate unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from torch.utils.data import Dataset

from .video import VideoDecodeError

__all__ = ["BadVideoLog", "BadVideoPolicy", "RobustVideoDataset", "BAD_VIDEO_ERRORS"]

logger = logging.getLogger(__name__)

BAD_VIDEO_ERRORS: tuple[type[BaseException], ...] = (VideoDecodeError, OSError)
"""Exceptions that mark a sample's file as bad (others propagate)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _escape_path(path: str) -> str:
    return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


class BadVideoLog:
    """Appends bad files to ``<output_dir>/bad_videos.txt`` and reads them back.

    Each record is one line ``<path>\\t<error on one line>`` (backslash, tab and newline in the
    path escaped as ``\\\\``, ``\\t``, ``\\n``). Safe to share between processes: every write
    is open-append-write-close. ``output_dir=None`` keeps the records in memory only.
    """

    FILENAME = "bad_videos.txt"

    def __init__(self, output_dir: str | os.PathLike[str] | None) -> None:
        self.path: str | None = None
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            self.path = os.path.join(os.fspath(output_dir), self.FILENAME)
        self._memory: dict[str, str] = {}

    def record(self, path: str, error: BaseException | str) -> None:
        """Append one record (``path``, the error) to the report."""
        err = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        line = f"{_escape_path(path)}\t{_one_line(err)}\n"
        self._memory.setdefault(_escape_path(path), err)
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)

    def paths(self) -> set[str]:
        """The distinct (escaped) paths recorded so far, by any process writing the file."""
        out = set(self._memory)
        if self.path is not None and os.path.exists(self.path):
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if "\t" in line:  # the path has its tabs escaped: the first one ends it
                        out.add(line.split("\t", 1)[0])
        return out

    def __repr__(self) -> str:
        return f"BadVideoLog({self.path or '<memory>'})"


class BadVideoPolicy:
    """Retry / substitute / count / stop, for a dataset of ``size`` samples.

    Args:
        size: number of samples.
        path_of: sample index -> its file path (what the report names).
        max_retries: extra attempts on the same sample before it counts as bad (default 2).
        max_bad_fraction: stop past this fraction of distinct bad files (default 0.05).
        output_dir: where ``bad_videos.txt`` goes (None: in memory, counted per process).
    """

    def __init__(self, size: int, path_of: Callable[[int], str], *, max_retries: int = 2,
                 max_bad_fraction: float = 0.05,
                 output_dir: str | os.PathLike[str] | None = None) -> None:
        if int(max_retries) < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if not 0.0 <= float(max_bad_fraction) <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.size = int(size)
        self.path_of = path_of
        self.max_retries = int(max_retries)
        self.max_bad_fraction = float(max_bad_fraction)
        self.log = BadVideoLog(output_dir)
        self._known_bad: set[str] = set()
        self._own_paths: set[str] | None = None

    def _own(self) -> set[str]:
        if self._own_paths is None:
            self._own_paths = {_escape_path(self.path_of(i)) for i in range(self.size)}
        return self._own_paths

    def bad_count(self) -> int:
        """Distinct bad files of this dataset seen so far (from the shared report when there
        is one)."""
        return len(self.log.paths() & self._own())

    def _register(self, path: str, error: BaseException) -> None:
        self.log.record(path, error)
        where = f" (recorded in {self.log.path})" if self.log.path else ""
        logger.warning("unreadable video %s: %s: %s%s; using another sample", path,
                       type(error).__name__, _one_line(str(error)), where)
        bad = self.log.paths() & self._own()
        self._known_bad |= bad
        count = len(bad)
        if count > 1 and count > self.max_bad_fraction * self.size:
            raise RuntimeError(
                f"{count} distinct unreadable videos out of {self.size} "
                f"({count / max(self.size, 1):.1%}) exceed data.max_bad_fraction="
                f"{self.max_bad_fraction}; see {self.log.path or 'the log'} for the files "
                f"and errors, fix or remove them, or raise data.max_bad_fraction")

    def load(self, index: int, loader: Callable[[int], Any]) -> Any:
        """``loader(index)`` with the policy: retries, then ``loader(index + 1)``, ... ."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size}")
        for k in range(self.size):
            j = (index + k) % self.size
            path = self.path_of(j)
            if _escape_path(path) in self._known_bad:
                continue
            err: BaseException | None = None
            for _ in range(1 + self.max_retries):
                try:
                    return loader(j)
                except BAD_VIDEO_ERRORS as exc:
                    err = exc
            assert err is not None
            self._register(path, err)
        raise RuntimeError(f"every one of the {self.size} samples failed to load; see "
                           f"{self.log.path or 'the log'}")

    def known_bad(self) -> Iterable[str]:
        """Bad paths this process knows of (escaped as in the report)."""
        return sorted(self._known_bad)


def _index_name(index: int) -> str:
    return f"#{index}"


class RobustVideoDataset(Dataset):
    """Wrap any map-style dataset with the broken-video policy of this module.

    The wrapped dataset's ``__getitem__`` (or its ``load(index)`` when it has one) must raise
    :class:`~art_fast.data.video.VideoDecodeError` or ``OSError`` for an unreadable file; its
    ``path_of(index)`` (when present) names the file in the report, else ``"#<index>"``.
    The readers of :mod:`art_fast.data.datasets` apply the same policy themselves; wrapping
    them is not needed.
    """

    def __init__(self, dataset: Any, *, output_dir: str | os.PathLike[str] | None = None,
                 max_retries: int = 2, max_bad_fraction: float = 0.05) -> None:
        self.dataset = dataset
        self._loader = getattr(dataset, "load", None) or dataset.__getitem__
        path_of = getattr(dataset, "path_of", None) or _index_name
        self.policy = BadVideoPolicy(len(dataset), path_of, max_retries=max_retries,
                                     max_bad_fraction=max_bad_fraction, output_dir=output_dir)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.policy.load(int(index), self._loader)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)
