"""Helpers for the tests: forward + backward of a function with fixed cotangents (op tests);
the bytes of every file under a folder (determinism tests of the synthetic sets); a recorder
of the operators a block dispatches (backend dispatch tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def fwd_bwd(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor | None],
    dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``fn`` on leaf copies of ``inputs`` (cast to ``dtype`` if given), backpropagate
    ``sum(<out_i, cot_i>)`` over the differentiable outputs, return (outputs, input grads).

    Integer inputs are passed through untouched and get no gradient.
    """
    leaves = []
    for x in inputs:
        if x.is_floating_point():
            x = x.detach().to(dtype or x.dtype).requires_grad_(True)
        leaves.append(x)
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    total = 0
    for o, c in zip(outs, cotangents):
        if c is not None:
            total = total + (o.double() * c.double()).sum()
    diff = [x for x in leaves if x.is_floating_point()]
    grads = torch.autograd.grad(total, diff, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(diff, grads)]
    return [o.detach() for o in outs], list(grads)


def files_bytes(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """{path relative to root: file bytes} for every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


class OpRecorder(TorchDispatchMode):
    """Records the name (``namespace::op``) of every operator dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(f"{func.namespace}::{func._opname}")
        return func(*args, **(kwargs or {}))
