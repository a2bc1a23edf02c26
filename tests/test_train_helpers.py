"""Shared helpers of the trainer tests (imported by tests/test_train_*.py): a tiny synthetic
set made once per session, and the tiny config every training test starts from.

The set: 4 classes x 4 videos (3 train + 1 test each), 4 frames of 32 x 32. The model: the
tiny open_clip tower at 32 x 32 (16 patches), d = 16, one SE and one RSSA layer."""

from __future__ import annotations

import atexit
import shutil
import tempfile

from art_fast.train import Config, load_config

_CACHE: dict[str, str] = {}


def synthetic_root() -> str:
    """The session's synthetic set (written on first use, removed at exit)."""
    if "root" not in _CACHE:
        from art_fast.data.synthetic import make_synthetic

        base = tempfile.mkdtemp(prefix="art_fast_train_tests_")
        atexit.register(shutil.rmtree, base, True)
        make_synthetic(f"{base}/syn", classes=4, videos_per_class=4, frames=4, size=32, seed=0)
        _CACHE["root"] = f"{base}/syn"
        _CACHE["text_cache"] = f"{base}/text_bank"
    return _CACHE["root"]


def tiny_overrides(output_dir: str, *extra: str) -> list[str]:
    """Overrides that make a CPU run of a few seconds (2 steps unless overridden)."""
    root = synthetic_root()
    return [
        f"output_dir={output_dir}",
        "data.name=synthetic", f"data.root={root}", "data.num_frames=4", "data.image_size=32",
        "data.num_workers=0", "data.crop_scale=[0.6,1.0]",
        "model.backbone=tiny", "model.latent_dim=16", "model.heads=2", "model.se_layers=1",
        "model.rssa_layers=1", "model.k_region=4", "model.dropout=0.1",
        f"model.text_cache_dir={_CACHE['text_cache']}",
        "train.max_steps=2", "train.batch_size=2", "train.lr=1e-3", "train.threads=1",
        "train.log_every=0", "train.progress=false", *extra,
    ]


def tiny_config(output_dir: str, *extra: str) -> Config:
    return load_config(None, tiny_overrides(output_dir, *extra))


def test_tiny_config_is_valid(tmp_path):
    cfg = tiny_config(str(tmp_path))
    assert cfg.model.backbone == "tiny" and cfg.data.image_size == 32
    assert cfg.train.max_steps == 2
