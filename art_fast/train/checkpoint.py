"""Checkpoints: atomic writes, a content digest, RNG states as plain tensors, ``weights_only``
loading, resume; the output folder's lock and the files of a previous run.

A checkpoint (``last.pt``, ``best.pt``) is a dict of tensors, numbers, strings, lists and dicts
only, so it loads with ``torch.load(weights_only=True)``:

``format``, ``model`` (state dict: weights and both semantics banks, ``bank`` = S and
``agent_bank`` = S_a), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (the epoch in
progress, 0-based), ``batch_in_epoch`` (micro-batches of that epoch already consumed: the
sampler position), ``step`` (optimiser steps done), ``rng`` (one entry per rank: python, numpy,
torch CPU and every CUDA device), ``world_size``, ``best_top1``, ``epoch_stats`` (running sums
of the epoch in progress), ``class_names``, ``config`` (the resolved config as a dict),
``metrics`` (the latest evaluation, when there was one), ``digest``.

``digest`` (format 2) is ``"sha256:<hex>"`` of the rest of the checkpoint
(:func:`content_digest`: every tensor's dtype, shape and raw bytes, every other value's type and
value, dict keys in sorted order). :func:`load_checkpoint` recomputes it: a flipped bit
anywhere in the data is a :class:`~art_fast.errors.CheckpointError` naming the file, as is a
file that does not load at all (truncated, not a checkpoint). Files without a digest load only
when their format is 1 (written before the digest existed) or absent (a plain dict).

:func:`atomic_save` writes a temporary file in the destination folder, flushes and fsyncs it,
``os.replace``-s it over the destination and fsyncs the folder: a crash at any point leaves
either the old or the new checkpoint, never a torn one.

``--resume auto`` (:func:`resolve_auto_resume`) takes the newer of ``last.pt`` / ``best.pt``;
a damaged ``last.pt`` is an error unless ``best.pt`` is intact, in which case the run resumes
from ``best.pt`` with a warning naming the damaged file.

:class:`RunLock`: one training run per output folder. ``<output_dir>/.art_fast.lock`` holds the
writer's pid and host and is ``fcntl.flock``-ed for the whole run (rank 0 only under
torchrun): a second run into the folder is refused with the holder's pid; a lock file left by a
dead process (its flock is gone with it) is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import socket
from typing import Any

import numpy as np
import torch

from .._io import _TMP_MARK, atomic_save, pid_alive  # shared with the text-bank cache
from ..errors import CheckpointError, RunDirError, describe

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RunLock",
    "atomic_save",
    "content_digest",
    "find_resume",
    "get_rng_state",
    "load_checkpoint",
    "resolve_auto_resume",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: with a content digest


# --------------------------------------------------------------------------- temp files

def _temp_pid(name: str) -> int | None:
    """The writer's pid of a temp file name ``.<name>.tmp-<pid>``, else None."""
    if not name.startswith(".") or _TMP_MARK not in name:
        return None
    tail = name.rsplit(_TMP_MARK, 1)[1]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def remove_stale_temps(directory: str) -> list[str]:
    """Delete temp files a killed writer left behind (``.<name>.tmp-<pid>`` whose pid is no
    longer running; a live writer's temp file is kept). Returns the names removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for n in names:
        pid = _temp_pid(n)
        if pid is None or pid_alive(pid):
            continue
        try:
            os.remove(os.path.join(directory, n))
            removed.append(n)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- digest

def _feed(h: Any, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(x, dict):
        h.update(f"D{len(x)}|".encode())
        for k in sorted(x, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, x[k])
    elif isinstance(x, (list, tuple)):
        h.update(f"L{len(x)}|".encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, str):
        b = x.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}|".encode())
        h.update(b)
    elif isinstance(x, bool) or x is None:
        h.update(f"{x!r}|".encode())
    elif isinstance(x, int):
        h.update(f"I{x}|".encode())
    elif isinstance(x, float):
        h.update(f"F{x!r}|".encode())
    else:
        h.update(f"O{type(x).__name__}:{x!r}|".encode())


def content_digest(state: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint dict without its ``digest`` entry (tensors by dtype,
    shape and bytes; the same on every device and after a save/load round trip)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(state: dict[str, Any], *paths: str | os.PathLike[str]) -> str:
    """Write ``state`` with its content digest to every path (:func:`atomic_save` each);
    returns the digest."""
    blob = {k: v for k, v in state.items() if k != "digest"}
    blob["digest"] = content_digest(blob)
    for p in paths:
        atomic_save(blob, p)
    return blob["digest"]


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check its content digest.

    Raises:
        CheckpointError: the file does not load (truncated, damaged, not written by
            ``torch.save``), is not an art_fast checkpoint, or its digest does not match.
        FileNotFoundError (and other ``OSError``): the file cannot be opened.
    """
    path = os.fspath(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.errno is not None:
            raise
        raise CheckpointError(f"{path}: the file does not load as a checkpoint "
                              f"({type(e).__name__}: {describe(e)})") from e
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: the file does not load as a checkpoint: it is damaged (e.g. truncated) "
            f"or was not written by art-fast train ({type(e).__name__}: {text})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an art_fast checkpoint (no 'model' entry)")
    stored = ckpt.get("digest")
    if stored is None:
        fmt = ckpt.get("format")
        if isinstance(fmt, int) and fmt >= 2:
            raise CheckpointError(f"{path}: checkpoint format {fmt} without its content "
                                  "digest: the file is damaged")
        return ckpt
    got = content_digest(ckpt)
    if got != stored:
        raise CheckpointError(
            f"{path}: content digest mismatch (stored {str(stored)[:23]}..., computed "
            f"{got[:23]}...): the file is damaged; use another checkpoint")
    return ckpt


def resolve_auto_resume(output_dir: str) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint ``--resume auto`` continues from: ``(path, loaded checkpoint)`` of the
    newer (by step) of ``last.pt`` and ``best.pt`` in ``output_dir``, or None when neither
    exists.

    A damaged ``last.pt`` with an intact ``best.pt``: ``best.pt``, with a warning naming the
    damaged file; a damaged ``best.pt`` beside an intact ``last.pt``: ``last.pt``, with a
    warning. Raises :class:`~art_fast.errors.CheckpointError` when every checkpoint there is
    damaged (never a silent restart from step 0)."""
    loaded: dict[str, dict[str, Any]] = {}
    damaged: dict[str, BaseException] = {}
    for name in ("last.pt", "best.pt"):
        p = os.path.join(output_dir, name)
        if not os.path.isfile(p):
            continue
        try:
            loaded[p] = load_checkpoint(p)
        except (CheckpointError, OSError) as e:
            damaged[p] = e
    if not loaded:
        if not damaged:
            return None
        what = "; ".join(describe(e) for e in damaged.values())
        raise CheckpointError(
            f"resume=auto: no intact checkpoint in {output_dir}: {what}. Start over with "
            f"--overwrite, or give another checkpoint with --resume PATH")
    best_path, best_ckpt = max(loaded.items(), key=lambda kv: (int(kv[1].get("step", -1)),
                                                                kv[0].endswith("last.pt")))
    for p, e in damaged.items():
        log.warning("resume: %s is damaged (%s); resuming from %s (step %s) instead", p,
                    describe(e), best_path, best_ckpt.get("step"))
    return best_path, best_ckpt


def find_resume(output_dir: str) -> str | None:
    """The path :func:`resolve_auto_resume` picks, or None when there is no checkpoint."""
    found = resolve_auto_resume(output_dir)
    return None if found is None else found[0]


# --------------------------------------------------------------------------- output folder

RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl")
"""Files whose presence means ``output_dir`` holds a previous run."""
RUN_FILES = ("config.yaml", "train.log", "metrics.jsonl", "last.pt", "best.pt",
             "confusion.csv", "confusion.png", "predictions.csv", "bad_videos.txt")
"""Everything a training run writes at the top of ``output_dir`` (``--overwrite`` deletes
these, the ``eval/`` files and the TensorBoard events, nothing else)."""
_EVAL_FILES = ("predictions.csv", "confusion.csv", "confusion.png", "eval_metrics.json",
               "eval.log")
LOCK_NAME = ".art_fast.lock"


def previous_run(output_dir: str) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``output_dir``."""
    return [n for n in RUN_MARKERS if os.path.exists(os.path.join(output_dir, n))]


def clear_run(output_dir: str) -> list[str]:
    """Delete a previous run's files from ``output_dir`` (``--overwrite``); returns what was
    removed (relative names)."""
    removed = []

    def rm(rel: str) -> None:
        p = os.path.join(output_dir, rel)
        if os.path.isfile(p) or os.path.islink(p):
            os.remove(p)
            removed.append(rel)

    for n in RUN_FILES:
        rm(n)
    for n in _EVAL_FILES:
        rm(os.path.join("eval", n))
    tb = os.path.join(output_dir, "tensorboard")
    if os.path.isdir(tb):
        for n in os.listdir(tb):
            if n.startswith("events.out.tfevents."):
                rm(os.path.join("tensorboard", n))
    for d in ("eval", "tensorboard"):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(output_dir, d))  # only when empty
    removed += remove_stale_temps(output_dir)
    return removed


def _read_holder(fd: int) -> tuple[int | None, str]:
    """``(pid, host)`` written in a lock file (None, "" when unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        parts = os.read(fd, 256).decode("utf-8", "replace").split()
    except OSError:
        return None, ""
    pid = int(parts[0]) if parts and parts[0].isascii() and parts[0].isdigit() else None
    return pid, (parts[1] if len(parts) > 1 else "")


class RunLock:
    """The output folder's lock (see the module docstring): :meth:`acquire`, then
    :meth:`release` when the run ends. ``stale`` is ``(pid, host)`` of a dead holder whose
    lock file was taken over, else None."""

    def __init__(self, path: str, fd: int, stale: tuple[int, str] | None) -> None:
        self.path, self.fd, self.stale = path, fd, stale

    @classmethod
    def acquire(cls, output_dir: str) -> RunLock:
        """Lock ``output_dir`` for this process, or raise
        :class:`~art_fast.errors.RunDirError` naming the live holder's pid."""
        import fcntl

        path = os.path.join(output_dir, LOCK_NAME)
        host = socket.gethostname()
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid, where = _read_holder(fd)
                    os.close(fd)
                    who = f"pid {pid}" if pid is not None else "a process"
                    if where and where != host:
                        who += f" on {where}"
                    if pid == os.getpid() and where in ("", host):
                        who += ", this process"
                    raise RunDirError(
                        f"{output_dir} is in use by another training run ({who} holds "
                        f"{path}); wait for it to end or choose another output_dir") from None
                flocked = False  # a filesystem without flock: the pid check alone
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it between our open and flock: again
                os.close(fd)
                continue
            pid, where = _read_holder(fd)
            mine = pid == os.getpid() and where in ("", host)
            if (not flocked and pid is not None and not mine and where in ("", host)
                    and pid_alive(pid)):
                os.close(fd)
                raise RunDirError(f"{output_dir} is in use by another training run (pid {pid} "
                                  f"holds {path}); wait for it to end or choose another "
                                  "output_dir")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {host}\n".encode())
            stale = (pid, where) if pid is not None and not mine else None
            return cls(path, fd, stale)
        raise RunDirError(f"{path}: could not take the lock (it kept being replaced)")

    def release(self) -> None:
        """Remove the lock file (when it is still ours) and drop the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.remove(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


# --------------------------------------------------------------------------- RNG states

def get_rng_state() -> dict[str, Any]:
    """Every RNG state of this process as tensors and primitives (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(np_state[0]),
                  "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([c.cpu() for c in cuda])
        else:
            log.warning("resume: the checkpoint holds %d CUDA RNG states, this machine has %d "
                        "devices; CUDA RNG states not restored", len(cuda),
                        torch.cuda.device_count())
