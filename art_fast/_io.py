"""Atomic file writes, shared by the checkpoints and the text-bank cache; whether a pid lives."""

from __future__ import annotations

import os
from typing import Any

import torch

_TMP_MARK = ".tmp-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``os.kill(pid, 0)``: a process of
    another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # unknown: assume alive (never delete what a live writer may use)
    return True


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file ``.<name>.tmp-<pid>`` in the same
    folder, flush, fsync, ``os.replace``, fsync of the folder). On an exception the temp file
    is removed and ``path`` is untouched; an ``OSError`` (a full disk, ...) is raised again
    with ``path`` as its file name, so its message names the file and the errno."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            raise OSError(e.errno, f"cannot write: {e.strerror}", path) from e
        raise
    _fsync_dir(directory)
