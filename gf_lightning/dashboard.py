"""What TensorBoard shows of a run beside its scalars: charts that put loss beside energy, and its hyperparameters.

:class:`TensorBoardDashboard` writes, when a fit starts (rank 0, into every TensorBoard logger):

- a custom-scalars layout (TensorBoard's *Custom Scalars* tab): train and val loss in one chart, the modified and the
  true energy in one chart, the same two as ``log10`` in another (:data:`LOG10_TAGS`), and the effective step;
- the run's hyperparameters (the *HParams* tab and ``hparams.yaml``): experiment, run, method, variant, ``lr``, ``C``,
  ``c``, ``lam``, ``eta``, ``eps``, ``momentum``, IEQ's solver, batch size, seed, number of parameters (NaN or "—" where
  the method has no such setting), declared once per run through the HParams plugin's experiment configuration
  (:func:`experiment_summary`), which also says which columns the tab shows when it opens (:data:`DEFAULT_COLUMNS`);
  and the run's metrics (:data:`RUN_METRICS`), whose values TensorBoard reads from the run's own scalars.

:class:`DashboardLogger` is the CLI's TensorBoard logger: it writes each scalar and, for the energies whose range spans
decades, its ``log10`` beside it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb

#: the custom-scalars layout: category → chart title → ("Multiline", [tag regexes])
LAYOUT = {
    "gf_lightning": {
        "loss: train and val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "energy: modified and true": ["Multiline", [r"^energy/modified$", r"^energy/true$"]],
        "energy (log10): modified and true": ["Multiline", [r"^energy/modified_log10$", r"^energy/true_log10$"]],
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


#: the HParams tab's columns, in words (TensorBoard shows them as a column's tooltip)
HPARAM_DOCS = {
    "experiment": "the run's experiment (lightning_logs/<experiment>/…)", "run": "the run's name within its experiment",
    "method": "the optimizer's class", "variant": "the scheme's variant (SAV's seed = restart: r reset every step)",
    "lr": "the step size Δt", "C": "the energy's shift (r = √(L + C), C·exp(L))", "c": "AEGD's shift",
    "lam": "λ of the linear operator 𝓛 = λI", "eta": "the relaxation's η", "eps": "IEQ adaptive's ε",
    "momentum": "the momentum", "solver": "IEQ's linear solver", "batch_size": "the mini-batch (global)",
    "seed": "the data module's seed (data, weights, batch order)", "params": "the network's parameter count",
}
#: the columns the HParams tab shows when it opens. TensorBoard (2.21) shows the first five hyperparameters whose
#: ``differs`` flag is set (the others one click away), so the experiment configuration sets it on these five only
DEFAULT_COLUMNS = ("method", "variant", "lr", "lam", "seed")

#: the tags the HParams tab shows as every run's metrics, in its order (the tab shows the first five when it opens): the
#: held-out loss, the quality measure (regression ``val/rel_err``; a PDE's ``val/rel_l2 = ‖u − u*‖/‖u*‖``;
#: classification ``val/acc``), the energy violations, the training loss. The same list for every run: TensorBoard takes
#: the tab's columns from one run's list, so lists that differ lose columns; a run without one of them shows none there.
RUN_METRICS = ("val/loss", "val/rel_err", "val/rel_l2", "val/acc", "energy/violations", "train/loss")


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """A summary that carries HParams plugin data (as the plugin's own ``summary_v2`` writes them)."""
    summary = Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def experiment_summary(params: dict[str, Any]) -> Summary:
    """The HParams plugin's experiment configuration: every hyperparameter of ``params`` with its type and doc, those of
    :data:`DEFAULT_COLUMNS` marked ``differs`` (shown when the tab opens), and :data:`RUN_METRICS`."""
    infos = []
    for name, value in params.items():
        kind = api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64
        infos.append(api_pb2.HParamInfo(name=name, description=HPARAM_DOCS.get(name, ""), type=kind,
                                        differs=name in DEFAULT_COLUMNS))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in RUN_METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


#: tag → its log10 tag, written beside it by :class:`DashboardLogger`: the energies span decades, which a linear axis
#: shows as a drop and then a flat line. A value ≤ 0 has no log10 and is left out (``energy/modified`` of SAV, ``r² −
#: C``, may dip below 0 as ``r`` falls).
LOG10_TAGS = {"energy/true": "energy/true_log10", "energy/modified": "energy/modified_log10"}


class DashboardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing :data:`LOG10_TAGS` beside the energies."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        logs = dict(metrics)
        for tag, log_tag in LOG10_TAGS.items():
            value = metrics.get(tag)
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                logs[log_tag] = math.log10(value)
        super().log_metrics(logs, step)


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
        for logger in loggers:
            logger.log_hyperparams(params, metrics={})  # hparams.yaml; an empty dict: no hp_metric placeholder
            logger.experiment.add_custom_scalars(LAYOUT)
            writer = logger.experiment._get_file_writer()
            # one row of the tab per run folder (without a trial id, runs of equal settings would share one)
            trial = f"{self.experiment}/{self.run}/version_{logger.version}"
            for summary in (experiment_summary(params), hparams_pb(params, trial_id=trial)):
                writer.add_summary(summary)
