"""Training (DESIGN §6): config, trainer, distributed plumbing, checkpoints, metrics.

Entry points::

    from art_fast.train import load_config, train, evaluate
    cfg = load_config("configs/synthetic_tiny.yaml", ["train.max_steps=100"])
    final = train(cfg)                  # writes cfg.output_dir/{config.yaml, metrics.jsonl, ...}
    report = evaluate(cfg, "best")      # writes cfg.output_dir/eval/{predictions.csv, ...}

The command line calls :func:`main_train` (config, overrides, resume) and :func:`main_eval`
(checkpoint, overrides, out), which print one JSON line and return an exit code;
:func:`load_trained` gives a model from a checkpoint alone (for drawing tracklets).
:mod:`.region_hit` scores the tracklets' selected regions against target boxes (evaluation
metrics ``region_hit`` / ``region_hit_chance`` on sets with boxes). Under
``torchrun`` the same calls run DistributedDataParallel (NCCL on GPU, gloo on CPU).
"""

from .checkpoint import atomic_save, find_resume, load_checkpoint
from .config import (
    DATASETS,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    build_dataset,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from .metrics import classification_metrics, confusion_matrix, mean_class_accuracy
from .region_hit import (
    RegionHitAccumulator,
    patch_box_overlap,
    region_hit,
    region_hit_sums,
    summarize_region_hit,
)
from .trainer import build_model, evaluate, load_trained, main_eval, main_train, train

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "DATASETS",
    "load_config",
    "apply_overrides",
    "save_config",
    "config_to_dict",
    "config_from_dict",
    "build_dataset",
    "build_model",
    "load_trained",
    "train",
    "evaluate",
    "main_train",
    "main_eval",
    "atomic_save",
    "load_checkpoint",
    "find_resume",
    "classification_metrics",
    "confusion_matrix",
    "mean_class_accuracy",
    "patch_box_overlap",
    "region_hit",
    "region_hit_sums",
    "summarize_region_hit",
    "RegionHitAccumulator",
]
