"""What TensorBoard shows of a run beside its scalars: charts that put loss beside energy, and its hyperparameters.

:class:`TensorBoardDashboard` writes, when a fit starts (rank 0, into every TensorBoard logger):

- a custom-scalars layout (TensorBoard's *Custom Scalars* tab): train and val loss in one chart, the modified and the
  true energy in one chart, and the effective step;
- the run's hyperparameters (the *HParams* tab and ``hparams.yaml``): experiment, run, method, variant, ``lr``, ``C``,
  ``lam``, batch size, seed — with the run's final ``val/loss``, ``val/acc`` or ``val/rel_err``, ``train/loss`` and, for
  the energy methods, ``energy/violations`` as its metrics (TensorBoard reads their last values from the run's scalars).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from .optim.base import EnergyOptimizer

#: the custom-scalars layout: category → chart title → ("Multiline", [tag regexes])
LAYOUT = {
    "gf_lightning": {
        "loss: train and val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "energy: modified and true": ["Multiline", [r"^energy/modified$", r"^energy/true$"]],
        "effective step": ["Multiline", [r"^optim/effective_lr$"]],
    }
}

#: the optimizer settings shown as hyperparameters, where the optimizer has them
OPTIMIZER_SETTINGS = ("lr", "C", "lam", "variant", "eta", "eps", "momentum", "weight_decay", "solver")


def run_hparams(trainer: L.Trainer, experiment: str, run: str) -> dict[str, Any]:
    """The run's hyperparameters, as TensorBoard takes them (numbers, strings, booleans)."""
    out: dict[str, Any] = {"experiment": experiment, "run": run}
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        out["method"] = type(optimizer).__name__
        group = optimizer.param_groups[0]
        for key in OPTIMIZER_SETTINGS:
            if isinstance(group.get(key), (int, float, str, bool)):
                out[key] = group[key]
    datamodule = trainer.datamodule
    if datamodule is not None and isinstance(getattr(datamodule, "batch_size", None), int):
        out["batch_size"] = datamodule.batch_size
    module = trainer.lightning_module
    out["params"] = sum(p.numel() for p in module.parameters())
    seed = getattr(datamodule, "seed", None)
    if isinstance(seed, int):
        out["seed"] = seed
    return out


def run_metrics(trainer: L.Trainer) -> list[str]:
    """The tags the HParams tab shows for the run: its final losses, its quality measure, its energy violations."""
    task = getattr(trainer.lightning_module, "task", None)
    metrics = ["val/loss", "val/acc" if task == "classification" else "val/rel_err", "train/loss"]
    if trainer.optimizers and isinstance(trainer.optimizers[0], EnergyOptimizer):
        metrics.append("energy/violations")
    return metrics


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
        metrics = run_metrics(trainer)
        # the metrics' names only: TensorBoard reads their values from the run's own scalars as they come
        summaries = hparams(params, {tag: 0.0 for tag in metrics})
        for logger in loggers:
            logger.log_hyperparams(params, metrics={})  # hparams.yaml; an empty dict: no hp_metric placeholder
            logger.experiment.add_custom_scalars(LAYOUT)
            writer = logger.experiment._get_file_writer()
            for summary in summaries:
                writer.add_summary(summary)
