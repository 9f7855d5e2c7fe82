"""Reproduce the four experiments of SPEC §3 in one command and report what was measured beside what the seed claims.

    python scripts/reproduce.py --experiment all --threads 1                      # everything: ~½ hour on 2 CPU cores
    python scripts/reproduce.py --experiment 3 --epochs-scale 0.05 --out /tmp/r3  # a quick pass: 5 epochs per method

Every method runs through the same CLI and config a user runs (``python -m gf_lightning fit --config configs/expN_M.yaml``),
in this process, one after the other, with TensorBoard logs under ``<out>/exp<N>/<method>/``. Afterwards the event files are
read back and ``<out>/exp<N>/`` gets ``loss.png``, ``energy.png``, ``results.md`` (measured | claimed) and ``results.json``.
``--experiment all`` also writes ``<out>/summary.md``. A run that goes non-finite is recorded as such; the others go on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import shlex
import shutil
import statistics
import sys
import textwrap
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import yaml

from gf_lightning.cli import cli_main
from gf_lightning.errors import GFConfigError, GFStepError, NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
METHODS = ("sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive")
#: the methods the seed does not have (configs/exp<N>_<name>.yaml in every experiment; run them with --methods)
NEW_METHODS = ("asav", "aressav", "arelsav", "aegd", "aegdm")
ENERGY_METHODS = ("sav", "expsav", "ieq_adaptive", "ieq", *NEW_METHODS)
LABELS = {"sgd": "SGD", "adam": "Adam", "sav": "SAV", "expsav": "ExpSAV", "ieq": "IEQ (full)", "ieq_adaptive": "IEQ adaptive",
          "asav": "A-SAV", "aressav": "A-ResSAV", "arelsav": "A-RelSAV", "aegd": "AEGD", "aegdm": "AEGDM"}
COLORS = {"sgd": "tab:gray", "adam": "tab:brown", "sav": "tab:blue", "expsav": "tab:orange", "ieq": "tab:green",
          "ieq_adaptive": "tab:red", "asav": "tab:purple", "aressav": "tab:pink", "arelsav": "tab:olive",
          "aegd": "tab:cyan", "aegdm": "navy"}
#: a marker and a dash pattern per method, so that curves that coincide (small steps: SGD ≈ SAV ≈ ExpSAV) stay visible
STYLES = {"sgd": ("o", (0, (4, 2))), "adam": ("s", "-"), "sav": ("^", "-"), "expsav": ("v", (0, (1, 1))), "ieq": ("D", "-"),
          "ieq_adaptive": ("x", (0, (6, 2, 1, 2))), "asav": ("P", "-"), "aressav": ("*", (0, (3, 1))),
          "arelsav": ("h", (0, (1, 2))), "aegd": ("<", "-"), "aegdm": (">", (0, (5, 2)))}
#: what ``energy/modified`` is, per method
ENERGY_MEANING = {"sav": "r² − C", "expsav": "log r − log C", "ieq_adaptive": "½q²",
                  "ieq": "‖q‖²/N after the step (the MSE's units)", "asav": "r² − C", "aressav": "r² − C",
                  "arelsav": "r² − C", "aegd": "mean of rᵢ² − c over coordinates", "aegdm": "mean of rᵢ² − c over coordinates"}
EXPERIMENTS = {
    1: "y = sin(p·x) + cos(q·x), x ~ U(0,1)^40, 8000/2000, m = 1000",
    2: "y = Σ cᵢxᵢ², x ~ U(0,5)^40, 8000/2000, m = 1000",
    3: "y = exp(−10‖x‖²), x ~ N(0, 0.04 I), d = 40, 800/200, m = 1000",
    4: "MNIST, random 8000/2000 of the train/test files, m = 100",
}
MNIST = 4
REGRESSION_TARGET = 1e-4  # "epochs to test loss < 1e-4"
ACCURACY_TARGET = 0.90  # "epochs to 90 % accuracy"
LR_COLLAPSE = 1e-6  # frozen: the last effective step < 1e-6 × the nominal one, Δt / (1 + Δt λ)
STALL_EPOCHS, STALL_REL = 5, 1e-6  # stalled: train/loss moved < 1e-6 (relative) in each of the last 5 epochs

# -- the seed's claims (its section 3, written before any run) ---------------------------------------------------------------
CLAIMS: dict[int, dict[str, dict[str, str]]] = {
    1: {
        "final_loss": {"ieq": "~1e-6", "expsav": "~1e-5", "ieq_adaptive": "~1e-5", "sav": "~1e-4", "adam": "~1e-4",
                       "sgd": "~1e-3"},
        "epochs_to": {"ieq": "~500", "expsav": "~800", "ieq_adaptive": "~1000", "sav": ">1000", "adam": "~1200",
                      "sgd": "not converged"},
    },
    2: {"epochs_to": {"ieq": "~30", "expsav": "~50", "ieq_adaptive": "~40", "sav": "~60", "adam": "~35", "sgd": "~80"}},
    3: {"epochs_to": {"ieq": "~40", "expsav": "~30", "ieq_adaptive": "~50", "sav": "~70", "adam": "~60",
                      "sgd": "not converged"}},
    4: {
        "final_acc": {"expsav": "92–94 %", "sav": "90–93 %", "ieq": "92–95 %", "ieq_adaptive": "92–94 %",
                      "sgd": "88–92 %"},
        "final_loss": {"expsav": "0.15–0.25", "sav": "0.20–0.30", "ieq": "0.15–0.25", "ieq_adaptive": "0.15–0.25",
                       "sgd": "0.25–0.35"},
        "epochs_to": {"ieq_adaptive": "~20", "expsav": "~25", "ieq": "~30", "sav": "~30", "sgd": "~50"},
    },
}
TIME_CLAIMS = {
    "regression": {"sgd": "1.0×", "adam": "1.1×", "ieq_adaptive": "1.2×", "expsav": "1.5×", "sav": "1.5×", "ieq": "3.5×"},
    "classification": {"sgd": "1.0×", "adam": "1.1×", "ieq_adaptive": "1.2×", "expsav": "1.8×", "sav": "1.8×",
                       "ieq": "5.2×"},
}


def base(method: str) -> str:
    """The method a run name stands for: ``expsav`` for ``expsav_restart`` (a config ``exp4_expsav_restart.yaml``)."""
    return max((m for m in (*METHODS, *NEW_METHODS) if method == m or method.startswith(m + "_")), key=len, default=method)


def label(method: str) -> str:
    suffix = method[len(base(method)) + 1 :]
    return LABELS.get(base(method), method) + (f" ({suffix.replace('_', ' ')})" if suffix else "")


def claim(exp: int, what: str, method: str) -> str:
    method = base(method)
    if what == "time":
        return TIME_CLAIMS["classification" if exp == MNIST else "regression"].get(method, "—")
    return CLAIMS.get(exp, {}).get(what, {}).get(method, "—")


# -- one run ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    experiment: int
    method: str
    config: Path
    epochs: int  # the config's max_epochs × --epochs-scale, at least 1


@dataclass
class RunResult:
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
    def frozen(self) -> str:
        """'' or why the run counts as frozen (see FREEZE_NOTE)."""
        lr = [v for v in self.effective_lr if v == v]
        if lr and lr[-1] < LR_COLLAPSE * self.nominal_lr:
            return f"frozen: step {lr[-1] / self.nominal_lr:.1e} × nominal"
        loss = self.train_loss
        if len(loss) > STALL_EPOCHS and all(
            abs(b - a) <= STALL_REL * abs(a) for a, b in zip(loss[-STALL_EPOCHS - 1 :], loss[-STALL_EPOCHS:])
        ):
            return f"stalled: train loss flat for the last {STALL_EPOCHS} epochs"
        return ""

    @property
    def flag(self) -> str:
        if self.status == "nan":
            return f"**NaN** in epoch {self.epochs_done + 1}"
        if self.status == "error":
            first = self.message.splitlines()[0] if self.message else "?"
            return "**error**: " + (first if len(first) <= 60 else first[:57] + "…").replace("|", "\\|")
        return self.frozen or "ok"


FREEZE_NOTE = (
    f"*Frozen* means the effective step that multiplies the gradient (`optim/effective_lr`, logged by the energy methods) "
    f"was, at the last logged step, below {LR_COLLAPSE:g} × the nominal step Δt/(1 + Δtλ) (the step with the auxiliary "
    "factor at 1); *stalled* means the epoch's mean training loss changed by at "
    f"most {STALL_REL:g} × its value in each of the last {STALL_EPOCHS} epochs (needs more than {STALL_EPOCHS} epochs). "
    "*NaN in epoch e* means the non-finite guard stopped the run during epoch e; its numbers are those of epochs 1 … e−1."
)


def _nanmin(values: list[float]) -> float:
    return min((v for v in values if v == v), default=math.nan)


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
        with torch.no_grad():
            out = pl_module(x)
            r.init_test_loss = pl_module.loss(out, y).item()
            if r.experiment == MNIST:
                r.init_test_metric = (out.argmax(-1) == y).double().mean().item()
            else:
                r.init_test_metric = ((out - y).double().square().sum() / y.double().square().sum()).item()


class Progress(L.Callback):
    """One line on stderr per epoch, at most every ``every`` seconds (and after the last epoch): run, epoch, ETAs."""

    def __init__(self, eta: Eta, index: int, every: float) -> None:
        self.eta, self.index, self.every = eta, index, every
        self.start = self.last_print = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.last_print = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.monotonic()
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        rate = (now - self.start) / done
        self.eta.update(self.index, done, rate)
        if now - self.last_print >= self.every or done == total:
            self.last_print = now
            spec = self.eta.plan[self.index]
            print(
                f"[exp{spec.experiment} {self.index + 1}/{len(self.eta.plan)} {spec.method:>12}] epoch {done:>4}/{total}"
                f"  {rate:6.2f} s/epoch  run ETA {_clock(rate * (total - done))}  all ETA {_clock(self.eta.remaining())}",
                file=sys.stderr,
                flush=True,
            )


class Eta:
    """Time left overall: this run's remaining epochs at its own rate, the runs to come at the rate seen so far for the
    same experiment (else the latest rate seen). Rough: IEQ (full) is slower than the rest."""

    def __init__(self, plan: list[RunSpec]) -> None:
        self.plan = plan
        self.rates: dict[int, float] = {}  # run index → s/epoch
        self.current = (0, 0)  # (run index, epochs done)

    def update(self, index: int, done: int, rate: float) -> None:
        self.rates[index] = rate
        self.current = (index, done)

    def _rate(self, experiment: int) -> float:
        same = [r for i, r in self.rates.items() if self.plan[i].experiment == experiment]
        return statistics.mean(same) if same else (list(self.rates.values()) or [0.0])[-1]

    def remaining(self) -> float:
        index, done = self.current
        left = self.rates.get(index, 0.0) * (self.plan[index].epochs - done)
        return left + sum(s.epochs * self._rate(s.experiment) for s in self.plan[index + 1 :])


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cli_args(spec: RunSpec, run_dir: Path, opts: argparse.Namespace) -> list[str]:
    """The command line of this run (without ``fit``): the config, then only what the script overrides."""
    args = [
        "--config", str(spec.config),
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_epochs={spec.epochs}",
        f"--trainer.accelerator={opts.accelerator}",
        f"--trainer.devices={opts.devices}",
        "--progress_bar.refresh_rate=0",
        "--trainer.enable_model_summary=false",
    ]
    if opts.log_every_n_steps:
        args.append(f"--trainer.log_every_n_steps={opts.log_every_n_steps}")
    if spec.experiment == MNIST:
        args.append(f"--data.init_args.data_dir={opts.data_dir}")
    return args


def run_one(spec: RunSpec, index: int, eta: Eta, opts: argparse.Namespace) -> RunResult:
    """Train one method through the CLI; a run that goes non-finite or fails its set-up is recorded, not raised."""
    run_dir = opts.out / f"exp{spec.experiment}" / spec.method
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run replaces the old one: the logs read back are this run's
    args = cli_args(spec, run_dir, opts)
    result = RunResult(spec.experiment, spec.method, str(spec.config.relative_to(ROOT)), str(run_dir), spec.epochs, args)
    start = time.monotonic()
    try:
        cli = cli_main(args, run=False)
    except SystemExit as err:  # cli_main printed the one-line reason
        result.status, result.message = "error", f"the CLI refused the config (exit {err.code})"
        return result
    cli.trainer.callbacks += [StartRecord(result), Progress(eta, index, opts.progress_every)]
    result.log_every = cli.trainer.log_every_n_steps
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
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


# -- reading the TensorBoard events back --------------------------------------------------------------------------------------
def read_events(root: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar under ``root`` as ``tag → [(step, value, wall_time), …]`` in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(Path(root).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
    return {tag: sorted(rows, key=lambda r: (r[0], r[2])) for tag, rows in out.items()}


def read_back(result: RunResult) -> None:
    """Fill the curves of ``result`` from its event files (one value per epoch for the per-epoch tags)."""
    events = read_events(result.log_dir)

    def values(tag: str) -> list[float]:
        return [v for _, v, _ in events.get(tag, [])]

    result.train_loss = values("train/loss")
    result.test_loss = values("val/loss")
    result.test_rel_err = values("val/rel_err")
    result.test_acc = values("val/acc")
    result.epoch_wall = [w for _, _, w in events.get("train/loss", [])]
    result.energy_steps = [s for s, _, _ in events.get("energy/modified", [])]
    result.energy = values("energy/modified")
    result.energy_true = values("energy/true")
    result.effective_lr = values("optim/effective_lr")
    violations = values("energy/violations")
    result.violations = violations[-1] if violations else math.nan
    rises = values("energy/restart_rises")
    result.restart_rises = rises[-1] if rises else math.nan


# -- figures ---------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: loss.png: runs whose train and test losses differ by less than this (relative) at every epoch lie on one line at the
#: figure's scale; the caption says so, with the largest difference measured
COINCIDE_REL = 0.05
#: energy.png: a modified energy that is ±∞, or beyond this many times the panel's largest loss (ExpSAV's log r − log C
#: falls to −1e13 … −∞ when it freezes), is not drawn: it would flatten the rest; the panel says where it went
OFF_CHART = 1e6


def _legend_label(r: RunResult, same_as: str = "") -> str:
    return (label(r.method) + (f" (NaN, ep. {r.epochs_done + 1})" if r.status == "nan" else "")
            + (f" (≈ {same_as})" if same_as else ""))


def _thousands(x: float, _pos=None) -> str:
    """Tick labels for step counts: 500, 2.5k, 120k (matplotlib's plain labels run together: 80000100000120000)."""
    return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def _count_axis(ax, nbins: int = 5) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True, min_n_ticks=3))
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))


def _rel_diff(a: list[float], b: list[float]) -> float:
    """The largest |a − b| / max(|a|, |b|) over the epochs; ∞ where the curves differ in length or are not finite."""
    if len(a) != len(b) or not a:
        return math.inf
    worst = 0.0
    for x, y in zip(a, b):
        if not (math.isfinite(x) and math.isfinite(y)):
            return math.inf
        if x != y:
            worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return worst


def _curve_diff(a: RunResult, b: RunResult) -> float:
    return max(_rel_diff(a.train_loss, b.train_loss), _rel_diff(a.test_loss, b.test_loss))


def coinciding(results: list[RunResult]) -> list[tuple[list[RunResult], float]]:
    """Groups of runs whose loss curves coincide in loss.png: every two members' train and test losses within
    COINCIDE_REL of each other (relative) at every epoch; each group with the largest such difference in it."""
    groups: list[list[RunResult]] = []
    for r in results:
        group = next((g for g in groups if all(_curve_diff(r, m) < COINCIDE_REL for m in g)), None)
        if group is None:
            groups.append([r])
        else:
            group.append(r)
    return [(g, max(_curve_diff(a, b) for i, a in enumerate(g) for b in g[i + 1 :])) for g in groups if len(g) > 1]


def _rel_text(d: float) -> str:
    return "0 (identical)" if d == 0 else f"{100 * d:.2g} %" if d >= 1e-3 else f"{d:.1e}"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def loss_caption(results: list[RunResult]) -> str:
    """The sentence under loss.png: which methods' curves lie on one another (measured: ``coinciding``), or ''."""
    parts = []
    for group, worst in coinciding(results):
        text = (f"{_and([label(r.method) for r in group])} lie on one curve: their train and test losses differ by at "
                f"most {_rel_text(worst)} (relative) at any epoch")
        close = [(a, b, _curve_diff(a, b)) for i, a in enumerate(group) for b in group[i + 1 :]]
        close = [(a, b, d) for a, b, d in close if d < 1e-3 < worst]  # a tighter pair inside a looser group
        if close:
            text += "; " + "; ".join(f"{label(a.method)} and {label(b.method)} by {_rel_text(d)}" for a, b, d in close)
        parts.append(text)
    if not parts:
        return ""
    return ("Coinciding curves: " + ". ".join(parts) + ". They are drawn on top of one another (told apart by their "
            "markers and dashes); the legend marks each with ≈ the first of its group.")


def plot_losses(results: list[RunResult], path: Path) -> None:
    """Train loss, held-out test loss (log scale) and the relative error (regression) or accuracy (MNIST), per epoch;
    the test panels start at epoch 0, the initial weights (x: the epoch, one value per epoch's event, in step order).
    Runs whose curves coincide (``coinciding``) are said so in the title and legend, and their markers are staggered."""
    plt = _pyplot()

    groups = coinciding(results)
    same_as, stagger = {}, {}  # run → the first of its group; run → (its place in the group, the group's size)
    for group, _ in groups:
        for k, r in enumerate(group):
            same_as[id(r)] = label(group[0].method) if k else ""
            stagger[id(r)] = (k, len(group))
    mnist = results[0].experiment == MNIST
    third = ("test accuracy", "test_acc", "init_test_metric") if mnist else (
        "test relative error Σ(f−y)²/Σy²", "test_rel_err", "init_test_metric")
    panels = [("train loss (epoch mean)", "train_loss", None), ("test loss (held-out 20 %)", "test_loss", "init_test_loss"),
              third]
    epochs = max(r.epochs_planned for r in results)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), dpi=90, layout="constrained")
    for ax, (title, attr, init) in zip(axes, panels):
        for r in results:
            ys = getattr(r, attr)
            if not ys:
                continue
            xs = list(range(1, len(ys) + 1))
            if init is not None and not math.isnan(getattr(r, init)):
                xs, ys = [0, *xs], [getattr(r, init), *ys]
            marker, dashes = STYLES[base(r.method)]
            every = max(1, len(ys) // 12)
            k, size = stagger.get(id(r), (0, 1))
            ax.plot(xs, ys, color=COLORS[base(r.method)], lw=1.3, ls=dashes, marker=marker, ms=3.5,
                    markevery=(k * every // size, every), label=_legend_label(r, same_as.get(id(r), "")))
            if r.status == "nan":
                ax.plot(xs[-1], ys[-1], "x", color=COLORS[base(r.method)], ms=8, mew=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_xlim(-0.02 * epochs, 1.02 * epochs)
        _count_axis(ax, nbins=6)
        if attr != "test_acc":
            ax.set_yscale("log" if _all_positive(ax) else "symlog")
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    title = f"Experiment {results[0].experiment}: {EXPERIMENTS[results[0].experiment]}"
    for group, worst in groups:
        title += (f"\n{' ≈ '.join(label(r.method) for r in group)}: one curve (train and test losses within "
                  f"{_rel_text(worst)} at every epoch)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def _all_positive(ax) -> bool:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y == y]
    return bool(ys) and min(ys) > 0


def _short(x: float) -> str:
    """A number for a label: 3 significant digits, a real minus sign, ∞."""
    text = "∞" if math.isinf(x) else f"{x:.3g}"
    return ("−" + text.lstrip("-")) if x < 0 else text


def frozen_from(r: RunResult) -> int | None:
    """The index in ``r.energy_steps`` from which the run stays frozen to its last logged step, or None: frozen where the
    effective step (``optim/effective_lr``, logged with ``energy/modified`` at the same steps) is below LR_COLLAPSE × the
    nominal one, or where the modified energy is ±∞ or NaN (as ``RunResult.frozen``, which looks at the last step only)."""
    n = len(r.energy)
    lr = r.effective_lr if len(r.effective_lr) == n else [math.nan] * n
    start = n
    while start > 0 and (not math.isfinite(r.energy[start - 1]) or lr[start - 1] < LR_COLLAPSE * r.nominal_lr):
        start -= 1
    return start if start < n else None


def _decade_label(x: float, _pos=None) -> str:
    if x == 0:
        return "0"
    e = round(math.log10(abs(x)))
    sign = "-" if x < 0 else ""
    return f"${sign}{10 ** e:g}$" if 0 <= e <= 2 else f"${sign}10^{{{e}}}$"


def _energy_yscale(ax, values: list[float]) -> float | None:
    """Log when every value is positive; else symlog, linear within ±linthresh (the decade at or below the 5th percentile
    of the values' magnitudes, at most 8 decades under the largest; shaded), ticked at 0 and at decades far enough apart
    to be read. Returns linthresh (None: log or linear)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    if min(values) > 0:
        ax.set_yscale("log")
        return None
    mags = sorted(abs(v) for v in values if v != 0)
    if not mags:  # all zero
        return None
    low, top = mags[int(0.05 * (len(mags) - 1))], mags[-1]
    linthresh = 10.0 ** math.floor(math.log10(max(low, top * 1e-8)))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
    limits = ax.get_ylim()  # the data's: the band is drawn, not counted
    ax.axhspan(-linthresh, linthresh, color="0.9", lw=0, zorder=0)
    ax.set_ylim(limits)
    # ticks: 0, then decades from the largest magnitude down, each kept only if a 1/7 of the axis from those kept
    first, (lo, hi) = round(math.log10(linthresh)), limits
    candidates = [0.0] + sorted((sign * 10.0 ** e for sign, extreme in ((1, hi), (-1, -lo)) if extreme >= linthresh
                                 for e in range(first, math.floor(math.log10(extreme)) + 1)), key=abs, reverse=True)
    place = ax.yaxis.get_transform().transform
    position = dict(zip(candidates, place(candidates)))
    gap = abs(place([hi])[0] - place([lo])[0]) / 7
    ticks: list[float] = []
    for c in candidates:
        if all(abs(position[c] - position[t]) >= gap for t in ticks):
            ticks.append(c)
    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(_decade_label))
    ax.yaxis.set_minor_locator(NullLocator())
    return linthresh


def _energy_panel(ax, r: RunResult) -> tuple[str, bool]:
    """Draw one run's modified (its colour) and true (black, dashed) energy; return the note under the panel and whether
    the y-axis is symlog."""
    steps, energy = r.energy_steps, r.energy
    true = r.energy_true if len(r.energy_true) == len(steps) else []
    start = frozen_from(r)
    scale = max([abs(v) for v in true if math.isfinite(v)] + [abs(v) for v in energy[:start] if math.isfinite(v)],
                default=1.0) or 1.0
    off = [not math.isfinite(v) or abs(v) > OFF_CHART * scale for v in energy]
    shown = [math.nan if o else v for o, v in zip(off, energy)]
    color = COLORS[base(r.method)]
    drawn = sum(v == v for v in shown)
    ax.plot(steps, shown, color=color, lw=1.2, marker="." if drawn <= 30 else None, ms=4, zorder=3)
    if true:
        ax.plot(steps, true, color="k", lw=0.7, ls="--", zorder=2)
    linthresh = _energy_yscale(ax, [v for v in shown + list(true)])
    violations = "—" if math.isnan(r.violations) else f"{r.violations:.0f}"
    note = f"violations {violations}"
    if start is not None:
        x = steps[start]
        before = [v for v in shown[: start + 1] if v == v]
        y = before[-1] if before else (true[start] if true else 0.0)
        ax.axvline(x, color=color, ls=":", lw=1.0, zorder=1)
        ax.plot([x], [y], marker="X", color=color, mec="k", mew=0.6, ms=8, zorder=4, clip_on=False)
        note += f"; frozen at step {x:,}"
    if any(off):
        worst = energy[-1] if off[-1] else max((v for o, v in zip(off, energy) if o), key=abs)
        note += f"; then {_short(worst)}, not drawn" if start is not None else f"; down to {_short(worst)}, not drawn"
    elif energy:
        note += f"; last {_short(energy[-1])}"
    return note, linthresh is not None


def energy_caption(results: list[RunResult]) -> str:
    """The text under energy.png: what is drawn, and where each run froze."""
    runs = [r for r in results if base(r.method) in ENERGY_METHODS]
    if not runs:
        return ""
    text = ("Each panel: the method's modified energy (solid, its colour; what it is: the panel's title) and the true "
            "energy, the step's mini-batch loss (black, dashed), in the loss's units, against the optimizer step. y axis: "
            "logarithmic, or where an energy is ≤ 0 symmetric-logarithmic, linear inside the grey band around 0. ✕ and "
            f"the dotted line: where the run froze for good (effective step below {LR_COLLAPSE:g} × nominal, or the "
            f"modified energy ±∞, up to the last logged step); a modified energy ±∞ or beyond {OFF_CHART:g} × the "
            "panel's largest loss is not drawn.")
    frozen = []
    for r in runs:
        start = frozen_from(r)
        if start is not None:
            frozen.append(f"{label(r.method)} at step {r.energy_steps[start]:,} (modified energy then "
                          f"{_short(r.energy[-1])})")
    if frozen:
        text += " Frozen: " + "; ".join(frozen) + "."
    return text


def plot_energy(results: list[RunResult], path: Path) -> None:
    """One panel per energy method: the modified energy per logged step, beside the true energy (the loss it stands for);
    log or symlog y, freezes marked, notes under the panels, never on the data."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs = [r for r in results if base(r.method) in ENERGY_METHODS]
    cols = min(4, max(1, len(runs)))
    rows = max(1, math.ceil(len(runs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 3.1 * cols), 0.9 + 3.0 * rows), dpi=90, squeeze=False,
                             layout="constrained")
    symlog = False
    for ax, r in zip(axes.flat, runs):
        if r.energy:
            note, is_symlog = _energy_panel(ax, r)
            symlog |= is_symlog
        else:
            note = "nothing logged"
            ax.set_xticks([])
            ax.set_yticks([])
        meaning = ENERGY_MEANING[base(r.method)]
        ax.set_title(textwrap.fill(f"{label(r.method)}: {meaning}", 38), fontsize=8)
        ax.set_xlabel("step\n" + textwrap.fill(note, 44), fontsize=7.5)
        if r.energy:
            _count_axis(ax)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3, which="major", lw=0.4)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_axis_off()
    if not runs:
        axes[0][0].set_axis_on()
        axes[0][0].set_xticks([])
        axes[0][0].set_yticks([])
        axes[0][0].text(0.5, 0.5, "no energy method was run", ha="center", transform=axes[0][0].transAxes)
    handles = [Line2D([], [], color="0.4", lw=1.2), Line2D([], [], color="k", lw=0.7, ls="--")]
    texts = ["modified energy (title)", "true energy: the step's batch loss"]
    if any(frozen_from(r) is not None for r in runs):
        handles.append(Line2D([], [], color="0.4", ls=":", marker="X", mec="k", mew=0.6, ms=7))
        texts.append(f"frozen for good (step < {LR_COLLAPSE:g} × nominal, or energy ±∞)")
    if symlog:
        handles.append(Patch(color="0.9"))
        texts.append("symlog: linear in this band")
    fig.legend(handles, texts, loc="outside lower center", ncols=len(handles) if cols > 2 else 1, fontsize=7,
               frameon=False)
    every = "/".join(map(str, sorted({r.log_every for r in runs})))
    fig.suptitle(f"Experiment {results[0].experiment}: modified and true energy"
                 + (f", logged every {every} steps" if every else ""), fontsize=9)
    fig.savefig(path)
    plt.close(fig)


# -- results.md --------------------------------------------------------------------------------------------------------------
def _num(x: float, fmt: str = ".3e") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _times(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}×"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f} %"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(exp: int, results: list[RunResult]) -> str:
    if exp == MNIST:
        header = ["method", "epochs", "final test loss", "seed: final loss", "best test loss", "final acc",
                  "seed: final acc", "best acc", "epochs to 90 %", "seed: epochs to 90 %", "flag"]
        rows = [[r.method, str(len(r.test_loss)), _num(r.final_loss), claim(exp, "final_loss", r.method), _num(r.best_loss),
                 _pct(r.final_acc), claim(exp, "final_acc", r.method), _pct(r.best_acc), _num(r.epochs_to_target, "d"),
                 claim(exp, "epochs_to", r.method), r.flag] for r in results]
    else:
        header = ["method", "epochs", "final test MSE", "seed: final MSE", "best test MSE", "final rel err",
                  "best rel err", "epochs to MSE < 1e-4", "seed: epochs to 1e-4", "flag"]
        rows = [[r.method, str(len(r.test_loss)), _num(r.final_loss), claim(exp, "final_loss", r.method), _num(r.best_loss),
                 _num(r.final_rel_err), _num(r.best_rel_err), _num(r.epochs_to_target, "d"),
                 claim(exp, "epochs_to", r.method), r.flag] for r in results]
    return md_table(header, rows)


def cost_table(exp: int, results: list[RunResult]) -> str:
    sgd = next((r.seconds_per_epoch for r in results if r.method == "sgd"), math.nan)
    header = ["method", "s/epoch (median)", "× SGD", "seed: × SGD", "energy violations", "restart rises",
              "effective lr first → last", "initial test loss", "initial weights", "data"]
    rows = []
    for r in results:
        lr = f"{r.effective_lr[0]:.3g} → {r.effective_lr[-1]:.3g}" if r.effective_lr else "—"
        rows.append([r.method, _num(r.seconds_per_epoch, ".4f"), _times(r.seconds_per_epoch / sgd),
                     claim(exp, "time", r.method), _num(r.violations, ".0f"), _num(r.restart_rises, ".0f"), lr,
                     _num(r.init_test_loss, ".6e"),
                     f"`{r.init_weights or '—'}`", f"`{r.init_data or '—'}`"])
    return md_table(header, rows)


def same_start_line(results: list[RunResult]) -> str:
    started = [r for r in results if r.init_weights]
    weights = {r.init_weights for r in started}
    data = {r.init_data for r in started}
    if len(weights) == 1 and len(data) == 1:
        return f"All {len(started)} methods started from the same initial weights and the same data (fingerprints above)."
    return f"**The methods did not all start alike**: {len(weights)} different initial weights, {len(data)} different data."


def machine_line() -> str:
    cuda = f"yes: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no"
    return (f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, CUDA {cuda}")


def run_command(r: RunResult) -> str:
    return shlex.join(["python", "-m", "gf_lightning", "fit", *r.args]).replace(str(ROOT) + "/", "")


def write_results(exp: int, results: list[RunResult], skipped: list[str], opts: argparse.Namespace, wall_s: float) -> Path:
    folder = opts.out / f"exp{exp}"
    plot_losses(results, folder / "loss.png")
    plot_energy(results, folder / "energy.png")
    target = "test accuracy ≥ 90 %" if exp == MNIST else "test MSE < 1e-4"
    captions = {"loss": loss_caption(results), "energy": energy_caption(results)}  # '' where there is nothing to say
    lines = [
        f"# Experiment {exp}: {EXPERIMENTS[exp]}",
        "",
        f"- command: `{opts.command}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine_line()}",
        f"- epochs: each config's `max_epochs` × {opts.epochs_scale:g} (at least 1); wall time of this experiment "
        f"{wall_s:.1f} s",
        f"- each run, in this process: `{run_command(results[0])}`, with each method's config (`args` in `results.json`); "
        f"TensorBoard logs in `exp{exp}/<method>/`",
        "",
        "![losses](loss.png)",
        "",
        *([captions["loss"], ""] if captions["loss"] else []),
        "![energies](energy.png)",
        "",
        *([captions["energy"], ""] if captions["energy"] else []),
        "## Accuracy (held-out test split, measured | seed's claim)",
        "",
        accuracy_table(exp, results),
        "",
        f"Test loss: `val/loss` after the epoch, on the held-out 20 % ({'cross-entropy' if exp == MNIST else 'MSE'}); "
        + ("" if exp == MNIST else "rel err = `val/rel_err` = Σ(f−y)²/Σy² over the held-out split; ")
        + f"epochs to target: the first epoch whose {target}, — if none. {FREEZE_NOTE}",
        "",
        "## Cost and stability",
        "",
        cost_table(exp, results),
        "",
        "s/epoch: median over epochs 2 … of the time between consecutive epochs' `train/loss` events (one epoch of "
        "training, the validation pass and the checkpoint), the first epoch excluded; it depends on the machine's load "
        "(on 2 shared busy cores, 2 intra-op threads stalled each other: exp3 took 0.5 s/epoch against 0.03 with "
        "`--threads 1`). Energy violations: `energy/violations` (the running count of steps where the modified energy "
        "rose above the value the step started from, which the schemes guarantee never happens) at the last logged step; "
        "restart rises: `energy/restart_rises` (restart forms, SAV's seed form included: restarts that set r above the "
        "value the last step left, which those forms allow). Initial test loss: the "
        "held-out loss of the weights before the first step; the fingerprints are SHA-256 prefixes of the initial "
        "parameters and of the four data tensors.",
        "",
        same_start_line(results),
    ]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    messages = [f"- {r.method}: {r.message}" for r in results if r.message]
    if messages:
        lines += ["", "## Messages", "", *messages]
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    payload = [{**asdict(r), "final_loss": r.final_loss, "best_loss": r.best_loss, "epochs_to_target": r.epochs_to_target,
                "seconds_per_epoch": r.seconds_per_epoch, "flag": r.flag} for r in results]
    (folder / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    return folder / "results.md"


def write_summary(done: dict[int, list[RunResult]], opts: argparse.Namespace, wall_s: float) -> Path:
    lines = [
        "# Reproduction of the seed's four experiments",
        "",
        f"- command: `{opts.command}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine_line()}",
        f"- total wall time: {wall_s:.0f} s",
        "",
    ]
    for exp, results in done.items():
        lines += [f"## [Experiment {exp}](exp{exp}/results.md): {EXPERIMENTS[exp]}", ""]
        header = ["method", "final test loss", "best test loss", "final acc" if exp == MNIST else "final rel err", "flag"]
        rows = [[r.method, _num(r.final_loss), _num(r.best_loss),
                 _pct(r.final_acc) if exp == MNIST else _num(r.final_rel_err), r.flag] for r in results]
        lines += [md_table(header, rows), ""]
    path = opts.out / "summary.md"
    path.write_text("\n".join(lines))
    return path


# -- the driver -----------------------------------------------------------------------------------------------------------
def config_path(exp: int, method: str) -> Path:
    return CONFIGS / f"exp{exp}_{method}.yaml"


def plan_experiment(exp: int, methods: list[str], scale: float) -> tuple[list[RunSpec], list[str]]:
    specs, skipped = [], []
    for method in methods:
        cfg = config_path(exp, method)
        if not cfg.exists():
            skipped.append(f"{method} (no config for experiment {exp})")
            continue
        max_epochs = yaml.safe_load(cfg.read_text())["trainer"]["max_epochs"]
        specs.append(RunSpec(exp, method, cfg, max(1, math.floor(max_epochs * scale + 0.5))))
    return specs, skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=["1", "2", "3", "4", "all"], required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"default: every config that exists for the experiment among {', '.join(METHODS)} (the seed's; "
                        f"beyond it: {', '.join(NEW_METHODS)}); NAME runs "
                        "configs/exp<N>_NAME.yaml, so a variant config such as exp4_expsav_restart.yaml runs as expsav_restart")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies each config's max_epochs (min 1 epoch)")
    p.add_argument("--accelerator", default="cpu", help="--trainer.accelerator (default cpu)")
    p.add_argument("--devices", default="1", help="--trainer.devices (default 1)")
    p.add_argument("--out", type=Path, default=Path("results"))
    default_data = "../shared/data" if Path("../shared/data").exists() else "data"
    p.add_argument("--data-dir", default=default_data, help=f"MNIST folder holding MNIST/raw/ (default {default_data})")
    p.add_argument("--log-every-n-steps", type=int, default=None,
                   help="--trainer.log_every_n_steps: how often energies are logged (default: the config's, 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice; on a few busy shared cores 1 can be much faster)")
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines (default 10)")
    opts = p.parse_args(argv)
    if opts.epochs_scale <= 0:
        p.error("--epochs-scale must be positive")
    return opts


LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def quiet_lightning() -> None:
    """Lightning's banners ("GPU available …", tips) and known harmless warnings would bury the progress lines."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.command = shlex.join(["python", "scripts/reproduce.py", *(sys.argv[1:] if argv is None else argv)])
    # main() also runs in-process (the tests): put back what it changes for its own runs
    threads, levels = torch.get_num_threads(), [logging.getLogger(n).level for n in LIGHTNING_LOGGERS]
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        with warnings.catch_warnings():
            quiet_lightning()
            run_all(opts)
    finally:
        torch.set_num_threads(threads)
        for name, level in zip(LIGHTNING_LOGGERS, levels):
            logging.getLogger(name).setLevel(level)
    return 0


def run_all(opts: argparse.Namespace) -> None:
    experiments = [1, 2, 3, 4] if opts.experiment == "all" else [int(opts.experiment)]
    plans = {exp: plan_experiment(exp, opts.methods, opts.epochs_scale) for exp in experiments}
    plan = [spec for specs, _ in plans.values() for spec in specs]
    eta = Eta(plan)
    start, done, index = time.monotonic(), {}, 0
    for exp, (specs, skipped) in plans.items():
        if not specs:
            print(f"experiment {exp}: nothing to run ({'; '.join(skipped)})", file=sys.stderr)
            continue
        exp_start, results = time.monotonic(), []
        for spec in specs:
            print(f"[exp{exp} {index + 1}/{len(plan)} {spec.method:>12}] start: {spec.config.name}, {spec.epochs} epochs",
                  file=sys.stderr, flush=True)
            results.append(run_one(spec, index, eta, opts))
            index += 1
        path = write_results(exp, results, skipped, opts, time.monotonic() - exp_start)
        done[exp] = results
        print(f"experiment {exp}: wrote {path}", file=sys.stderr)
    if opts.experiment == "all":
        print(f"wrote {write_summary(done, opts, time.monotonic() - start)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
