"""A run cut short never looks finished: stopped by SIGTERM (a scheduler's time limit, ``kill``) or Ctrl-C, ``fit``
exits ``128 + signal`` (143, 130) with one line that says so and names its last checkpoint (Lightning alone exits 0 on
SIGTERM). Lightning's own handling is kept (it stops at the next step's end, and SLURM's auto-requeue still works); only
its two lines ("Received SIGTERM", "Detected KeyboardInterrupt …") give way to this one."""

from __future__ import annotations

import logging
import signal
import sys

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .checkpointing import last_good_checkpoint

#: the exit status of a run stopped by SIGTERM or Ctrl-C, as a shell reports a process killed by the signal
EXIT_SIGTERM, EXIT_SIGINT = 128 + signal.SIGTERM, 128 + signal.SIGINT
#: Lightning's lines that this module's line replaces: (logger, start of the message)
LIGHTNING_LINES = (("lightning.pytorch.trainer.connectors.signal_connector", "Received SIGTERM"),
                   ("lightning.pytorch.utilities.rank_zero", "\nDetected KeyboardInterrupt"))


class _DropLine(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return self.start.strip() not in str(record.msg)


def quiet_lightning_interrupt_lines() -> None:
    """Drop :data:`LIGHTNING_LINES` (once per process)."""
    for name, start in LIGHTNING_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLine) and f.start == start for f in logger.filters):
            logger.addFilter(_DropLine(start))


def interrupted_line(trainer: L.Trainer, signal_name: str) -> str:
    """``gf_lightning: interrupted by SIGTERM at epoch 3, step 12 (3 of 10 epochs done): the run is not finished; …``,
    with where it can continue from."""
    asked = trainer.max_epochs not in (None, -1)
    done = f"{trainer.current_epoch}{f' of {trainer.max_epochs}' if asked else ''} epochs done"
    ckpt = last_good_checkpoint(trainer)
    if ckpt is not None:
        where = f"continue it from its last checkpoint with --ckpt_path={ckpt}"
    elif trainer.ckpt_path:
        where = f"no checkpoint written since the one it resumed from: {trainer.ckpt_path}"
    elif trainer.checkpoint_callback is None:
        where = "no checkpoint (checkpointing is off)"
    else:
        where = "no checkpoint written yet"
    return (f"gf_lightning: interrupted by {signal_name} at epoch {trainer.current_epoch}, step {trainer.global_step} "
            f"({done}): the run is not finished; {where}")


class InterruptedRun(L.Callback):
    """On SIGTERM or Ctrl-C during ``fit``, :func:`interrupted_line` on stderr (rank 0). The exit status is set by
    :func:`gf_lightning.cli.cli_main`."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        quiet_lightning_interrupt_lines()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        name = "SIGTERM" if isinstance(exception, SIGTERMException) else \
            "Ctrl-C (SIGINT)" if isinstance(exception, KeyboardInterrupt) else None
        if name is not None and trainer.is_global_zero:
            print(interrupted_line(trainer, name), file=sys.stderr, flush=True)
