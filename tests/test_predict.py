"""Inference: ``art_fast.load_model`` (the checkpoint alone: no data folder, no original
weights, no network), ``ART.predict`` (files, uint8 frames, prepared input; the evaluation
pipeline) and ``art-fast predict`` (text, JSON, a list with labels, a broken file, a missing
checkpoint).

The expectations are computed here independently of art_fast.predict: frames decoded with
PyAV directly, the TSN centre frames and CLIP's normalisation written out, the softmax of the
trained model's own logits. The run trains 2 steps of the tiny model on a tiny synthetic set
whose folder is given relative to the working directory of the run."""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import art_fast
from art_fast.train import trainer as trainer_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, S = 4, 32  # the run's data.num_frames, data.image_size (the synthetic clips: 4 x 32 x 32)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation (OpenAI)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_overrides(text_cache: str) -> list[str]:
    return ["output_dir=run", "data.name=synthetic", "data.root=syn", f"data.num_frames={T}",
            f"data.image_size={S}", "data.num_workers=0", "data.crop_scale=[0.6,1.0]",
            "model.backbone=tiny", "model.latent_dim=16", "model.heads=2", "model.se_layers=1",
            "model.rssa_layers=1", "model.k_region=4", "model.dropout=0.1",
            f"model.text_cache_dir={text_cache}", "train.max_steps=2", "train.batch_size=2",
            "train.lr=1e-3", "train.threads=1", "train.log_every=0", "train.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run in ``work/`` with ``data.root=syn`` and ``output_dir=run`` (relative); the
    trained model object (caught from the trainer); copies of the test videos elsewhere."""
    from art_fast.data.synthetic import make_synthetic
    from art_fast.train import load_config, train

    base = tmp_path_factory.mktemp("predict")
    work = base / "work"
    work.mkdir()
    make_synthetic(work / "syn", classes=4, videos_per_class=4, frames=4, size=S, seed=0)
    caught = []
    real_build = trainer_mod.build_model

    def spy(*args, **kwargs):
        caught.append(real_build(*args, **kwargs))
        return caught[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(trainer_mod, "build_model", spy)
        train(load_config(None, tiny_overrides(str(base / "text_bank"))))
    assert len(caught) == 1
    videos = base / "videos"
    videos.mkdir()
    test = json.loads((work / "syn" / "Diving48_V2_test.json").read_text())
    clips = []
    for item in test:
        dst = videos / f"{item['vid_name']}.mp4"
        shutil.copy(work / "syn" / "rgb" / f"{item['vid_name']}.mp4", dst)
        clips.append((str(dst), int(item["label"])))
    return {"base": base, "work": work, "ckpt": str(work / "run" / "last.pt"),
            "model": caught[0].eval(), "clips": clips}


@contextlib.contextmanager
def data_folder_gone(work):
    """The run's data folder is away for the block (renamed, put back after)."""
    os.rename(work / "syn", work / "syn.away")
    try:
        yield
    finally:
        os.rename(work / "syn.away", work / "syn")


def decoded(path: str) -> torch.Tensor:
    """All frames of ``path``, uint8 [F, H, W, 3] RGB, decoded with PyAV directly."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames))


def normalised(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, S, S, 3] -> float [T, 3, S, S], CLIP-normalised (written out here)."""
    x = frames.permute(0, 3, 1, 2).double() / 255.0
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float()


def centre_frames(n: int, t: int) -> list[int]:
    """TSN evaluation: the centre frame of each of ``t`` equal segments of ``n`` frames."""
    return [int(((i + 0.5) * n) // t) for i in range(t)]


@torch.no_grad()
def expected_probs(model, views: torch.Tensor) -> torch.Tensor:
    """softmax of ``model``'s logits on ``views`` [V, T, 3, S, S], averaged over the views."""
    return model(views).logits.softmax(-1).mean(0)


def as_dict(pairs):
    return dict(pairs)


# ================================================================ where the run stores paths

def test_run_stores_absolute_paths(run):
    from art_fast.train import load_checkpoint, load_config

    ckpt = load_checkpoint(run["ckpt"])
    assert ckpt["config"]["data"]["root"] == str(run["work"] / "syn")
    assert ckpt["config"]["output_dir"] == str(run["work"] / "run")
    saved = load_config(run["work"] / "run" / "config.yaml")
    assert saved.data.root == str(run["work"] / "syn")


def test_eval_from_another_directory(run, tmp_path, monkeypatch, capsys):
    """``art-fast eval <ckpt>`` away from the run's directory: the stored data.root is
    absolute. main_eval reads the checkpoint once."""
    from art_fast.train import main_eval

    monkeypatch.chdir(tmp_path)
    reads = []
    real = trainer_mod.load_checkpoint
    monkeypatch.setattr(trainer_mod, "load_checkpoint",
                        lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert main_eval(run["ckpt"], [], str(tmp_path / "ev")) == 0
    assert len(reads) == 1
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("eval: "):])
    assert rep["num_samples"] == len(run["clips"])
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert sorted(r["path"] for r in rows) == sorted(
        str(run["work"] / "syn" / "rgb" / os.path.basename(p)) for p, _ in run["clips"])


def test_overrides_of_paths_are_relative_to_the_current_directory(run, tmp_path, monkeypatch):
    from art_fast.train import load_trained

    monkeypatch.chdir(tmp_path)
    _, cfg, _ = load_trained(run["ckpt"], ["data.root=elsewhere/syn"])
    assert cfg.data.root == str(tmp_path / "elsewhere" / "syn")


# ================================================================ load_model

def test_loaded_model_is_bitwise_the_trained_one(run):
    trained = run["model"]
    loaded = art_fast.load_model(run["ckpt"])
    assert isinstance(loaded, art_fast.ART) and not loaded.training
    assert loaded.class_names == trained.class_names and loaded.options == trained.options
    want, got = trained.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = torch.randn(3, T, 3, S, S, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = trained(x), loaded(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.logits_v, b.logits_v)
    assert torch.equal(a.tracklets, b.tracklets)
    assert torch.equal(a.region_indices, b.region_indices)


def test_load_model_elsewhere_without_the_data_folder(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with data_folder_gone(run["work"]):
        model = art_fast.load_model(run["ckpt"])
        path, _ = run["clips"][0]
        top = model.predict(path)
    assert len(top) == 4 and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)


def _with_config(ckpt_path: str, out: str, **model_keys) -> str:
    from art_fast.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    ckpt["config"]["model"].update(model_keys)
    save_checkpoint(ckpt, out)
    return out


class NoNetwork:
    """open_clip.create_model spied on; the text encoding and any socket connection fail."""

    def __init__(self, monkeypatch):
        import open_clip

        self.pretrained = []
        real = open_clip.create_model

        def create_model(name, *args, **kwargs):
            self.pretrained.append(kwargs.get("pretrained", args[0] if args else None))
            return real(name, *args, **kwargs)

        def refuse(*a, **k):
            raise AssertionError("the load path touched the network / encoded the text bank")

        monkeypatch.setattr(open_clip, "create_model", create_model)
        monkeypatch.setattr("art_fast.model.art.load_or_encode", refuse)
        monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("pretrained", ["openai", "/nonexistent/weights/ViT-tiny.pt"])
def test_load_model_never_uses_the_pretrained_source(run, tmp_path, monkeypatch, caplog,
                                                     pretrained):
    """A tag (would download) or a file that is gone: loading builds with pretrained=None,
    never encodes the text bank, logs no 'initialized randomly' warning, and gives the
    trained model."""
    ckpt = _with_config(run["ckpt"], str(tmp_path / "moved.pt"), pretrained=pretrained)
    spy = NoNetwork(monkeypatch)
    caplog.set_level(logging.WARNING)
    with data_folder_gone(run["work"]):
        model = art_fast.load_model(ckpt)
    assert spy.pretrained == [None]
    assert "initialized randomly" not in caplog.text and "No pretrained" not in caplog.text
    x = torch.randn(2, T, 3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x).logits, run["model"](x).logits)
    # the same build outside the load path does warn: the check above is not vacuous
    monkeypatch.undo()
    caplog.clear()
    art_fast.ART(["a", "b"], backbone="tiny", num_frames=2, image_size=32, latent_dim=16,
                 heads=2, se_layers=1, rssa_layers=1, text_cache=False)
    assert "initialized randomly" in caplog.text


def test_load_model_keeps_the_global_rng(run):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    art_fast.load_model(run["ckpt"])
    assert torch.equal(torch.rand(3), want)


def test_uniformerv2_from_an_official_file_loads_without_it(tmp_path, monkeypatch, caplog):
    """A UniFormerV2 ART built from an official video checkpoint (and a text_pretrained tag)
    loads from a trainer-format checkpoint after that file is gone: the same architecture
    with pretrained=None."""
    from art_fast.train import config_to_dict, load_config
    from art_fast.train.checkpoint import save_checkpoint

    monkeypatch.syspath_prepend(ROOT)  # test_uniformerv2 imports tests._util
    from tests.test_uniformerv2 import SMALL_ART, tiny_official

    official = tmp_path / "k400_tiny.pyth"
    torch.save({"model_state": tiny_official(seed=7)}, official)
    sets = [f"model.{k}={v}" for k, v in SMALL_ART.items()]
    cfg = load_config(None, ["data.root=/nowhere", "data.num_frames=8", "data.image_size=64",
                             f"model.pretrained={official}",
                             f"model.text_cache_dir={tmp_path / 'tb'}", *sets])
    kw = cfg.model.art_kwargs()
    backbone, pretrained = kw.pop("backbone"), kw.pop("pretrained")
    classes = ["w", "x", "y", "z"]
    made = art_fast.ART(classes, backbone=backbone, pretrained=pretrained, num_frames=8,
                        image_size=64, **kw).eval()
    assert made.video_checkpoint_report is not None  # the official weights were used
    stored = config_to_dict(cfg)
    stored["model"]["text_pretrained"] = "openai"  # would download: must not be used either
    ckpt = str(tmp_path / "best.pt")
    save_checkpoint({"format": 2, "model": made.state_dict(), "class_names": classes,
                     "config": stored, "step": 1}, ckpt)
    official.unlink()
    spy = NoNetwork(monkeypatch)
    caplog.set_level(logging.WARNING)
    caplog.clear()  # the build of `made` above did warn
    loaded = art_fast.load_model(ckpt)
    assert spy.pretrained == [None] and "initialized randomly" not in caplog.text
    x = torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, made(x).logits)


# ================================================================ ART.predict

def test_predict_on_a_file_is_the_evaluation_pipeline(run):
    """A file: T centre frames of the TSN segments, CLIP-normalised (32 x 32 clips at size 32:
    resize and centre crop keep them), the softmax of the model's logits."""
    model = art_fast.load_model(run["ckpt"])
    for path, _ in run["clips"][:2]:
        frames = decoded(path)
        x = normalised(frames[centre_frames(len(frames), T)]).unsqueeze(0)
        want = expected_probs(run["model"], x)
        top = model.predict(path, top=3)
        assert [name for name, _ in top] == [model.class_names[int(i)]
                                              for i in want.topk(3).indices]
        for name, p in top:
            assert p == pytest.approx(float(want[model.class_names.index(name)]), abs=1e-5)
        # every view of (2 clips x 3 crops) is that same input here (4 frames, 32 x 32)
        assert as_dict(model.predict(path, views=(2, 3))) == pytest.approx(
            as_dict(model.predict(path)), abs=1e-5)


def test_predict_on_tensors(run):
    model = art_fast.load_model(run["ckpt"])
    names = model.class_names
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (8, S, S, 3), dtype=torch.uint8, generator=g)
    # uint8 [T, H, W, 3] with 8 frames: the centre frames of 4 segments (1, 3, 5, 7)
    want = expected_probs(run["model"], normalised(frames[centre_frames(8, T)]).unsqueeze(0))
    got = as_dict(model.predict(frames, top=4))
    assert got == pytest.approx({names[i]: float(want[i]) for i in range(4)}, abs=1e-5)
    # uint8 [V, T, S, S, 3]: prepared views, averaged
    views = torch.stack([frames[:T], frames[T:]])
    x = torch.stack([normalised(v) for v in views])
    want = expected_probs(run["model"], x)
    got = as_dict(model.predict(views, top=4))
    assert got == pytest.approx({names[i]: float(want[i]) for i in range(4)}, abs=1e-5)
    # a float model input [T, 3, S, S] is used as is
    xf = torch.randn(T, 3, S, S, generator=g)
    want = expected_probs(run["model"], xf.unsqueeze(0))
    assert as_dict(model.predict(xf, top=4)) == pytest.approx(
        {names[i]: float(want[i]) for i in range(4)}, abs=1e-6)
    # frames of another size go through resize + centre crop; top is capped at C
    big = torch.randint(0, 256, (5, 48, 40, 3), dtype=torch.uint8, generator=g)
    top = model.predict(big, top=10)
    assert len(top) == 4 and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_predict_of_a_model_built_by_hand(tmp_path):
    torch.manual_seed(0)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=3, image_size=32,
                         latent_dim=16, heads=2, se_layers=1, rssa_layers=1,
                         text_cache_dir=str(tmp_path))
    assert model.predict_settings is None and model.training
    frames = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    model.eval()
    want = expected_probs(model, normalised(frames[centre_frames(6, 3)]).unsqueeze(0))
    model.train()
    got = as_dict(model.predict(frames))
    assert got == pytest.approx({c: float(want[i]) for i, c in enumerate("abc")}, abs=1e-5)
    assert model.training  # the mode is restored


def test_predict_rejects_bad_input(run, tmp_path):
    from art_fast.data import VideoDecodeError

    model = art_fast.load_model(run["ckpt"])
    with pytest.raises(TypeError, match="video must be a video file path"):
        model.predict(123)
    with pytest.raises(ValueError, match=r"video must be .*\[T, H, W, 3\]"):
        model.predict(torch.zeros(T, S, S, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"video must be .*got torch.float32 \[2, 3, 32, 32\]"):
        model.predict(torch.zeros(2, 3, S, S))
    with pytest.raises(ValueError, match="video must be"):
        model.predict(torch.zeros(2, T, S + 2, S + 2, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="video must be"):
        model.predict(torch.zeros(T, S, S, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="top must be an int >= 1"):
        model.predict(run["clips"][0][0], top=0)
    with pytest.raises(ValueError, match=r"views must be \(clips, crops\)"):
        model.predict(run["clips"][0][0], views=(1, 2))
    with pytest.raises(FileNotFoundError, match="video file not found"):
        model.predict(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoDecodeError):
        model.predict(str(bad))


# ================================================================ art-fast predict

def cli_main(*args: str) -> int:
    from art_fast.cli import main

    return main(list(args))


def parse_text(out: str) -> dict[str, list[tuple[str, float]]]:
    """The text output: a path line, then ``  r. prob  name`` lines."""
    blocks: dict[str, list[tuple[str, float]]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("  ") and current is not None:
            _, prob, name = line.strip().split(None, 2)
            blocks[current].append((name, float(prob)))
        elif not line.startswith("predict: "):
            current = line.split("  (label: ")[0]
            blocks[current] = []
    return blocks


def test_cli_text_output(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = art_fast.load_model(run["ckpt"])
    paths = [p for p, _ in run["clips"][:2]]
    assert cli_main("predict", run["ckpt"], *paths, "--top", "2") == 0
    cap = capsys.readouterr()
    blocks = parse_text(cap.out)
    assert list(blocks) == paths
    for p in paths:
        want = model.predict(p, top=2)
        assert [n for n, _ in blocks[p]] == [n for n, _ in want]
        assert [v for _, v in blocks[p]] == pytest.approx([v for _, v in want], abs=1e-4)
    assert not os.path.exists(tmp_path / "predictions.csv")  # no --list, no --out: no CSV


def test_cli_list_json_csv_and_a_broken_file(run, tmp_path, monkeypatch, capfd):
    """--list with labels and a broken file: the broken one reported in one line (on file
    descriptor 2: nothing from the decoders' C libraries either) and skipped, the others
    predicted; JSON lines; the CSV; the top-1 accuracy; exit status 1."""
    monkeypatch.chdir(tmp_path)
    clips = run["clips"]
    broken = tmp_path / "lists" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    lines = [f"{p} {lab}" for p, lab in clips[:2]] + ["broken.mp4 1"] + \
            [f"{p} {lab}" for p, lab in clips[2:]]
    (tmp_path / "lists" / "videos.txt").write_text("\n".join(lines) + "\n\n")
    code = cli_main("predict", run["ckpt"], "--list", "lists/videos.txt", "--json", "--top", "2",
                    "--out", "out/preds.csv")
    cap = capfd.readouterr()
    assert code == 1
    err = [x for x in cap.err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith(f"predict: cannot read {broken}: "), cap.err
    objs = [json.loads(x) for x in cap.out.splitlines()]
    rows, summary = objs[:-1], objs[-1]["summary"]
    assert [r["path"] for r in rows] == [p for p, _ in clips]
    names = art_fast.load_model(run["ckpt"]).class_names
    for r, (_, lab) in zip(rows, clips):
        assert r["label"] == names[lab] and len(r["top"]) == 2
        assert r["correct"] == (r["top"][0]["index"] == lab)
        assert names[r["top"][0]["index"]] == r["top"][0]["class"]
    correct = sum(r["top"][0]["index"] == lab for r, (_, lab) in zip(rows, clips))
    assert summary["failed"] == 1 and summary["videos"] == len(clips) + 1
    assert summary["labelled"] == len(clips) and summary["correct"] == correct
    assert summary["top1_accuracy"] == pytest.approx(correct / len(clips))
    table = list(csv.DictReader(open(tmp_path / "out" / "preds.csv")))
    assert [t["path"] for t in table] == [p for p, _ in clips]
    assert list(table[0]) == ["path", "label", "correct", "top1", "top1_prob", "top2",
                              "top2_prob"]
    for t, r in zip(table, rows):
        assert t["top1"] == r["top"][0]["class"] and t["label"] == r["label"]
        assert float(t["top1_prob"]) == pytest.approx(r["top"][0]["prob"], abs=1e-6)


def test_cli_list_text_writes_predictions_csv_here(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    clips = run["clips"]
    (tmp_path / "v.txt").write_text("".join(f"{p} {lab}\n" for p, lab in clips))
    assert cli_main("predict", run["ckpt"], "--list", "v.txt", "--views", "1,3") == 0
    out = capsys.readouterr().out
    table = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    names = art_fast.load_model(run["ckpt"]).class_names
    correct = sum(t["top1"] == names[lab] for t, (_, lab) in zip(table, clips))
    assert f"predict: top-1 accuracy {correct / len(clips):.4f} ({correct} of {len(clips)} " \
           "labelled videos)" in out
    assert len(table) == len(clips) and len(parse_text(out)) == len(clips)


def test_cli_user_errors(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = run["clips"][0][0]
    for args, text in [(("--views", "2,2"), "--views '2,2': expected C,S"),
                       (("--views", "x"), "--views 'x': expected C,S"),
                       (("--top", "0"), "--top 0: expected an int >= 1")]:
        assert cli_main("predict", run["ckpt"], path, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("art-fast predict: error: ") and text in err[0]
    assert cli_main("predict", run["ckpt"]) == 2
    assert "give one or more VIDEO files or --list FILE" in capsys.readouterr().err


def run_python(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
           "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    proc = run_python(["-m", "art_fast.cli", "predict", "nope.pt", "clip.mp4"], str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "art-fast predict: error: checkpoint 'nope.pt' does not exist"]


def test_readme_snippet(run, tmp_path):
    """The README's five lines, run as they are in a fresh process elsewhere, without the
    data folder."""
    path = run["clips"][0][0]
    snippet = textwrap.dedent(f"""\
        import art_fast

        ckpt, path = {run['ckpt']!r}, {path!r}
        model = art_fast.load_model(ckpt)
        print(model.predict(path))
        """)
    (tmp_path / "snippet.py").write_text(snippet)
    with data_folder_gone(run["work"]):
        proc = run_python(["snippet.py"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "initialized randomly" not in proc.stderr
    top = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    frames = decoded(path)
    want = expected_probs(run["model"], normalised(frames[centre_frames(len(frames), T)])
                          .unsqueeze(0))
    names = run["model"].class_names
    assert [n for n, _ in top] == [names[int(i)] for i in want.topk(4).indices]
    assert [p for _, p in top] == pytest.approx(want.topk(4).values.tolist(), abs=1e-5)


def test_read_video_list(tmp_path):
    """``path [label]`` lines: relative to the list's folder, labels optional (index or class
    name), a path with a space that exists as a whole; a bad label names the file and line."""
    from art_fast.predict import read_video_list

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my clip.mp4").write_bytes(b"")
    names = ["jump", "turn around", "sit"]
    lst = tmp_path / "sub" / "list.txt"
    lst.write_text("a.mp4 2\n\n/abs/b.mp4 jump\nmy clip.mp4\nc.mp4\n")
    assert read_video_list(lst, names) == [
        (str(tmp_path / "sub" / "a.mp4"), 2), ("/abs/b.mp4", 0),
        (str(tmp_path / "sub" / "my clip.mp4"), None), (str(tmp_path / "sub" / "c.mp4"), None)]
    lst.write_text("a.mp4 1\nb.mp4 3\n")
    with pytest.raises(ValueError, match=r"list.txt:2: label '3' is not a class index \(0..2\)"):
        read_video_list(lst, names)
