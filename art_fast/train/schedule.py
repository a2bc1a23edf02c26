"""Learning-rate schedules, per optimiser step: linear warmup, then cosine decay or the
paper's step decay (x ``gamma`` every ``step_epochs`` epochs).

The learning rate is a pure function of the step, so the schedule's state is the step alone
and resuming cannot drift: :meth:`LRSchedule.apply` sets every parameter group's ``lr`` to its
``initial_lr`` (the group's peak: backbone groups carry ``lr x backbone_lr_mult``) times
:meth:`LRSchedule.factor`. Layer-wise lr decay (``train.layer_decay``,
:func:`art_fast.train.recipe.layer_decay_groups`) keeps its scale per group (``lr_scale``,
already in the group's peak ``initial_lr``), so the schedule applies it at every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LRSchedule"]


class LRSchedule:
    """Warmup + cosine or warmup + step decay.

    Args:
        optimizer: its groups get ``initial_lr`` (their current ``lr``) if they lack one.
        total_steps: optimiser steps of the run.
        warmup_steps: linear ramp ``(s + 1) / warmup_steps`` for steps ``s < warmup_steps``.
        kind: ``"cosine"`` (from 1 at the end of warmup to ``min_lr_ratio`` at
            ``total_steps``) or ``"step"`` (``gamma ** (epoch // step_epochs)``, epoch =
            ``s // steps_per_epoch``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, *,
                 warmup_steps: int = 0, kind: str = "cosine", min_lr_ratio: float = 0.0,
                 steps_per_epoch: int = 1, step_epochs: int = 20, gamma: float = 0.1) -> None:
        if kind not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {kind!r}")
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.min_lr_ratio = float(min_lr_ratio)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.step_epochs = max(1, int(step_epochs))
        self.gamma = float(gamma)
        self.step = 0
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate for optimiser step ``step`` (0-based)."""
        warm = 1.0
        if step < self.warmup_steps:
            warm = (step + 1) / self.warmup_steps
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            return warm * self.gamma ** (epoch // self.step_epochs)
        if step < self.warmup_steps:
            return warm
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos

    def apply(self, step: int) -> None:
        """Set the learning rates for optimiser step ``step``."""
        self.step = int(step)
        f = self.factor(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def last_lr(self) -> float:
        """The largest group learning rate in force."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.apply(int(state["step"]))
