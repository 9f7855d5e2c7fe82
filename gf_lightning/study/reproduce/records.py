"""What a study passes around: its settings, the runs it plans (:class:`RunSpec`) and what each measured
(:class:`RunResult`, with the numbers the tables show as properties), and when a run got stuck (its step collapsed or
its loss stalled, by :mod:`..outcome`'s rules)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..outcome import STALL_EPOCHS, judge, stalled, step_collapsed
from .claims import ACCURACY_TARGET, MNIST, REGRESSION_TARGET


@dataclass(frozen=True)
class Settings:
    """What every run of one study shares, and how the study was asked for."""

    out: Path  #: runs log to ``<out>/exp<N>/<method>/``; the reports go to ``<out>/exp<N>/``
    command: str = ""  #: the command line, as the reports quote it
    epochs_scale: float = 1.0  #: multiplies each config's max_epochs (at least 1 epoch)
    accelerator: str = "cpu"  #: --trainer.accelerator
    devices: str = "1"  #: --trainer.devices
    data_dir: str = "data"  #: MNIST's folder (holds MNIST/raw/)
    log_every_n_steps: int | None = None  #: --trainer.log_every_n_steps; None: the config's
    threads: int | None = None  #: intra-op threads of each process that trains; None: torch's choice
    jobs: int = 1  #: processes that train at once: 1 trains in this process, one run after the other
    progress_every: float = 10.0  #: seconds between a run's progress lines
    configs: Path = Path("configs")  #: the folder of the configs ``exp<N>_<method>.yaml``

    @property
    def root(self) -> Path:
        """The folder that holds the configs' folder (a repository's root): the reports quote paths relative to it."""
        return self.configs.resolve().parent


@dataclass(frozen=True)
class RunSpec:
    """One run of a plan: a method's config in an experiment, for so many epochs."""

    experiment: int
    method: str
    config: Path
    epochs: int  # the config's max_epochs × --epochs-scale, at least 1


@dataclass
class RunResult:
    """What one run measured: its curves read back from its TensorBoard events (one value per epoch for the per-epoch
    tags), how it ended, and what it started from."""

    experiment: int
    method: str
    config: str
    log_dir: str
    epochs_planned: int
    args: list[str] = field(default_factory=list)  # what followed ``python -m gf_lightning fit``
    epochs_done: int = 0
    status: str = "ok"  # "ok", "nan" (stopped non-finite), "error"
    message: str = ""
    wall_s: float = 0.0
    init_weights: str = ""  # sha256 of the parameters before the first step (first 16 hex digits)
    init_data: str = ""  # sha256 of x_train, y_train, x_test, y_test
    init_test_loss: float = math.nan  # the held-out loss of the initial weights
    init_test_metric: float = math.nan  # and their relative error (regression) or accuracy (MNIST)
    train_loss: list[float] = field(default_factory=list)  # per epoch
    test_loss: list[float] = field(default_factory=list)
    test_rel_err: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    epoch_wall: list[float] = field(default_factory=list)  # event wall time of each epoch's train/loss
    energy_steps: list[int] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)  # energy/modified
    energy_true: list[float] = field(default_factory=list)  # energy/true (the loss it stands for)
    violations: float = math.nan  # energy/violations at the last logged step
    restart_rises: float = math.nan  # energy/restart_rises at the last logged step (restart forms only)
    effective_lr: list[float] = field(default_factory=list)
    nominal_lr: float = math.nan  # Δt / (1 + Δt λ): the step with the auxiliary factor at 1
    log_every: int = 0  # trainer.log_every_n_steps: how often energy/… and optim/… were logged

    # what the tables show
    @property
    def final_loss(self) -> float:
        return self.test_loss[-1] if self.test_loss else math.nan

    @property
    def best_loss(self) -> float:
        return _nanmin(self.test_loss)

    @property
    def final_rel_err(self) -> float:
        return self.test_rel_err[-1] if self.test_rel_err else math.nan

    @property
    def best_rel_err(self) -> float:
        return _nanmin(self.test_rel_err)

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else math.nan

    @property
    def best_acc(self) -> float:
        return max((a for a in self.test_acc if a == a), default=math.nan)

    @property
    def epochs_to_target(self) -> int | None:
        """First epoch (1-based) with test loss < 1e-4 (regression) or test accuracy ≥ 90 % (MNIST)."""
        if self.experiment == MNIST:
            hits = [i for i, a in enumerate(self.test_acc, 1) if a >= ACCURACY_TARGET]
        else:
            hits = [i for i, v in enumerate(self.test_loss, 1) if v < REGRESSION_TARGET]
        return hits[0] if hits else None

    @property
    def seconds_per_epoch(self) -> float:
        """Median over epochs 2… of the time between consecutive epochs' train/loss events (training + validation)."""
        gaps = [b - a for a, b in zip(self.epoch_wall, self.epoch_wall[1:])]
        return statistics.median(gaps) if gaps else math.nan

    @property
    def stuck(self) -> str:
        """'' or why the run got stuck: its last effective step collapsed, or its loss stalled (see
        ``reports.FREEZE_NOTE``; the reports call the first "frozen")."""
        lr = [v for v in self.effective_lr if v == v]
        if lr and step_collapsed(lr[-1], self.nominal_lr):
            return f"frozen: step {lr[-1] / self.nominal_lr:.1e} × nominal"
        if stalled(self.train_loss):
            return f"stalled: train loss flat for the last {STALL_EPOCHS} epochs"
        return ""

    @property
    def flag(self) -> str:
        """How the run ended: NaN, error, *unstable* by the studies' one rule (:mod:`..outcome`, from the held-out loss
        at the initial weights, the same split's start the reproduction records), stuck (frozen or stalled), else ok."""
        if self.status == "nan":
            return f"**NaN** in epoch {self.epochs_done + 1}"
        if self.status == "error":
            first = self.message.splitlines()[0] if self.message else "?"
            return "**error**: " + (first if len(first) <= 60 else first[:57] + "…").replace("|", "\\|")
        outcome = judge(self.train_loss, self.init_test_loss)
        if outcome.status in ("unstable", "diverged"):
            return f"{outcome.status}: {outcome.message}"
        return self.stuck or "ok"


def collapsed_from(r: RunResult) -> int | None:
    """The index in ``r.energy_steps`` from which the run stays collapsed to its last logged step, or None: where the
    effective step (``optim/effective_lr``, logged with ``energy/modified`` at the same steps) collapsed
    (:func:`..outcome.step_collapsed`), or where the modified energy is ±∞ or NaN (as ``RunResult.stuck``, which
    looks at the last step only)."""
    n = len(r.energy)
    lr = r.effective_lr if len(r.effective_lr) == n else [math.nan] * n
    start = n
    while start > 0 and (not math.isfinite(r.energy[start - 1]) or step_collapsed(lr[start - 1], r.nominal_lr)):
        start -= 1
    return start if start < n else None


def _nanmin(values: list[float]) -> float:
    return min((v for v in values if v == v), default=math.nan)
