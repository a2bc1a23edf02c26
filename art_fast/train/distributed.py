"""Distributed plumbing: process-group setup under torchrun, collectives that are no-ops in a
single process, and the deterministic, resumable sharded batch sampler.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` joins the group (NCCL on GPU, gloo on CPU) when ``WORLD_SIZE > 1``.

:class:`ShardedBatchSampler`: the order of an epoch depends only on ``(seed, epoch)``, each
item is passed to the dataset as ``(index, epoch)`` (the readers draw their augmentation from
``(seed, epoch, index)``, so DataLoader workers, persistent or not, need no ``set_epoch``), and
an epoch can start at any batch (mid-epoch resume). Training: a permutation cut into global
batches of ``world_size x batch_size`` (an incomplete tail dropped); rank ``r`` takes the
``r``-th slice of each, so the global batch is the same set of clips for any world size with the
same global batch. Evaluation: every index exactly once over all ranks (rank ``r`` takes
indices ``r, r + W, ...``; no padding, so nothing is counted twice; ranks may have one batch
more or less, which is fine because evaluation runs the bare module without collectives).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "ShardedBatchSampler",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "gather_objects",
    "init_distributed",
]

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process runs: rank, world size, device; ``owns_group`` when
    :func:`init_distributed` created the process group (and must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available here; use "
                               "train.device=cpu or auto")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (NCCL for CUDA, gloo for CPU)
    and pick this process's device (``cuda:LOCAL_RANK`` or the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, device=dev, owns_group=owns)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the ranks (returned; the input is not modified). gloo needs CPU
    tensors and NCCL CUDA ones: the tensor travels on the group's device."""
    if not ctx.distributed:
        return values.clone()
    t = values.detach().to(ctx.device, torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedBatchSampler:
    """Batches of ``(index, epoch)`` pairs for one rank (see the module docstring).

    Args:
        size: dataset length.
        batch_size: items per batch on this rank.
        rank, world_size: this process and the number of processes.
        train: shuffled full global batches (True) or every index once, in order (False).
        seed: shuffling seed (the order of epoch ``e`` is a function of ``(seed, e)``).
        multiple_of: in training, the number of batches per epoch is rounded down to a
            multiple of this (gradient accumulation: no partial optimiser step).
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 train: bool = True, seed: int = 0, multiple_of: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, "
                             f"rank={rank}, world_size={world_size}")
        self.size, self.batch_size = int(size), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.train, self.seed = bool(train), int(seed)
        self.multiple_of = max(1, int(multiple_of))
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank."""
        if self.train:
            n = self.size // (self.batch_size * self.world_size)
            return n - n % self.multiple_of
        mine = len(range(self.rank, self.size, self.world_size))
        return -(-mine // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from batch ``start_batch`` on (resume)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset order of epoch ``epoch`` (identical on every rank)."""
        if not self.train:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, int(epoch), 0x5A3D]).permutation(self.size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, e, B, W = self.order(self.epoch), self.epoch, self.batch_size, self.world_size
        if self.train:
            for b in range(self.start_batch, self.batches_per_epoch()):
                glob = order[b * B * W:(b + 1) * B * W]
                yield [(int(i), e) for i in glob[self.rank * B:(self.rank + 1) * B]]
        else:
            mine = order[self.rank::W]
            for b in range(self.start_batch, self.batches_per_epoch()):
                yield [(int(i), e) for i in mine[b * B:(b + 1) * B]]
