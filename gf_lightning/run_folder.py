"""Each run its own folder: ``lightning_logs/<experiment>/<run>/version_N``, named after what it runs, claimed
race-free.

A run is named after its experiment (the config's ``experiment``, else its data module) and its method (the optimizer,
with its variant when not the default; the config's ``run_name`` overrides it), so that TensorBoard shows six methods as
six named runs, and a second run of one method is that method's next ``version_N``.

Lightning's loggers pick ``version_N`` as one more than the largest folder they find, and create it later: two runs
started at once into one ``default_root_dir`` pick the same N, and one overwrites the other's ``config.yaml`` and mixes
its events into the other's TensorBoard run. Here the folder is claimed with ``os.mkdir``, which exactly one process can
win: a run that loses takes the next N.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from .dashboard import DashboardLogger
from .optim import OPTIMIZERS

#: where the runs go under ``trainer.default_root_dir``, as with Lightning's own default logger
LOGS = "lightning_logs"


@dataclass(frozen=True)
class RunName:
    """What a run is called: ``lightning_logs/<experiment>/<run>``."""

    experiment: str  #: e.g. ``exp3``
    run: str  #: e.g. ``sav``, ``expsav-relax``, ``sav_large_step``

    @property
    def path(self) -> str:
        return f"{self.experiment}/{self.run}"


def _short(name: str) -> str:
    """A folder-safe form of a name: lower case, runs of other characters as one ``_``, no dot at either end (``..``
    would climb out of ``lightning_logs``)."""
    return re.sub(r"[^a-z0-9_.-]+", "_", name.lower()).strip("._") or "run"


def method_name(optimizer_class_path: str) -> str:
    """``gf_lightning.optim.IEQAdaptive`` → ``ieq_adaptive``, ``torch.optim.SGD`` → ``sgd``."""
    cls_name = optimizer_class_path.rpartition(".")[2]
    names = {cls.__name__: name for name, cls in OPTIMIZERS.items()}
    return names.get(cls_name, _short(cls_name))


def _setting(config: Any, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``, in a jsonargparse ``Namespace`` or nested dicts; ``None`` when absent."""
    value = config
    for key in dotted.split("."):
        value = value.get(key) if hasattr(value, "get") else None
    return value


def run_name(config: Any) -> RunName:
    """The run's name from its config (a subcommand's namespace, or nested dicts): ``experiment`` and ``run_name`` when
    set, else the data module's class and the method with its variant."""
    experiment = _setting(config, "experiment") or str(_setting(config, "data.class_path") or "data").rpartition(".")[2]
    run = _setting(config, "run_name")
    if not run:
        variant = _setting(config, "model.optimizer.init_args.variant")
        run = method_name(str(_setting(config, "model.optimizer.class_path") or "torch.optim.SGD"))
        run += f"-{variant}" if variant not in (None, "seed") else ""
    return RunName(_short(str(experiment)), _short(str(run)))


def tensorboard_logger(root: str | os.PathLike, name: RunName) -> TensorBoardLogger:
    """The run's TensorBoard logger: ``root/lightning_logs/<experiment>/<run>/version_N`` (``hp_metric`` off: the run's
    hyperparameters are written with its real metrics; the energies' log10 beside them: :mod:`.dashboard`)."""
    return DashboardLogger(save_dir=root, name=f"{LOGS}/{name.path}", default_hp_metric=False)


def claim_version(root: str | os.PathLike, start: int = 0) -> int:
    """Create ``root/version_N`` for the smallest ``N ≥ start`` that no other process has created, and return ``N``."""
    Path(root).mkdir(parents=True, exist_ok=True)
    version = start
    while True:
        try:
            os.mkdir(Path(root) / f"version_{version}")
            return version
        except FileExistsError:
            version += 1


def is_launched_rank() -> bool:
    """Whether this process is a rank > 0 that a launcher started (plain DDP re-runs the command line with these set);
    such a rank takes rank 0's folder and must not claim one of its own."""
    return any(int(os.environ.get(key, "0") or 0) > 0 for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "GLOBAL_RANK"))


def claim_logger_versions(loggers: list[Logger]) -> None:
    """Give every local TensorBoard or CSV logger that has no version yet a folder of its own (see the module's
    docstring)."""
    if is_launched_rank():
        return
    for logger in loggers:
        if (
            isinstance(logger, (TensorBoardLogger, CSVLogger))
            and logger._version is None
            and "://" not in str(logger.root_dir)
        ):
            logger._version = claim_version(logger.root_dir, logger._get_next_version())
