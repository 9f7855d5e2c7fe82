"""Batches taken from in-memory tensors by index, a whole batch at once.

The data sets here are small tensors, and ``DataLoader``'s per-sample collation costs more than the model's step. A
:class:`TensorBatches` yields ``(x[idx], y[idx])`` for one index tensor per batch. Under a distributed run it shards the
epoch's permutation the way ``torch.utils.data.DistributedSampler`` does (pad to a multiple of the world size, then every
``world_size``-th index from ``rank``), and each rank takes ``batch_size // world_size`` of a global batch, so that the
global batch is the configured one. Evaluation does not pad: each held-out sample counts exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from ..errors import GFConfigError


class _EpochSampler:
    """What Lightning looks for to tell a loader the epoch: an object with ``set_epoch`` at ``loader.sampler``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatches:
    """An iterable of ``(x, y)`` batches over tensors already in memory.

    Args:
        x, y: the data, first dimension the sample.
        batch_size: the global batch size (over all ranks).
        shuffle: a new permutation every epoch, a function of ``(seed, epoch)`` only, so a resumed run sees the same order.
        seed: the shuffling seed.
        drop_last: drop a last, smaller batch.
        rank, world_size: this process's place in a distributed run.
        pad: under a distributed run, pad the epoch's permutation to a multiple of the world size by repeating its first
            samples, as ``DistributedSampler`` does, so that every rank takes the same number of steps (training, where
            DDP needs it). Without padding (evaluation) rank ``r`` takes samples ``r, r + W, …`` and every sample counts
            exactly once; ranks may then hold one sample, and one batch, more than others.
        steps_per_call: yield lists of this many consecutive mini-batches (the last list may be shorter); the order of
            the mini-batches is the same whatever this is.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        steps_per_call: int = 1,
        pad: bool = True,
    ) -> None:
        if batch_size % world_size:
            raise GFConfigError(
                f"data.batch_size ({batch_size}) must be a multiple of the number of processes ({world_size}): "
                "it is the global batch, split evenly across ranks"
            )
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning inspects both attributes
        self.pad = pad
        self.num_local = math.ceil(len(x) / world_size) if pad else len(range(rank, len(x), world_size))
        self.steps_per_call = steps_per_call

    @property
    def num_batches(self) -> int:
        """Mini-batches an epoch (on this rank)."""
        n, b = self.num_local, self.local_batch
        return n // b if self.drop_last else math.ceil(n / b)

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.steps_per_call)

    def _indices(self) -> Tensor:
        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and not self.pad:
            order = order[self.rank :: self.world_size]
        elif self.world_size > 1:
            total = self.num_local * self.world_size
            if total > n:  # pad by wrapping around, as DistributedSampler does
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank : total : self.world_size]
        return order.to(self.x.device)  # one transfer an epoch, not one per batch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]]]:
        order = self._indices()
        batches = ((self.x[idx], self.y[idx]) for idx in order[: self.num_batches * self.local_batch].split(self.local_batch))
        if self.steps_per_call == 1:
            yield from batches
            return
        chunk: list[tuple[Tensor, Tensor]] = []
        for batch in batches:
            chunk.append(batch)
            if len(chunk) == self.steps_per_call:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
