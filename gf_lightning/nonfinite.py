"""The non-finite guard: a run whose loss, parameters or checkpoint turn NaN/Inf stops with one message."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from .checkpointing import last_good_checkpoint, nonfinite_entry, safe_checkpoint_io
from .errors import NonFiniteError


def nonfinite_error(trainer: L.Trainer, what: str) -> NonFiniteError:
    """The one message: what went non-finite, with which method, where, and the last checkpoint really written."""
    method = type(trainer.optimizers[0]).__name__ if trainer.optimizers else "the optimizer"
    ckpt = last_good_checkpoint(trainer) or "(none saved yet)"  # a file that was written, complete
    return NonFiniteError(f"training went non-finite ({what}) with {method} at epoch {trainer.current_epoch}, step "
                          f"{trainer.global_step}; stopped before saving. Last good checkpoint: {ckpt}")


class NonFiniteGuard(L.Callback):
    """Stops the run with :func:`nonfinite_error` when

    - the training loss is NaN/Inf (:meth:`check_loss`, which the module calls after each optimizer step; every
      ``every_n_steps`` steps, a host sync each time);
    - a parameter is NaN/Inf, at the end of every training epoch and before every validation;
    - a checkpoint about to be written holds NaN/Inf (whatever asked for it: a step, epoch or exception save of
      ``ModelCheckpoint``, ``trainer.save_checkpoint``). While the trainer handles an exception it tells the
      :class:`~gf_lightning.checkpointing.SafeCheckpointIO` to skip such a checkpoint quietly instead (an error there
      would hide the one being handled)."""

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = every_n_steps

    def check_loss(self, trainer: L.Trainer, loss: Tensor) -> None:
        if trainer.global_step % self.every_n_steps == 0 and not math.isfinite(value := loss.item()):
            raise nonfinite_error(trainer, f"loss = {value:.4g}")

    def check_parameters(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            raise nonfinite_error(trainer, "a parameter is NaN or Inf")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_parameters(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check_parameters(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (safe := safe_checkpoint_io(trainer)) is not None:
            safe.interrupted = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if (safe := safe_checkpoint_io(trainer)) is not None:
            safe.interrupted = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        safe = safe_checkpoint_io(trainer)
        if (safe is None or not safe.interrupted) and (what := nonfinite_entry(checkpoint)) is not None:
            raise nonfinite_error(trainer, what)
