"""Cross-rank reduction for the optimizers under ``torch.distributed`` (DDP): a no-op on one process.

DDP averages gradients and nothing else. A loss, an energy or a norm that one rank computed from its own shard is that
rank's alone until it is reduced here; gloo has no AVG, so means are a SUM and a division.
"""

from __future__ import annotations

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


def gather_flat(t: Tensor) -> Tensor:
    """Every rank's flat ``t`` (equal sizes), concatenated rank-major."""
    n = world_size()
    if n == 1:
        return t
    out = t.new_empty(n * t.numel())
    dist.all_gather_into_tensor(out, t.contiguous())
    return out
