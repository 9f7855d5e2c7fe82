"""One run of the reproduction in this process (the sweep's runs are processes: :mod:`..sweep.runner`): a method's
config through the same CLI a user runs (``python -m gf_lightning fit --config …``), with the callbacks that record
where it started and report its progress; afterwards its TensorBoard events are read back into a
:class:`~.records.RunResult`."""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ...cli import cli_main
from ...errors import GFConfigError, GFStepError, NonFiniteError
from ...interruption import EXIT_SIGTERM
from ..events import read_scalars, values
from .claims import MNIST
from .progress import Tick
from .records import RunResult, RunSpec, Settings

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def cli_args(spec: RunSpec, run_dir: Path, settings: Settings) -> list[str]:
    """The command line of this run (without ``fit``): the config, then only what the study overrides. The checkpoint
    is written once, after the last epoch: a study never resumes a run (it starts each afresh), and the two checkpoint
    files a run writes after every epoch by default (each checksummed, written beside its target, fsync'ed and renamed)
    cost 5–15 % of an exp1 SGD epoch, the more the busier the disk (measured: 4.4 ms of CPU, 14–25 ms of wall time an
    epoch); the numbers do not depend on it."""
    args = [
        "--config", str(spec.config),
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_epochs={spec.epochs}",
        f"--trainer.accelerator={settings.accelerator}",
        f"--trainer.devices={settings.devices}",
        "--progress_bar.refresh_rate=0",
        "--trainer.enable_model_summary=false",
        f"--checkpoint.every_n_epochs={spec.epochs}",
    ]
    if settings.log_every_n_steps:
        args.append(f"--trainer.log_every_n_steps={settings.log_every_n_steps}")
    if spec.experiment == MNIST:
        args.append(f"--data.init_args.data_dir={settings.data_dir}")
    return args


def run_one(spec: RunSpec, settings: Settings, index: int = 0,
            report: Callable[[Tick], None] | None = None) -> RunResult:
    """Train one method through the CLI, reporting its start and epochs to ``report`` (as run ``index`` of a plan); a
    run that goes non-finite or fails its set-up is recorded, not raised."""
    run_dir = settings.out / f"exp{spec.experiment}" / spec.method
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run replaces the old one: the logs read back are this run's
    args = cli_args(spec, run_dir, settings)
    result = RunResult(spec.experiment, spec.method, root_path(spec.config, settings.root), str(run_dir), spec.epochs,
                       args)
    if report is not None:
        report(Tick(index, 0, spec.epochs))
    start = time.monotonic()
    try:
        cli = cli_main(args, run=False)
    except SystemExit as err:  # cli_main printed the one-line reason
        result.status, result.message = "error", f"the CLI refused the config (exit {err.code})"
        return result
    cli.trainer.callbacks += [StartRecord(result), *([EpochTicks(index, report)] if report is not None else [])]
    result.log_every = cli.trainer.log_every_n_steps
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except SIGTERMException:  # the run said where it stopped; the study stops too, not as if finished (exit 0)
        raise SystemExit(EXIT_SIGTERM) from None
    except NonFiniteError as err:
        result.status, result.message = "nan", str(err)
        print(f"gf_lightning: {err}", file=sys.stderr)
    except (GFConfigError, GFStepError) as err:
        result.status, result.message = "error", str(err)
        print(f"gf_lightning: error: {err}", file=sys.stderr)
    except Exception as err:  # a crash of one method must not lose the hours the others took: record it, go on
        result.status, result.message = "error", f"{type(err).__name__}: {err}"
        traceback.print_exc()
    result.wall_s = time.monotonic() - start
    result.epochs_done = cli.trainer.current_epoch if result.status != "ok" else cli.trainer.max_epochs
    result.log_dir = str(Path(cli.trainer.logger.log_dir))
    if cli.trainer.optimizers:
        defaults = cli.trainer.optimizers[0].defaults
        result.nominal_lr = defaults["lr"] / (1.0 + defaults["lr"] * defaults.get("lam", 0.0))
    read_back(result)
    return result


def root_path(path: Path, root: Path) -> str:
    """``path`` relative to the study's ``root`` where it lies in it (``configs/exp3_sgd.yaml``)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def read_back(result: RunResult) -> None:
    """Fill the curves of ``result`` from its event files (one value per epoch for the per-epoch tags)."""
    scalars = read_scalars(result.log_dir)
    result.train_loss = values(scalars, "train/loss")
    result.test_loss = values(scalars, "val/loss")
    result.test_rel_err = values(scalars, "val/rel_err")
    result.test_acc = values(scalars, "val/acc")
    result.epoch_wall = [p.wall for p in scalars.get("train/loss", [])]
    result.energy_steps = [p.step for p in scalars.get("energy/modified", [])]
    result.energy = values(scalars, "energy/modified")
    result.energy_true = values(scalars, "energy/true")
    result.effective_lr = values(scalars, "optim/effective_lr")
    violations = values(scalars, "energy/violations")
    result.violations = violations[-1] if violations else math.nan
    rises = values(scalars, "energy/restart_rises")
    result.restart_rises = rises[-1] if rises else math.nan


# -- the callbacks -----------------------------------------------------------------------------------------------------
def _fingerprint(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class StartRecord(L.Callback):
    """Before the first step: fingerprints of the initial weights and of the data, and the held-out metrics at w⁰."""

    def __init__(self, result: RunResult) -> None:
        self.result = result

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        r, data = self.result, trainer.datamodule.tensors
        x, y = data["x_test"], data["y_test"]
        r.init_weights = _fingerprint(pl_module.net.state_dict().values())
        r.init_data = _fingerprint(data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        with torch.no_grad():  # as the validation computes val/loss
            out = pl_module.objective.predict(pl_module.net, x)
            r.init_test_loss = pl_module.objective.loss(out, y).item()
            if r.experiment == MNIST:
                r.init_test_metric = (out.argmax(-1) == y).double().mean().item()
            else:
                r.init_test_metric = ((out - y).double().square().sum() / y.double().square().sum()).item()


class EpochTicks(L.Callback):
    """After each training epoch, a :class:`~.progress.Tick` to ``report``: the epochs done, and the seconds an epoch
    since the training started."""

    def __init__(self, index: int, report: Callable[[Tick], None]) -> None:
        self.index, self.report = index, report
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        self.report(Tick(self.index, done, trainer.max_epochs, (time.monotonic() - self.start) / done))


# -- the process the runs train in -------------------------------------------------------------------------------------
@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's banners ("GPU available …", tips) and known harmless warnings would bury the progress lines; put back
    afterwards (a study also runs inside the tests' process)."""
    levels = [logging.getLogger(name).level for name in LIGHTNING_LOGGERS]
    with warnings.catch_warnings():
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        try:
            yield
        finally:
            for name, level in zip(LIGHTNING_LOGGERS, levels):
                logging.getLogger(name).setLevel(level)


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` (None: leave torch's choice) for the block, then put back."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
