"""Config: YAML + dotted overrides into dataclasses; unknown keys and bad values are errors
that name the key; the resolved config round-trips; the shipped configs load; datasets."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import yaml
from test_train_helpers import synthetic_root, tiny_config

from art_fast import ARTOptions
from art_fast.train import (
    Config,
    ConfigError,
    ModelConfig,
    build_dataset,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "output_dir: out\ndata: {name: diving48, root: /d}\n"
                           "train: {lr: 0.01, optimizer: sgd}\n")
    cfg = load_config(path, ["train.epochs=7", "eval.views=[2, 3]", "model.k_region=null",
                             "model.mtc_weights=[1, 0.5, 0]", "train.amp=off",
                             "data.root=/other dir"])
    assert cfg.output_dir == "out" and cfg.data.name == "diving48"
    assert cfg.data.root == "/other dir"
    assert cfg.train.lr == 0.01 and cfg.train.optimizer == "sgd" and cfg.train.epochs == 7
    assert cfg.eval.views == [2, 3] and cfg.model.k_region is None
    assert cfg.model.mtc_weights == [1.0, 0.5, 0.0]
    assert cfg.train.amp == "off"  # YAML 1.1 reads a bare `off` as false: still "off"
    assert isinstance(cfg.train.lr, float)
    assert load_config(path, ["train.lr=1"]).train.lr == 1.0  # int -> float is fine


@pytest.mark.parametrize("text, key", [
    ("data: {name: diving48, root: /d, nmae: x}\n", "data.nmae"),
    ("data: {name: diving48, root: /d}\ntrain: {learning_rate: 0.1}\n", "train.learning_rate"),
    ("data: {name: diving48, root: /d}\noptim: {lr: 1}\n", "optim"),
])
def test_unknown_yaml_keys(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(write(tmp_path, text))


def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, "data: {name: diving48, root: /d}\n")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(path, ["train.batchsize=4"])
    with pytest.raises(ConfigError, match="unknown config key 'trian.lr'"):
        load_config(path, ["trian.lr=4"])
    with pytest.raises(ConfigError, match="unknown config key 'train.lr.x'"):
        load_config(path, ["train.lr.x=4"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(path, ["train=3"])


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=two", "train.batch_size: expected an integer, got 'two'"),
    ("train.batch_size=0", "train.batch_size: expected a value >= 1, got 0"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("train.lr=-1", "train.lr: expected a value >= 0"),
    ("train.optimizer=adam", r"train.optimizer: expected one of \['adamw', 'sgd'\]"),
    ("train.amp=fp8", "train.amp: expected one of"),
    ("train.schedule=linear", "train.schedule: expected one of"),
    ("data.name=imagenet", "data.name: expected one of"),
    ("train.deterministic=maybe", "train.deterministic: expected true/false"),
    ("model.dropout=1.5", "model.dropout: expected a value <= 0.999"),
    ("model.temporal_shift=1.5", "model.temporal_shift: expected a value <= 1"),
    ("model.temporal_shift=-0.25", "model.temporal_shift: expected a value >= 0"),
    ("model.mtc_weights=[1, 2]", "model.mtc_weights: expected 3 numbers"),
    ("model.mtc_weights=3", "model.mtc_weights: expected a list of a number"),
    ("eval.views=[1, 2]", "eval.views: expected"),
    ("model.latent_dim=30", r"model.latent_dim \(30\) must be divisible by model.heads"),
    ("model.pretrained=5", "model.pretrained: expected a string or null, got 5"),
    ("train.clip_grad=0", "train.clip_grad: expected a value > 0"),
])
def test_bad_values(tmp_path, override, message):
    path = write(tmp_path, "data: {name: diving48, root: /d}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_bad_values_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 'ten'"):
        load_config(write(tmp_path, "data: {name: diving48, root: /d}\ntrain: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(write(tmp_path, "data: {name: diving48, root: /d}\ntrain: 3\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="data.root: required"):
        load_config(write(tmp_path, "data: {name: diving48}\n"))


def test_model_section_covers_every_art_option():
    """ModelConfig must expose every ARTOptions knob (and nothing ART does not take)."""
    opts = {f.name for f in dataclasses.fields(ARTOptions)}
    extra = {"backbone", "pretrained", "num_queries", "latent_dim", "k_region"}
    assert {f.name for f in dataclasses.fields(ModelConfig)} == opts | extra
    for f in dataclasses.fields(ARTOptions):  # same defaults (tuples become lists)
        want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        got = getattr(ModelConfig(), f.name)
        assert (list(want) if isinstance(want, tuple) else want) == got, f.name


def test_roundtrip_and_saved_yaml(tmp_path):
    cfg = load_config(None, ["data.root=/d", "train.lr=0.5", "eval.views=[3,1]"])
    p = tmp_path / "config.yaml"
    save_config(cfg, p)
    again = load_config(str(p))
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert yaml.safe_load(p.read_text())["train"]["lr"] == 0.5


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    if os.path.basename(path) not in ("synthetic_tiny.yaml", "binding_tiny.yaml"):  # the paper's
        assert cfg.model.backbone in ("ViT-B-16", "uniformerv2-b16")
        assert cfg.data.num_frames == 16
        assert cfg.data.image_size == 224 and cfg.model.num_queries == 2
        assert cfg.model.latent_dim == 256


def test_shipped_configs_exist():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.yaml"))}
    assert {"synthetic_tiny.yaml", "binding_tiny.yaml", "diving48.yaml", "gym99.yaml",
            "gym288.yaml", "ssv2.yaml", "k400.yaml"} <= names


def test_build_dataset(tmp_path):
    cfg = tiny_config(str(tmp_path), "eval.views=[2,3]")
    tr = build_dataset(cfg, None, train=True)
    ev = build_dataset(cfg, None, train=False)
    assert (len(tr), len(ev)) == (12, 4) and tr.classes == ev.classes
    video, label = tr[0]
    assert video.shape == (4, 32, 32, 3) and 0 <= label < 4
    assert ev[0][0].shape == (6, 4, 32, 32, 3)  # 2 clips x 3 crops
    missing = tiny_config(str(tmp_path), f"data.root={tmp_path}/none")
    with pytest.raises(FileNotFoundError, match="art-fast synth"):
        build_dataset(missing, None, train=True)


def test_build_list_dataset(tmp_path):
    root = synthetic_root()
    vids = sorted(glob.glob(os.path.join(root, "rgb", "*.mp4")))[:4]
    (tmp_path / "train.txt").write_text("".join(f"{v} {i % 2}\n" for i, v in enumerate(vids)))
    (tmp_path / "val.txt").write_text(f"{vids[0]} 1\n")
    (tmp_path / "classes.csv").write_text("0,left\n1,right\n")
    cfg = tiny_config(str(tmp_path), "data.name=list", f"data.train_list={tmp_path}/train.txt",
                      f"data.eval_list={tmp_path}/val.txt",
                      f"data.class_csv={tmp_path}/classes.csv")
    assert len(build_dataset(cfg, None, True)) == 4
    ev = build_dataset(cfg, None, False)
    assert len(ev) == 1 and ev.classes == ["left", "right"] and ev.labels == [1]
