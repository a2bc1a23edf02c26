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

# Each module's ``__all__`` is the package's public API for that part (one list, not two).
from . import checkpoint as _checkpoint
from . import config as _config
from . import metrics as _metrics
from . import region_hit as _region_hit
from . import trainer as _trainer
from .checkpoint import *  # noqa: F403
from .config import *  # noqa: F403
from .metrics import *  # noqa: F403
from .region_hit import *  # noqa: F403
from .trainer import *  # noqa: F403

__all__ = [*_config.__all__, *_trainer.__all__, *_checkpoint.__all__, *_metrics.__all__,
           *_region_hit.__all__]
