"""Callbacks the tests add to runs from the command line (``--trainer.callbacks+=helpers.KillAtEpoch``)."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class KillAtEpoch(L.Callback):
    """SIGKILL this process when epoch ``epoch`` starts: epochs ``0 … epoch-1`` are done and checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtEpoch(L.Callback):
    """Push the run to NaN: set one weight to NaN in the middle of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def read_scalars(root) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar under ``root``, as ``tag → [(step, value), …]`` in step order."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(root).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values) for tag, values in out.items()}
