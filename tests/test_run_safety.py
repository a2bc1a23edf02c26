"""Loud failures on damaged or contested state: the output folder's lock, re-running
into a finished folder, stale temp files, resume from a damaged checkpoint, checkpoint content
digests, the text-bank cache check, non-finite config values, label parsing, a full disk while
saving, and the trainer's log (one prefix, 1-based epochs, the warmup warning)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import art_fast._io as io_mod
from art_fast.errors import CheckpointError, RunDirError, UserError
from art_fast.train import ConfigError, load_config, train
from art_fast.train.checkpoint import (
    LOCK_NAME,
    RunLock,
    atomic_save,
    content_digest,
    load_checkpoint,
    remove_stale_temps,
    resolve_auto_resume,
    save_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A tiny synthetic set (4 classes x 4 videos of 4 frames, 32 x 32) and a text cache."""
    from art_fast.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("syn")
    make_synthetic(base / "syn", classes=4, videos_per_class=4, frames=4, size=32, seed=0)
    return str(base / "syn"), str(base / "text_bank")


def tiny(syn, out, *extra: str) -> list[str]:
    """Overrides of a CPU run of a few seconds (2 optimiser steps unless overridden)."""
    root, cache = syn
    return [f"output_dir={out}", "data.name=synthetic", f"data.root={root}",
            "data.num_frames=4", "data.image_size=32", "data.num_workers=0",
            "data.crop_scale=[0.6,1.0]", "model.backbone=tiny", "model.latent_dim=16",
            "model.heads=2", "model.se_layers=1", "model.rssa_layers=1", "model.k_region=4",
            f"model.text_cache_dir={cache}", "train.max_steps=2", "train.batch_size=2",
            "train.lr=1e-3", "train.threads=1", "train.log_every=1", "train.progress=false",
            *extra]


def cfg_of(syn, out, *extra: str):
    return load_config(None, tiny(syn, str(out), *extra))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
            "PYTHONPATH": ROOT}


def flip_byte_in(path, pattern: bytes) -> None:
    """Flip one bit in the middle of the first run of ``pattern`` (a tensor's data)."""
    data = bytearray(open(path, "rb").read())
    at = data.find(pattern)
    assert at >= 0
    data[at + len(pattern) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


def _state(v: float, step: int) -> dict:
    return {"format": 2, "model": {"w": torch.full((1000,), v)}, "step": step,
            "config": {}, "class_names": ["a"]}


# --------------------------------------------------------------------------- 1. the lock

def test_lock_refuses_a_live_holder_with_its_pid(syn, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from art_fast.train.checkpoint import RunLock
            lock = RunLock.acquire({str(out)!r})
            print("locked", flush=True)
            sys.stdin.readline()
            lock.release()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            RunLock.acquire(str(out))
        # the CLI: one line naming the holder, exit status 2, nothing written
        proc = subprocess.run([sys.executable, "-m", "art_fast.cli", "train",
                               "configs/synthetic_tiny.yaml",
                               *[f"--set={o}" for o in tiny(syn, out)]],
                              capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.startswith("art-fast train: error: ")]
        assert len(lines) == 1, proc.stderr
        assert f"pid {holder.pid}" in lines[0] and "Traceback" not in proc.stderr
        assert sorted(os.listdir(out)) == [LOCK_NAME]
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert not (out / LOCK_NAME).exists()  # released and removed
    RunLock.acquire(str(out)).release()


def test_stale_lock_of_a_dead_pid_is_taken_over(syn, tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(f"{pid} somehost\n")
    res = train(cfg_of(syn, tmp_path, "train.max_steps=1", "train.eval_every=0"))
    assert res["step"] == 1
    log = (tmp_path / "train.log").read_text()
    assert "stale lock" in log and f"pid {pid}" in log
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_released_when_a_run_fails(syn, tmp_path):
    class Stop(Exception):
        pass

    def stop(info):
        raise Stop()

    with pytest.raises(Stop):
        train(cfg_of(syn, tmp_path, "train.max_steps=1"), callbacks=[stop])
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock.acquire(str(tmp_path)).release()
    # the failure is in train.log, with its traceback (not a user error)
    log = (tmp_path / "train.log").read_text()
    assert "ERROR art_fast.train: error: Stop" in log and "Traceback" in log


# --------------------------------------------------------------------------- 2. re-running

@pytest.fixture(scope="module")
def finished(syn, tmp_path_factory):
    """A finished 2-step run whose warmup (5 steps) exceeds the run."""
    out = tmp_path_factory.mktemp("finished")
    res = train(cfg_of(syn, out, "train.warmup_steps=5"))
    return out, res


def test_log_prefix_epochs_and_warmup_warning(finished):
    out, res = finished
    log = (out / "train.log").read_text()
    assert "art_fast.train: art_fast.train:" not in log
    assert "INFO art_fast.train: run: output_dir=" in log
    assert "epoch 1 step 1/2" in log and "eval epoch 1 step 2" in log  # 1-based epochs
    assert "epoch 0" not in log
    assert "WARNING art_fast.train: the warmup (5 steps" in log and "(2 steps)" in log
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [(r["epoch"], r["step"]) for r in recs] == [(1, 2)]


def test_rerun_into_a_finished_folder(syn, finished, tmp_path):
    out, res = finished
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="already holds a run .*--resume auto.*--overwrite"):
        train(cfg_of(syn, out, "train.warmup_steps=5"))
    assert (out / "metrics.jsonl").read_bytes() == before  # untouched
    # --resume auto: continues (finished: no step), no second record
    steps = []
    again = train(cfg_of(syn, out, "train.warmup_steps=5", "train.resume=auto"),
                  callbacks=[steps.append])
    assert steps == [] and again["step"] == 2
    assert (out / "metrics.jsonl").read_bytes() == before
    with pytest.raises(UserError, match="exclude each other"):
        train(cfg_of(syn, out, "train.resume=auto"), overwrite=True)


def test_overwrite_starts_over(syn, tmp_path):
    out = tmp_path
    train(cfg_of(syn, out, "train.max_steps=1", "train.eval_every=0"))
    (out / "eval").mkdir()
    (out / "eval" / "eval_metrics.json").write_text("{}")
    (out / "mine.txt").write_text("not ours")  # never deleted
    steps = []
    train(cfg_of(syn, out, "train.max_steps=2"), callbacks=[steps.append], overwrite=True)
    assert [s["step"] for s in steps] == [1, 2]
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [(r["epoch"], r["step"]) for r in recs] == [(1, 2)]  # one record, not two
    assert (out / "mine.txt").exists() and not (out / "eval").exists()
    log = (out / "train.log").read_text()
    assert "overwrite: removed the previous run's files" in log
    assert log.count("run: output_dir=") == 1  # the old train.log was removed


def test_resume_drops_metrics_past_the_checkpoint(syn, tmp_path):
    """Killed after an epoch record whose checkpoint was not written: the resumed run writes
    that record again, once."""
    out = tmp_path
    # 12 clips / batch 2 = 6 steps per epoch; save_every=2 -> last.pt at step 4
    train(cfg_of(syn, out, "train.max_steps=4", "train.save_every=2", "train.eval_every=0"))
    with open(out / "metrics.jsonl", "a") as f:  # a record of a step past the checkpoint
        f.write(json.dumps({"epoch": 1, "step": 6}) + "\n" + '{"epoch": 2, "st')  # + torn line
    train(cfg_of(syn, out, "train.max_steps=5", "train.save_every=2", "train.eval_every=0",
                 "train.resume=auto"))
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [4, 5]


# --------------------------------------------------------------------------- 3. temp files

def test_remove_stale_temps_keeps_a_live_writers_file(tmp_path):
    live = tmp_path / f".last.pt.tmp-{os.getpid()}"
    dead = tmp_path / f".last.pt.tmp-{dead_pid()}"
    other = tmp_path / ".notes.tmp-abc"
    for p in (live, dead, other):
        p.write_bytes(b"x")
    assert remove_stale_temps(str(tmp_path)) == [dead.name]
    assert live.exists() and other.exists() and not dead.exists()


# --------------------------------------------------------------------------- 4. resume auto

def test_resolve_auto_resume_damaged_files(tmp_path, caplog):
    save_checkpoint(_state(1.0, 3), tmp_path / "best.pt")
    save_checkpoint(_state(2.0, 5), tmp_path / "last.pt")
    assert resolve_auto_resume(str(tmp_path))[0].endswith("last.pt")
    flip_byte_in(tmp_path / "last.pt", torch.full((8,), 2.0).numpy().tobytes())
    with caplog.at_level(logging.WARNING, "art_fast"):
        path, ckpt = resolve_auto_resume(str(tmp_path))
    assert path.endswith("best.pt") and ckpt["step"] == 3
    assert "last.pt is damaged" in caplog.text and "resuming from" in caplog.text
    (tmp_path / "best.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        resolve_auto_resume(str(tmp_path))
    assert resolve_auto_resume(str(tmp_path / "none")) is None


def test_resume_auto_with_a_damaged_last_pt(syn, tmp_path):
    out = tmp_path
    # last.pt and best.pt (the evaluation at the end) at step 3
    train(cfg_of(syn, out, "train.max_steps=3", "train.save_every=1"))
    assert load_checkpoint(out / "last.pt")["step"] == load_checkpoint(out / "best.pt")["step"] == 3
    data = bytearray((out / "last.pt").read_bytes())
    (out / "last.pt").write_bytes(bytes(data[: len(data) // 2]))  # truncated
    steps = []
    train(cfg_of(syn, out, "train.max_steps=4", "train.save_every=1", "train.resume=auto"),
          callbacks=[lambda i: steps.append(i["step"])])
    assert steps == [4]  # from best.pt (step 3), never from step 1
    log = (out / "train.log").read_text()
    assert "last.pt is damaged" in log and "resuming from" in log and "best.pt" in log


def test_resume_auto_with_no_intact_checkpoint_stops(syn, tmp_path):
    out = tmp_path
    train(cfg_of(syn, out, "train.max_steps=1", "train.eval_every=0"))
    (out / "last.pt").write_bytes(b"\0" * 100)
    flip_byte_in(out / "best.pt", load_checkpoint(out / "best.pt")["model"]["head.fc.weight"]
                 .numpy().tobytes()[:32])
    steps = []
    with pytest.raises(CheckpointError, match="last.pt"):
        train(cfg_of(syn, out, "train.max_steps=2", "train.resume=auto"),
              callbacks=[steps.append])
    assert steps == []
    assert "error: resume=auto: no intact checkpoint" in (out / "train.log").read_text()


# --------------------------------------------------------------------------- 5. digests

def test_checkpoint_digest_catches_a_flipped_bit_and_truncation(tmp_path):
    state = _state(1.2345, 7)
    path = tmp_path / "best.pt"
    digest = save_checkpoint(state, path)
    got = load_checkpoint(path)
    assert got["digest"] == digest == content_digest(got) and got["step"] == 7
    flip_byte_in(path, torch.full((16,), 1.2345).numpy().tobytes())
    assert torch.load(path, weights_only=True)["step"] == 7  # torch alone does not notice
    with pytest.raises(CheckpointError, match=r"best\.pt: content digest mismatch"):
        load_checkpoint(path)
    save_checkpoint(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"best\.pt: the file does not load"):
        load_checkpoint(path)
    # a digest-less format-2 file is damaged; a plain dict (no format) still loads
    atomic_save(state, path)
    with pytest.raises(CheckpointError, match="without its content digest"):
        load_checkpoint(path)
    atomic_save({"model": {}, "step": 1}, path)
    assert load_checkpoint(path)["step"] == 1


def test_digest_is_stable_across_dtypes_and_containers():
    a = {"model": {"x": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "b": torch.ones(2) > 0},
         "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
                       "param_groups": [{"betas": (0.9, 0.999), "params": [0]}]},
         "rng": [{"gauss": None, "v": 1}], "best_top1": float("nan")}
    assert content_digest(a) == content_digest(a)
    buf = io.BytesIO()
    torch.save(a, buf)
    buf.seek(0)
    assert content_digest(torch.load(buf, weights_only=True)) == content_digest(a)
    b = dict(a, model={**a["model"], "x": a["model"]["x"].float()})  # same values, other dtype
    assert content_digest(b) != content_digest(a)


# --------------------------------------------------------------------------- 6. text bank

class FakeText(nn.Module):
    """``encode_text`` of width 8 (as its text projection says), deterministic per prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.text_projection = nn.Parameter(torch.zeros(4, 8))
        self.calls = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        g = torch.Generator().manual_seed(0)
        table = torch.randn(64, 8, generator=g)
        return table[tokens % 64]


def fake_tokenizer(texts):
    return torch.tensor([sum(map(ord, t)) for t in texts])


@pytest.mark.parametrize("bad", ["width", "ints", "nan", "key", "not_a_bank"])
def test_text_bank_cache_is_validated_and_rewritten(tmp_path, caplog, bad):
    from art_fast.model.text_bank import cache_key, load_or_encode

    prompts = [["a {}".replace("{}", c) for c in ("x", "y", "z")],
               ["b {}".replace("{}", c) for c in ("x", "y", "z")]]
    model = FakeText()
    bank, hit = load_or_encode(model, fake_tokenizer, prompts, "fake", "w0", tmp_path)
    assert not hit and bank.shape == (2, 3, 8)
    again, hit = load_or_encode(model, fake_tokenizer, prompts, "fake", "w0", tmp_path)
    assert hit and torch.equal(again, bank)
    key = cache_key("fake", "w0", prompts)
    path = tmp_path / f"{key}.pt"
    blob = {"bank": bank, "model": "fake", "weights": "w0", "key": key}
    if bad == "width":
        blob["bank"] = torch.nn.functional.normalize(torch.randn(2, 3, 5), dim=-1)
    elif bad == "ints":
        blob["bank"] = torch.ones(2, 3, 8, dtype=torch.int64)
    elif bad == "nan":
        blob["bank"] = bank.clone()
        blob["bank"][1, 2, 3] = float("nan")
    elif bad == "key":
        blob["key"] = cache_key("other", "w0", prompts)
    else:
        blob = {"weights": torch.zeros(3)}
    atomic_save(blob, path)
    with caplog.at_level(logging.WARNING, "art_fast"):
        got, hit = load_or_encode(model, fake_tokenizer, prompts, "fake", "w0", tmp_path)
    assert not hit and torch.equal(got, bank)
    assert str(path) in caplog.text and "is not used" in caplog.text
    # rewritten: the next load hits
    got, hit = load_or_encode(model, fake_tokenizer, prompts, "fake", "w0", tmp_path)
    assert hit and torch.equal(got, bank)
    assert [n for n in os.listdir(tmp_path)] == [path.name]


# --------------------------------------------------------------------------- 7. config

@pytest.mark.parametrize("key", ["train.lr", "train.weight_decay", "train.clip_grad",
                                 "train.warmup_epochs", "model.dropout", "model.mtc_temperature",
                                 "data.max_bad_fraction", "model.gamma1"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
def test_config_rejects_non_finite_numbers(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number"):
        load_config(None, ["data.root=x", f"{key}={value}"])


@pytest.mark.parametrize("override", ["model.mtc_weights=[1,.nan,1]", "train.betas=[0.9,.nan]",
                                      "data.crop_scale=[0.5,.inf]"])
def test_config_rejects_non_finite_list_items(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, ["data.root=x", override])


# --------------------------------------------------------------------------- 8. labels

@pytest.mark.parametrize("label", ["2.7", "true", "-1", "1e3", "3.0"])
def test_video_list_labels_must_be_integers(tmp_path, label):
    from art_fast.data import VideoList

    lst = tmp_path / "list.txt"
    lst.write_text(f"a.mp4 0\nb.mp4 1\nc d.mp4 {label}\n")
    with pytest.raises(ValueError, match=rf"list\.txt:3: label '{label}' is not an integer"):
        VideoList(lst)
    lst.write_text(f"a.mp4 jump\nb.mp4 {label}\n")  # names allowed, numbers/booleans not
    with pytest.raises(ValueError, match=rf"list\.txt:2: label '{label}'"):
        VideoList(lst)
    csv = tmp_path / "classes.csv"
    csv.write_text("0,jump\n1,run\n")
    with pytest.raises(ValueError, match=rf"list\.txt:2: label '{label}' is not an integer"):
        VideoList(lst, class_csv=csv)


def test_video_list_mixing_ids_and_names_is_an_error(tmp_path):
    from art_fast.data import VideoList

    lst = tmp_path / "list.txt"
    lst.write_text("a.mp4 0\n\nb.mp4 jump\n")
    with pytest.raises(ValueError, match=r"list\.txt:3: label 'jump' mixes class names"):
        VideoList(lst)


@pytest.mark.parametrize("label", [2.7, True, "2.7", -1])
def test_diving48_labels_must_be_integers(tmp_path, label):
    from art_fast.data import Diving48

    (tmp_path / "Diving48_vocab.json").write_text(json.dumps([["Back", "1som", "NoTwis",
                                                               "PIKE"]] * 1))
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(
        [{"vid_name": "a", "label": 0}, {"vid_name": "b", "label": label}]))
    with pytest.raises(ValueError, match=r"Diving48_V2_train\.json: entry 1 \(vid_name 'b'\): "
                                         r"label .* is not an integer"):
        Diving48(tmp_path, "train")


@pytest.mark.parametrize("label", ["2.7", "true", "1_0"])
def test_finegym_labels_must_be_integers(tmp_path, label):
    from art_fast.data import FineGym

    (tmp_path / "gym99_categories.txt").write_text(
        "Clabel: 0; set: 1; Glabel: 1; (VT) round-off\n")
    (tmp_path / "gym99_train_element_v1.1.txt").write_text(f"a 0\nb {label}\n")
    with pytest.raises(ValueError, match=r"gym99_train_element_v1\.1\.txt:2: label .* is not "
                                         "an integer"):
        FineGym(tmp_path, "train", variant=99)


# --------------------------------------------------------------------------- 9. full disk

def test_full_disk_while_saving_names_the_file_and_keeps_the_previous(syn, tmp_path,
                                                                      monkeypatch):
    out = tmp_path
    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):
        if not os.path.basename(getattr(f, "name", "")).startswith(".last.pt"):
            return real_save(obj, f, *a, **k)  # e.g. the text-bank cache
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_mod.torch, "save", save)
    with pytest.raises(OSError) as info:
        train(cfg_of(syn, out, "train.max_steps=3", "train.save_every=1", "train.eval_every=0"))
    monkeypatch.setattr(io_mod.torch, "save", real_save)
    e = info.value
    assert e.errno == errno.ENOSPC and e.filename == str(out / "last.pt")
    assert load_checkpoint(out / "last.pt")["step"] == 1  # the previous checkpoint, intact
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    log = (out / "train.log").read_text()
    assert f"error: {out / 'last.pt'}: cannot write: No space left on device (ENOSPC, errno 28)" \
        in log
    assert "Traceback" not in log
