"""Callbacks: a check that data-parallel replicas have not drifted apart."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist

from .optim.base import first_parameter


class ReplicaDivergenceError(RuntimeError):
    """Data-parallel replicas hold different parameters or optimizer state."""


def replica_fingerprint(pl_module: L.LightningModule) -> torch.Tensor:
    """Two parameter checksums (``Σ w`` and ``Σ w²``, in float64) and the optimizer's global scalars (``log r``, …)."""
    params = [p.detach().double() for p in pl_module.parameters()]
    values = [sum(p.sum() for p in params), sum(p.square().sum() for p in params)]
    optimizer = pl_module.optimizers(use_pl_optimizer=False)
    state = optimizer.state.get(first_parameter(optimizer.param_groups), {})
    values += [v.detach().double().reshape(()) for v in state.values() if torch.is_tensor(v) and v.numel() == 1]
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=pl_module.device) for v in values])


class ReplicaCheck(L.Callback):
    """After every training epoch, compare every rank's :func:`replica_fingerprint`: the minimum over ranks must equal
    the maximum. DDP averages gradients and nothing else, so a quantity that one rank computed from its own shard alone
    (a loss, ``r``, ``‖q‖``, a Jacobian) makes replicas drift apart silently; this makes it loud. Costs two all-reduces
    an epoch, and logs the largest difference as ``ddp/replica_spread`` (0 when the replicas agree).

    ``last`` keeps the last ``(minimum, maximum)`` pair for inspection."""

    def __init__(self) -> None:
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = replica_fingerprint(pl_module)
        low, high = values.clone(), values.clone()
        if trainer.world_size > 1:
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        self.last = (low, high)
        pl_module.log("ddp/replica_spread", (high - low).abs().max().float(), on_step=False, on_epoch=True)
        if not torch.equal(low, high):
            raise ReplicaDivergenceError(
                f"replicas disagree after epoch {trainer.current_epoch}: min {low.tolist()} vs max {high.tolist()} "
                "(parameter checksums, then the optimizer's global state)"
            )
