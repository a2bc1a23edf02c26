"""Checkpoints: atomic writes, RNG states as plain tensors, ``weights_only`` loading, resume.

A checkpoint (``last.pt``, ``best.pt``) is a dict of tensors, numbers, strings, lists and dicts
only, so it loads with ``torch.load(weights_only=True)``:

``format``, ``model`` (state dict: weights and both semantics banks, ``bank`` = S and
``agent_bank`` = S_a), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (the epoch in
progress), ``batch_in_epoch`` (micro-batches of that epoch already consumed: the sampler
position), ``step`` (optimiser steps done), ``rng`` (one entry per rank: python, numpy, torch
CPU and every CUDA device), ``world_size``, ``best_top1``, ``epoch_stats`` (running sums of the
epoch in progress), ``class_names``, ``config`` (the resolved config as a dict), ``metrics``
(the latest evaluation, when there was one).

:func:`atomic_save` writes a temporary file in the destination folder, flushes and fsyncs it,
``os.replace``-s it over the destination and fsyncs the folder: a crash at any point leaves
either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

from .._io import _TMP_MARK, atomic_save  # shared with the text-bank cache

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "find_resume",
    "get_rng_state",
    "load_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
def remove_stale_temps(directory: str) -> None:
    """Delete temp files a killed writer left behind (``.<name>.tmp-<pid>``)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        if n.startswith(".") and _TMP_MARK in n and n.endswith(tuple("0123456789")):
            try:
                os.remove(os.path.join(directory, n))
            except OSError:
                pass


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``."""
    ckpt = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an art_fast checkpoint (no 'model' entry)")
    return ckpt


def find_resume(output_dir: str) -> str | None:
    """The newest loadable checkpoint in ``output_dir`` (``last.pt`` or ``best.pt``, by step),
    or None. A file that does not load is skipped with a warning."""
    best: tuple[int, str] | None = None
    for name in ("last.pt", "best.pt"):
        p = os.path.join(output_dir, name)
        if not os.path.isfile(p):
            continue
        try:
            step = int(load_checkpoint(p).get("step", -1))
        except Exception as e:
            log.warning("resume: %s does not load (%s: %s); skipped", p, type(e).__name__, e)
            continue
        if best is None or step > best[0]:
            best = (step, p)
    return None if best is None else best[1]


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
