"""Batches taken from in-memory tensors by index, a whole batch at once.

The data sets here are small tensors, and ``DataLoader``'s per-sample collation costs more than the model's step. A
:class:`TensorBatches` yields one :class:`Batch` — ``x[idx], y[idx]`` and the size of the global batch — per index
tensor.

Under a distributed run the epoch's permutation is cut into global batches of ``batch_size`` first, and each global
batch is shared among the ranks, rank ``r`` taking its samples ``r, r + W, …``. Every full batch is then split exactly
as ``torch.utils.data.DistributedSampler`` splits it, and nothing is padded: an epoch's last, shorter batch gives some
ranks one sample more than others, or none, and every rank takes the same number of steps. Each sample counts once,
whatever the number of processes; the ``LightningModule`` weights each rank's loss by its share (``Batch.total``), so
that DDP's average of the ranks' gradients is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """This rank's part of one global mini-batch.

    It unpacks and indexes as the pair ``(x, y)`` a ``DataLoader`` yields: ``x, y = batch``, ``batch[0]``. (Not frozen:
    Lightning moves a batch to the device by replacing its tensor fields.)
    """

    x: Tensor  #: this rank's inputs (possibly none, in an epoch's last batch under DDP)
    y: Tensor  #: their targets
    total: int  #: the samples in the global batch, over all ranks (``len(x)`` on one process)

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.x, self.y))

    def __getitem__(self, index: int) -> Tensor:
        return (self.x, self.y)[index]


class _EpochSampler:
    """What Lightning looks for to tell a loader the epoch: an object with ``set_epoch`` at ``loader.sampler``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatches:
    """An iterable of :class:`Batch` es over tensors already in memory.

    Args:
        x, y: the data, first dimension the sample. batch_size: the global batch size (over all ranks). shuffle: a new
        permutation every epoch, a function of ``(seed, epoch)`` only, so a resumed run sees the same order. seed: the
        shuffling seed. drop_last: drop a last, smaller batch. rank, world_size: this process's place in a distributed
        run: rank ``r`` takes samples ``r, r + W, …`` of every
            global batch.
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
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning inspects both attributes
        self.steps_per_call = steps_per_call
        self._resume: tuple[int, int] | None = None  # (epoch, calls done), for the next iteration over that epoch

    # -- resuming inside an epoch --------------------------------------------------------------------------------------
    def resume_at(self, epoch: int, calls_done: int) -> None:
        """Let the next iteration, if it is over ``epoch``, start after its first ``calls_done`` calls: a run resumed
        from a checkpoint taken inside an epoch trains the rest of that epoch's batches, not its first ones again."""
        self._resume = (epoch, calls_done)

    def state_dict(self) -> dict[str, int]:
        """The epoch (Lightning saves it with the fit loop). The place within an epoch is the trainer's progress, which
        the data module hands to :meth:`resume_at` on a resume."""
        return {"epoch": self.sampler.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])

    @property
    def num_batches(self) -> int:
        """Mini-batches an epoch: the same on every rank."""
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.steps_per_call)

    def _order(self) -> Tensor:
        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        return order.to(self.x.device)  # one transfer an epoch, not one per batch

    def _batches(self) -> Iterator[Batch]:
        resume, self._resume = self._resume, None
        first = resume[1] * self.steps_per_call if resume and resume[0] == self.sampler.epoch else 0
        order = self._order()[first * self.batch_size : self.num_batches * self.batch_size]
        for chunk in order.split(self.batch_size):
            idx = chunk[self.rank :: self.world_size]
            yield Batch(self.x[idx], self.y[idx], len(chunk))

    def __iter__(self) -> Iterator[Batch | list[Batch]]:
        batches = self._batches()
        if self.steps_per_call == 1:
            yield from batches
            return
        chunk: list[Batch] = []
        for batch in batches:
            chunk.append(batch)
            if len(chunk) == self.steps_per_call:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
