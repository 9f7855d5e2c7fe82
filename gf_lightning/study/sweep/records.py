"""A sweep's point read back: its outcome, :class:`RunRecord` (``result.json`` in its folder), from what its run left.

A point's folder, ``<out>/runs/<name>/``, holds its TensorBoard run (``lightning_logs/…``), ``log.txt`` (the process's
stdout and stderr), ``started`` (the start, seconds since the epoch), ``exit_code``, and once read back ``result.json``.
A local run and a SLURM array task write the same files, and one function reads them (:func:`collect`), so a sweep
gathered from a cluster is reported by the same code as one run here. A point whose ``result.json`` (or ``exit_code``,
from a SLURM task not yet gathered) says it finished — trained, frozen, unstable or diverged — is not run again; a point
that failed otherwise (``error``: killed, interrupted, refused, stopped before its last epoch) is.

Outcomes (``RunRecord.status``): ``diverged``, ``unstable``, ``frozen`` or ``trained`` by :mod:`..outcome` (the one rule
of every study; a run stopped by the CLI's non-finite guard, "training went non-finite …", is diverged), or ``error``:
anything else (the CLI refused a setting, the process was killed or interrupted — SIGTERM and Ctrl-C exit 143 and 130 —,
or it logged fewer epochs than ``trainer.max_epochs``: ``incomplete``); the message has the reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..events import read_scalars, values
from ..io import json_text, write_atomic
from ..outcome import judge
from .grid import Point, identity

#: the outcomes that count as done: a re-run of the sweep skips them
DONE = ("trained", "frozen", "unstable", "diverged")
#: the CLI's line when the non-finite guard stops a run (gf_lightning.errors.NonFiniteError)
NON_FINITE = "training went non-finite"
#: the held-out tags read back, one list each in the record
VAL_TAGS = ("val/loss", "val/rel_err", "val/rel_l2", "val/acc")


@dataclass
class RunRecord:
    """One point's outcome, written as ``result.json`` in its folder."""

    name: str
    method: str
    settings: dict[str, str]
    lr: float
    seed: str | None
    args: list[str]  #: what followed ``python -m gf_lightning fit``
    status: str = "error"  #: trained, frozen, unstable, diverged (:mod:`..outcome`) or error
    message: str = ""
    exit_code: int | None = None
    wall_s: float = math.nan  #: the process's wall time, start-up included
    epochs: int = 0  #: epochs whose training loss was logged
    init_train_loss: float = math.nan  #: the training loss at the initial weights
    train_loss: list[float] = field(default_factory=list)  #: per epoch
    val: dict[str, list[float]] = field(default_factory=dict)  #: val/loss, val/rel_err or val/acc: per validation
    val_seconds: list[float] = field(default_factory=list)  #: each validation's time after training started
    last_effective_lr: float = math.nan  #: optim/effective_lr at its last logged step (energy methods)

    def metric(self, tag: str) -> list[float]:
        return self.val.get(tag, [])

    def save(self, folder: Path) -> None:
        write_atomic(folder / "result.json", json_text(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> RunRecord | None:
        path = folder / "result.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


# -- reading a finished point back -------------------------------------------------------------------------------------
def _first_event_time(folder: Path) -> float:
    """The wall time of the first event of the run's TensorBoard files: the logger's creation, as training starts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = []
    for path in Path(folder).rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        try:
            times.append(acc.FirstEventTimestamp())
        except ValueError:  # an empty file
            pass
    return min(times, default=math.nan)


def _read_float(path: Path) -> float:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return math.nan


def _reason(log: str) -> str:
    """The line of the run's output that says why it stopped: the CLI's own message, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("gf_lightning:") or NON_FINITE in line:
            return line
    return lines[-1] if lines else "no output"


def collect(point: Point, init_train_loss: float = math.nan) -> RunRecord:
    """The outcome of ``point`` from its folder: exit code, output, TensorBoard scalars (see the module's docstring)."""
    folder = point_folder(point)
    record = RunRecord(point.name, point.method, point.values, point.lr, point.seed, list(point.args),
                       init_train_loss=init_train_loss)
    code = _read_float(folder / "exit_code")
    started = _read_float(folder / "started")
    record.exit_code = None if code != code else int(code)
    try:
        log = (folder / "log.txt").read_text(errors="replace")
    except OSError:
        log = ""
    try:
        record.wall_s = (folder / "exit_code").stat().st_mtime - started
    except OSError:
        pass
    scalars = read_scalars(folder) if (folder / "lightning_logs").exists() else {}
    record.train_loss = values(scalars, "train/loss")
    record.epochs = len(record.train_loss)
    record.val = {tag: values(scalars, tag) for tag in VAL_TAGS if tag in scalars}
    t0 = _first_event_time(folder) if scalars else math.nan
    record.val_seconds = [p.wall - t0 for p in scalars.get("val/loss", [])]
    lr = values(scalars, "optim/effective_lr")
    record.last_effective_lr = lr[-1] if lr else math.nan

    finals = [vals[-1] for vals in record.val.values() if vals]
    outcome = judge(record.train_loss, record.init_train_loss, finals)  # the one rule, non-finite values included
    if record.exit_code is None:
        record.status, record.message = "error", "not finished: no exit code (still running, or killed)"
    elif record.exit_code != 0:
        record.status = "diverged" if NON_FINITE in log else "error"
        record.message = _reason(log)
    elif outcome.status == "diverged":
        record.status, record.message = outcome.status, outcome.message
    elif not record.train_loss:
        record.status, record.message = "error", "exit 0 but no training loss logged"
    elif record.epochs < (asked := epochs_asked(folder)):
        record.status, record.message = "error", f"incomplete: {record.epochs} of {asked} epochs done (run again)"
    else:
        record.status, record.message = outcome.status, outcome.message
    return record


def rejudge(record: RunRecord) -> RunRecord:
    """Set the status of a record that finished (exit 0, a training loss logged) by :func:`.outcome.judge`; a report
    re-reads records saved under an earlier rule through it."""
    finals = [vals[-1] for vals in record.val.values() if vals]
    outcome = judge(record.train_loss, record.init_train_loss, finals)
    record.status, record.message = outcome.status, outcome.message
    return record


def epochs_asked(folder: Path) -> int:
    """``trainer.max_epochs`` of the run in ``folder``, from the ``config.yaml`` the CLI saved beside its logs; 0 where
    the run is bounded otherwise (``max_steps``, ``max_time``) or saved no config."""
    try:
        trainer = yaml.safe_load(next(folder.rglob("config.yaml")).read_text())["trainer"]
    except (StopIteration, OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return 0
    epochs = trainer.get("max_epochs") if isinstance(trainer, dict) else None
    if not isinstance(epochs, int) or trainer.get("max_steps") not in (None, -1) or trainer.get("max_time"):
        return 0
    return epochs


def point_folder(point: Point) -> Path:
    for arg in point.args:
        if arg.startswith("--trainer.default_root_dir="):
            return Path(arg.partition("=")[2])
    raise ValueError(f"{point.name}: no --trainer.default_root_dir in its command line")


def done(point: Point) -> RunRecord | None:
    """The point's record when it finished (trained, frozen, unstable or diverged; every epoch asked, but a divergence)
    with the command line it has now (but where the data are read from and the run is written: the same run
    elsewhere)."""
    folder = point_folder(point)
    record = RunRecord.load(folder)
    if record is not None and record.exit_code == 0 and record.train_loss:
        rejudge(record)  # a record saved under an earlier rule
    same = record is not None and identity(record.args) == identity(list(point.args))
    cut_short = same and record.status != "diverged" and record.epochs < epochs_asked(folder)  # (exit 0 on SIGTERM)
    return record if same and record.status in DONE and not cut_short else None
