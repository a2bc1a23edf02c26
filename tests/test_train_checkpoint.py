"""Checkpoints: a kill during a save leaves the previous checkpoint loadable; everything loads
with weights_only=True; RNG states round-trip; exact resume (bitwise on CPU, deterministic)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_train_helpers import tiny_config

import art_fast.train.checkpoint as ckpt_mod
from art_fast.train import train
from art_fast.train.checkpoint import (
    atomic_save,
    find_resume,
    get_rng_state,
    load_checkpoint,
    set_rng_state,
)


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((1000,), v)}, "step": int(v), "rng": [get_rng_state()]}


def test_failed_write_leaves_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save(_state(1.0), path)
    real_save = torch.save

    def half_then_fail(obj, f, *a, **k):
        import io
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half of the bytes ...
        raise OSError("disk full")                            # ... then the writer dies

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(_state(2.0), path)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    got = load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["model"]["w"], torch.full((1000,), 1.0))
    assert os.listdir(tmp_path) == ["last.pt"]  # the temp file is gone


def test_process_killed_mid_write_leaves_previous(tmp_path):
    """A real kill (os._exit: no cleanup, no finally) after half the bytes are written."""
    path = tmp_path / "last.pt"
    atomic_save(_state(1.0), path)
    script = textwrap.dedent(f"""
        import io, os, torch
        import art_fast.train.checkpoint as c
        real = torch.save
        def dying(obj, f, *a, **k):
            buf = io.BytesIO(); real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os._exit(9)
        c.torch.save = dying
        c.atomic_save({{"model": {{"w": torch.zeros(1000)}}, "step": 2}}, {str(path)!r})
    """)
    rc = subprocess.run([sys.executable, "-c", script], timeout=120).returncode
    assert rc == 9
    leftovers = [n for n in os.listdir(tmp_path) if n != "last.pt"]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # the torn temp file
    assert load_checkpoint(path)["step"] == 1
    assert find_resume(str(tmp_path)) == str(path)
    ckpt_mod.remove_stale_temps(str(tmp_path))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_find_resume_prefers_newest_loadable(tmp_path):
    atomic_save(_state(3.0), tmp_path / "best.pt")
    atomic_save(_state(5.0), tmp_path / "last.pt")
    assert find_resume(str(tmp_path)).endswith("last.pt")
    (tmp_path / "last.pt").write_bytes(b"garbage")  # e.g. a disk error
    assert find_resume(str(tmp_path)).endswith("best.pt")
    assert find_resume(str(tmp_path / "none")) is None


def test_rng_state_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    atomic_save({"model": {}, "rng": get_rng_state()}, tmp_path / "r.pt")
    want = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert want[:3] == got[:3] and torch.equal(want[3], got[3])


# ----------------------------------------------------------------------------- exact resume

N_STEPS = 9  # 12 train clips / batch 2 = 6 steps per epoch: the run crosses an epoch end
RESUME_ARGS = ("train.deterministic=true", f"train.max_steps={N_STEPS}", "train.save_every=2",
               "data.num_workers=1", "model.dropout=0.3", "train.eval_every=1",
               "train.warmup_steps=2")


class Killed(Exception):
    pass


def _kill_at(step: int):
    def cb(info):
        if info["step"] == step:
            raise Killed(step)
    return cb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    train(tiny_config(out, *RESUME_ARGS))
    return load_checkpoint(os.path.join(out, "last.pt")), out


@pytest.mark.parametrize("kill_at, resumes_from", [(5, 4), (7, 6)])
def test_exact_resume_bitwise(tmp_path, uninterrupted, kill_at, resumes_from):
    """Killed after step ``kill_at`` (no save of that step), resumed with resume=auto from the
    last checkpoint (periodic at step 4 mid-epoch, or the epoch-end one at step 6, which
    followed an evaluation): the final weights, banks and optimiser state are bitwise those of
    the uninterrupted run."""
    full, full_dir = uninterrupted
    out = str(tmp_path)
    with pytest.raises(Killed):
        train(tiny_config(out, *RESUME_ARGS), callbacks=[_kill_at(kill_at)])
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == resumes_from
    steps = []
    train(tiny_config(out, *RESUME_ARGS, "train.resume=auto"),
          callbacks=[lambda i: steps.append(i["step"])])
    assert steps == list(range(resumes_from + 1, N_STEPS + 1))
    done = load_checkpoint(os.path.join(out, "last.pt"))
    assert done["step"] == N_STEPS == full["step"]
    assert done["model"].keys() == full["model"].keys()
    for k, v in full["model"].items():
        assert torch.equal(v, done["model"][k]), k
    for pid, st in full["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, done["optimizer"]["state"][pid][k]), (pid, k)
    assert done["metrics"] == full["metrics"]
    # the resumed run's last epoch line reports the whole epoch (running sums were saved)
    import json
    last_full = [json.loads(x) for x in open(os.path.join(full_dir, "metrics.jsonl"))][-1]
    last_res = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))][-1]
    assert last_res["train"] == last_full["train"] and last_res["step"] == N_STEPS


def test_resume_changes_nothing_when_finished(tmp_path, uninterrupted):
    """Resuming a finished run trains no further step."""
    full, full_dir = uninterrupted
    steps = []
    res = train(tiny_config(full_dir, *RESUME_ARGS, "train.resume=auto"),
                callbacks=[lambda i: steps.append(i)])
    assert steps == [] and res["step"] == N_STEPS


def test_resume_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.resume"):
        train(tiny_config(str(tmp_path), f"train.resume={tmp_path}/x.pt"))
