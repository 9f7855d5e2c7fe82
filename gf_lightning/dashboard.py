"""What TensorBoard shows of a run beside its scalars: charts that put loss beside energy, and its hyperparameters.

:class:`TensorBoardDashboard` writes, when a fit starts (rank 0, into every TensorBoard logger):

- a custom-scalars layout (TensorBoard's *Custom Scalars* tab): train and val loss in one chart, the modified and the
  true energy in one chart, and the effective step;
- the run's hyperparameters (the *HParams* tab and ``hparams.yaml``): experiment, run, method, variant, ``lr``, ``C``,
  ``c``, ``lam``, ``eta``, ``eps``, ``momentum``, IEQ's solver, batch size, seed, number of parameters (NaN or "—" where
  the method has no such setting) — with the run's final ``val/loss``, ``val/acc`` or ``val/rel_err``, ``train/loss``
  and ``energy/violations`` as its metrics (TensorBoard reads their last values from the run's scalars).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams


#: the custom-scalars layout: category → chart title → ("Multiline", [tag regexes])
LAYOUT = {
    "gf_lightning": {
        "loss: train and val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "energy: modified and true": ["Multiline", [r"^energy/modified$", r"^energy/true$"]],
        "effective step": ["Multiline", [r"^optim/effective_lr$"]],
    }
}

#: the optimizer settings shown as hyperparameters, with what a run whose optimizer has no such setting shows. Every run
#: writes every one: TensorBoard's HParams tab takes its columns from one run's list, so lists that differ lose columns
OPTIMIZER_SETTINGS = {"lr": math.nan, "C": math.nan, "c": math.nan, "lam": math.nan, "variant": "—", "eta": math.nan,
                      "eps": math.nan, "momentum": math.nan, "solver": "—"}


def run_hparams(trainer: L.Trainer, experiment: str, run: str) -> dict[str, Any]:
    """The run's hyperparameters, as TensorBoard takes them (numbers, strings, booleans)."""
    out: dict[str, Any] = {"experiment": experiment, "run": run, "method": "—", **OPTIMIZER_SETTINGS}
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        out["method"] = type(optimizer).__name__
        group = optimizer.param_groups[0]
        for key, absent in OPTIMIZER_SETTINGS.items():
            value = group.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(absent, float):
                out[key] = float(value)
            elif isinstance(value, str) and isinstance(absent, str):
                out[key] = value
    datamodule = trainer.datamodule
    batch_size, seed = getattr(datamodule, "batch_size", None), getattr(datamodule, "seed", None)
    out["batch_size"] = batch_size if isinstance(batch_size, int) else math.nan
    out["seed"] = seed if isinstance(seed, int) else math.nan
    out["params"] = sum(p.numel() for p in trainer.lightning_module.parameters())
    return out


#: the tags the HParams tab shows as every run's metrics: its final losses, its quality measure (regression or
#: classification), its energy violations. The same for every run, for the reason above; a run without one shows none.
RUN_METRICS = ("val/loss", "val/rel_err", "val/acc", "train/loss", "energy/violations")


class TensorBoardDashboard(L.Callback):
    """Write the custom-scalars layout and the hyperparameters (with their metrics) of the run into every TensorBoard
    logger when the fit starts.

    Args:
        experiment, run: the run's name (:class:`~gf_lightning.run_folder.RunName`), shown as hyperparameters.
    """

    def __init__(self, experiment: str = "", run: str = "") -> None:
        self.experiment, self.run = experiment, run

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not trainer.is_global_zero or not loggers:
            return
        params = run_hparams(trainer, self.experiment, self.run)
        # the metrics' names only: TensorBoard reads their values from the run's own scalars as they come
        summaries = hparams(params, {tag: 0.0 for tag in RUN_METRICS})
        for logger in loggers:
            logger.log_hyperparams(params, metrics={})  # hparams.yaml; an empty dict: no hp_metric placeholder
            logger.experiment.add_custom_scalars(LAYOUT)
            writer = logger.experiment._get_file_writer()
            for summary in summaries:
                writer.add_summary(summary)
