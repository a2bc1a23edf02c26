"""Config: YAML + dotted overrides into dataclasses (OmegaConf structured configs); unknown
keys and bad values are errors that name the key; the resolved config round-trips; the shipped
configs load; datasets."""

from __future__ import annotations

import copy
import dataclasses
import glob
import os
import re

import pytest
import yaml
from omegaconf import OmegaConf
from test_train_helpers import synthetic_root, tiny_config

from art_fast import ARTOptions
from art_fast.train import (
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    build_dataset,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
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


# --------------------------------------------------------------------------- OmegaConf parsing

def test_overrides_of_every_field_type():
    cfg = load_config(None, [
        "data.root=/d",
        "train.epochs=7", "data.num_workers=0",                  # int
        "train.lr=1e-4", "train.weight_decay=2", "model.mtc_lambda=.5",  # float (an int too)
        "train.nesterov=true", "data.pin_memory=false",          # bool
        "model.backbone=tiny", "data.train_split='123'",         # str (quoted: a string)
        "output_dir=runs/a=b",                                   # only the first = splits
        "train.max_steps=5", "train.clip_grad=null", "model.k_region=null",  # optional
        "model.pretrained=null", "eval.batch_size=3", "train.threads=2",
        "eval.views=[2, 3]", "data.crop_scale=[0.5, 1]",         # lists
        "model.templates=['a video of {}', 'a {}']", "train.betas=[0.8, 0.99]",
    ])
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int
    assert cfg.data.num_workers == 0
    assert cfg.train.lr == 1e-4 and type(cfg.train.lr) is float
    assert cfg.train.weight_decay == 2.0 and type(cfg.train.weight_decay) is float
    assert cfg.model.mtc_lambda == 0.5
    assert cfg.train.nesterov is True and cfg.data.pin_memory is False
    assert cfg.model.backbone == "tiny" and cfg.data.train_split == "123"
    assert cfg.output_dir == "runs/a=b"
    assert cfg.train.max_steps == 5 and cfg.train.clip_grad is None
    assert cfg.model.k_region is None and cfg.model.pretrained is None
    assert cfg.eval.batch_size == 3 and cfg.train.threads == 2
    assert cfg.eval.views == [2, 3] and type(cfg.eval.views) is list
    assert cfg.data.crop_scale == [0.5, 1.0] and all(type(v) is float for v in cfg.data.crop_scale)
    assert cfg.model.templates == ["a video of {}", "a {}"]
    assert cfg.train.betas == [0.8, 0.99]
    # null back to a value, an empty value is the empty string, later overrides win
    cfg = load_config(None, ["data.root=/d", "model.k_region=null", "model.k_region=4",
                             "data.video_dir=", "train.epochs=3", "train.epochs=4"])
    assert cfg.model.k_region == 4 and cfg.data.video_dir == "" and cfg.train.epochs == 4
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("eval.views=[2,3]") == ("eval.views", [2, 3])
    assert parse_override(" data.root = /x y ") == ("data.root", "/x y")
    assert parse_override("data.root=") == ("data.root", "")
    # tuples (a dict built in code) are lists
    cfg = config_from_dict({"data": {"root": "/d", "crop_scale": (0.5, 1.0)},
                            "eval": {"views": (2, 3)}})
    assert cfg.data.crop_scale == [0.5, 1.0] and cfg.eval.views == [2, 3]


@pytest.mark.parametrize("override, message", [
    ("train.nesterov=1", "train.nesterov: expected true/false, got 1"),      # int is no bool
    ("train.nesterov='true'", "train.nesterov: expected true/false, got 'true'"),
    ("train.epochs=true", "train.epochs: expected an integer, got True"),    # bool is no int
    ("train.epochs='3'", "train.epochs: expected an integer, got '3'"),
    ("train.epochs=1e400", "train.epochs: expected an integer, got inf"),
    ("train.lr=true", "train.lr: expected a number, got True"),
    ("model.backbone=5", r"model.backbone: expected a string, got 5 \(quote it"),
    ("model.backbone=null", "model.backbone: expected a string, got None"),
    ("model.backbone=[a]", r"model.backbone: expected a string, got \['a'\]"),
    ("train.max_steps=1.5", "train.max_steps: expected an integer or null, got 1.5"),
    ("eval.views=[1, '3']", r"eval.views: expected a list of an integer, got \[1, '3'\]"),
    ("eval.views=[true, 1]", r"eval.views: expected a list of an integer, got \[True, 1\]"),
    ("model.templates=[1]", r"model.templates: expected a list of a string or null"),
    ("train.lr=[1", r"override 'train.lr=\[1': the value is not valid YAML"),
    ("train..lr=1", "unknown config key 'train..lr'"),
    ("train.lr[0]=1", r"unknown config key 'train.lr\[0\]'"),
    ("=1", "empty key"),
])
def test_override_type_errors(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["data.root=/d", override])
    assert "\n" not in str(e.value)


def test_nested_unknown_key_names_section_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.root=/d", "model.laten_dim=8"])
    msg = str(e.value)
    assert msg.startswith("unknown config key 'model.laten_dim'; did you mean 'latent_dim'? "
                          "(section 'model' has: backbone, pretrained, ")
    assert "\n" not in msg and e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(ConfigError, match="unknown config key 'trian.lr'; did you mean "
                                          "'train'.*the top level has: output_dir, data"):
        load_config(None, ["trian.lr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lr.x' \(train.lr takes a "
                                          "value"):
        load_config(write(tmp_path, "data: {root: /d}\ntrain: {lr: {x: 1}}\n"))


def test_yaml_unknown_key_names_the_file(tmp_path):
    path = write(tmp_path, "data: {root: /d}\nmodel:\n  k_regoin: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: unknown config key 'model.k_regoin'; did you mean "
                                   "'k_region'? (section 'model' has: ")
    path = write(tmp_path, "data: {root: /d}\ntrain: {epochs: ten}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(path)}: train.epochs: expected an integer"):
        load_config(path)


@pytest.mark.parametrize("text", [
    "data: !!python/object/apply:os.system ['touch {marker}']\n",
    "data: !!python/object/new:os.system ['touch {marker}']\n",
    "!!python/object:art_fast.train.config.Config {{output_dir: x}}\n",
    "data: {{root: !!python/name:os.system }}\n",
])
def test_yaml_tags_are_refused(tmp_path, text):
    marker = tmp_path / "marker"
    path = write(tmp_path, text.format(marker=marker))
    with pytest.raises(ConfigError, match=f"^{re.escape(path)}: not valid YAML: could not "
                                          "determine a constructor for the tag "
                                          "'tag:yaml.org,2002:python/"):
        load_config(path)
    assert not marker.exists()
    # OmegaConf's own loader (what load_config uses) constructs none of them
    with pytest.raises(yaml.YAMLError):
        OmegaConf.load(path)


def test_yaml_other_refusals(tmp_path):
    # the pathlib tags OmegaConf's loader knows build a Path, which no key takes
    with pytest.raises(ConfigError, match=r"data.root: expected a string or null, got "
                                          r"PosixPath\('/d'\)"):
        load_config(write(tmp_path, "data: {root: !!python/object/apply:pathlib.Path [/d]}\n"))
    with pytest.raises(ConfigError, match="found duplicate key lr"):
        load_config(write(tmp_path, "data: {root: /d}\ntrain: {lr: 1, lr: 2}\n"))
    with pytest.raises(ConfigError, match="must be a mapping of keys"):
        load_config(write(tmp_path, "3\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [1\n"))
    with pytest.raises(ConfigError, match="must be a mapping of keys, got list"):
        config_from_dict([1])  # type: ignore[arg-type]
    # an empty file and empty sections keep the defaults
    assert load_config(write(tmp_path, ""), ["data.root=/d"]) == load_config(None, ["data.root=/d"])
    assert load_config(write(tmp_path, "data: {root: /d}\ntrain:\n")).train.epochs == 50


@pytest.mark.parametrize("text", [
    "train: {lr: .nan}\n", "train: {lr: .inf}\n", "model: {gamma1: 1e400}\n",
    "train: {clip_grad: -.inf}\n", "data: {crop_scale: [0.5, .inf]}\n",
    "model: {mtc_weights: [1, .nan, 1]}\n", "train: {lr: 'nan'}\n",
])
def test_non_finite_numbers_in_yaml(tmp_path, text):
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(write(tmp_path, text), ["data.root=/d"])


def test_non_finite_numbers_in_dicts():
    for section, key in (("train", "lr"), ("model", "dropout"), ("train", "clip_grad")):
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ConfigError, match=f"^{section}.{key}: expected a finite number"):
                config_from_dict({"data": {"root": "/d"}, section: {key: bad}})


def test_roundtrip_of_a_changed_config(tmp_path):
    cfg = load_config(None, [
        "data.root=/d", "output_dir='1e3'", "data.train_split='off'", "data.video_dir='null'",
        "train.amp=off", "model.templates=['a {}']", "train.max_steps=9", "model.k_region=null",
        "train.lr=2.5e-05", "eval.views=[2,3]", "train.resume=auto", "model.text_pretrained='yes'"])
    assert (cfg.output_dir, cfg.data.train_split, cfg.data.video_dir) == ("1e3", "off", "null")
    assert cfg.model.text_pretrained == "yes"
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert config_from_dict(copy.deepcopy(d)) == cfg and d == config_to_dict(cfg)
    p = tmp_path / "config.yaml"
    save_config(cfg, p)  # strings that read as numbers, bools or null are quoted
    assert load_config(str(p)) == cfg
    assert yaml.safe_load(p.read_text()) == d


def test_interpolation_in_strings(tmp_path):
    cfg = load_config(write(tmp_path, "output_dir: runs/${data.name}-${train.epochs}\n"
                                      "data: {name: diving48, root: /d}\n"),
                      ["data.video_dir=${data.root}/rgb"])
    assert cfg.output_dir == "runs/diving48-50" and cfg.data.video_dir == "/d/rgb"
    with pytest.raises(ConfigError, match="^output_dir: Interpolation key 'nope' not found"):
        load_config(None, ["data.root=/d", "output_dir=${nope}"])
    # a resolved config's strings are literal: `${` (written \${) survives every round trip
    cfg = load_config(None, ["data.root=/d", r"output_dir=runs/\${HOME}/a\\\${b}"])
    assert cfg.output_dir == r"runs/${HOME}/a\${b}"
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert apply_overrides(copy.deepcopy(cfg), ["train.lr=0.1"]).output_dir == cfg.output_dir
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_apply_overrides_in_place_and_atomic():
    cfg = load_config(None, ["data.root=/d"])
    train_section = cfg.train
    assert apply_overrides(cfg, ["train.lr=0.5", "eval.views=[2,3]"]) is cfg
    assert cfg.train is train_section and cfg.train.lr == 0.5 and cfg.eval.views == [2, 3]
    before = copy.deepcopy(cfg)
    with pytest.raises(ConfigError, match="train.epochs: expected a value >= 1"):
        apply_overrides(cfg, ["train.lr=0.1", "train.epochs=0"])
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        apply_overrides(cfg, ["train.epoch=3"])
    assert cfg == before


# config_to_dict of load_config(None, ["data.root=/data/diving48", "train.lr=0.001",
# "eval.views=[2,3]", "train.amp=off", "model.k_region=null"]) as written into checkpoints
# before the OmegaConf rewrite: a checkpoint of an older run must keep loading.
OLD_CHECKPOINT_CONFIG = {'output_dir': 'runs/default',
     'data': {'name': 'synthetic',
              'root': '/data/diving48',
              'video_dir': None,
              'train_split': 'train',
              'eval_split': None,
              'train_list': None,
              'eval_list': None,
              'class_csv': None,
              'num_frames': 16,
              'image_size': 224,
              'sampling': 'segments',
              'dense_stride': 4,
              'crop_scale': [0.25, 1.0],
              'hflip': False,
              'num_workers': 4,
              'pin_memory': True,
              'prefetch_factor': 2,
              'max_bad_fraction': 0.05,
              'max_retries': 2,
              'decode_backend': 'auto'},
     'model': {'backbone': 'ViT-B-16',
               'pretrained': None,
               'num_queries': 2,
               'latent_dim': 256,
               'k_region': None,
               'se_layers': 4,
               'rssa_layers': 4,
               'heads': 8,
               'temporal_layers': 1,
               'temporal_shift': 0.0,
               'mlp_ratio': 4.0,
               'dropout': 0.5,
               'gamma1': 5.0,
               'gamma2': 5.0,
               'mtc_weights': [1.0, 1.0, 1.0],
               'mtc_form': 'infonce',
               'mtc_lambda': 0.6,
               'mtc_temperature': 0.1,
               'sema_temperature': 0.07,
               'ta_temperature': 0.1,
               'ta_semantics': 'own',
               'query_bank': 'agent',
               'bank_momentum': 0.999,
               'num_prompts': 8,
               'templates': None,
               'temporal_negatives': 'frame',
               'tracklet_branch': True,
               'query_time_embedding': True,
               'region_attention': 'queries',
               'freeze_backbone': False,
               'backbone_lr_mult': 0.1,
               'grad_checkpointing': False,
               'text_cache': True,
               'text_cache_dir': None,
               'init_seed': 0,
               'extractor_dropout': 0.5,
               'lmhra': True,
               'temporal_downsample': True,
               'text_pretrained': None},
     'train': {'epochs': 50,
               'max_steps': None,
               'batch_size': 8,
               'grad_accum': 1,
               'optimizer': 'adamw',
               'lr': 0.001,
               'weight_decay': 0.05,
               'momentum': 0.9,
               'nesterov': False,
               'betas': [0.9, 0.999],
               'schedule': 'cosine',
               'warmup_steps': 0,
               'warmup_epochs': 0.0,
               'min_lr_ratio': 0.0,
               'step_epochs': 20,
               'step_gamma': 0.1,
               'clip_grad': 1.0,
               'amp': 'off',
               'device': 'auto',
               'backend': 'auto',
               'eval_every': 1,
               'save_every': 500,
               'log_every': 20,
               'seed': 0,
               'deterministic': False,
               'threads': None,
               'find_unused_parameters': False,
               'resume': None,
               'tensorboard': False,
               'progress': True},
     'eval': {'views': [2, 3], 'batch_size': None, 'save_scores': False, 'confusion_png': True}}


def test_old_checkpoint_config_loads():
    stored = copy.deepcopy(OLD_CHECKPOINT_CONFIG)
    cfg = config_from_dict(stored)
    assert stored == OLD_CHECKPOINT_CONFIG  # not modified
    assert cfg.data.root == "/data/diving48" and cfg.train.lr == 0.001
    assert cfg.eval.views == [2, 3] and cfg.train.amp == "off" and cfg.model.k_region is None
    assert cfg == load_config(None, ["data.root=/data/diving48", "train.lr=0.001",
                                     "eval.views=[2,3]", "train.amp=off",
                                     "model.k_region=null"])
    # every stored key is read back as stored (keys added since keep their defaults)
    now = config_to_dict(cfg)
    for section, values in OLD_CHECKPOINT_CONFIG.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert now[section][key] == value, (section, key)
        else:
            assert now[section] == values
    # the checkpoint path of the trainer, overrides included
    assert apply_overrides(config_from_dict(stored), ["eval.views=[1,3]"]).eval.views == [1, 3]
