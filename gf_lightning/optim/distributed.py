"""Cross-rank reduction for the optimizers under ``torch.distributed`` (DDP): a no-op on one process.

DDP averages gradients and nothing else. A loss, an energy or a norm that one rank computed from its own shard is that
rank's alone until it is reduced here; gloo has no AVG, so means are a SUM and a division.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def global_sum_(t: Tensor) -> Tensor:
    """Sum a tensor over all ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_max_(t: Tensor) -> Tensor:
    """The elementwise maximum over all ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def global_mean_(t: Tensor) -> Tensor:
    """Average a tensor over all ranks, in place."""
    n = world_size()
    if n > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(n)
    return t


@dataclass
class Gathered:
    """Every rank's rows, concatenated rank-major, and where this rank's begin."""

    rows: Tensor  #: all ranks' rows, rank 0's first
    offset: int  #: the index of this rank's first row in ``rows``
    count: int  #: this rank's number of rows


def gather_rows(t: Tensor) -> Gathered:
    """Every rank's ``t`` (the same trailing shape, any number of rows: an epoch's last batch may give ranks one sample
    more, or none), concatenated rank-major. The row counts travel first (one small all-gather, and a host sync to read
    them); the rows follow padded to the longest."""
    n = world_size()
    if n == 1:
        return Gathered(t, 0, len(t))
    counts_t = torch.tensor([len(t)], dtype=torch.int64, device=t.device)
    all_counts = counts_t.new_empty(n)
    dist.all_gather_into_tensor(all_counts, counts_t)
    counts = all_counts.tolist()
    longest = max(counts)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: len(t)] = t
    out = t.new_empty((n * longest, *t.shape[1:]))
    dist.all_gather_into_tensor(out, padded)
    rows = torch.cat([out[r * longest : r * longest + c] for r, c in enumerate(counts)])
    return Gathered(rows, sum(counts[: rank()]), len(t))
