"""An experiment's report — ``results.md`` (what was measured beside what the seed claims, and what it cost) with its
figures, and ``results.json`` (every run's record) — and the summary of a study of several experiments."""

from __future__ import annotations

import json
import math
import platform
import shlex
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch

from ..outcome import STALL_EPOCHS, STALL_REL, STEP_COLLAPSE
from ..tables import formatted, md_table, number
from .claims import EXPERIMENTS, MNIST, claim
from .figures import energy_caption, loss_caption, plot_energy, plot_losses
from .records import RunResult, Settings

FREEZE_NOTE = (
    "*Frozen* means the effective step that multiplies the gradient (`optim/effective_lr`, logged by the energy "
    "methods) "
    f"was, at the last logged step, below {STEP_COLLAPSE:g} × the nominal step Δt/(1 + Δtλ) (the step with the "
    "auxiliary "
    "factor at 1); *stalled* means the epoch's mean training loss changed by at "
    f"most {STALL_REL:g} × its value in each of the last {STALL_EPOCHS} epochs (needs more than {STALL_EPOCHS} "
    "epochs). "
    "*NaN in epoch e* means the non-finite guard stopped the run during epoch e; its numbers are those of epochs 1 … "
    "e−1."
)


def _times(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}×"


def accuracy_table(exp: int, results: list[RunResult]) -> str:
    if exp == MNIST:
        header = ["method", "epochs", "final test loss", "seed: final loss", "best test loss", "final acc",
                  "seed: final acc", "best acc", "epochs to 90 %", "seed: epochs to 90 %", "flag"]
        rows = [[r.method, str(len(r.test_loss)), formatted(r.final_loss), claim(exp, "final_loss", r.method),
                 formatted(r.best_loss), number(r.final_acc, pct=True), claim(exp, "final_acc", r.method),
                 number(r.best_acc, pct=True), formatted(r.epochs_to_target, "d"),
                 claim(exp, "epochs_to", r.method), r.flag] for r in results]
    else:
        header = ["method", "epochs", "final test MSE", "seed: final MSE", "best test MSE", "final rel err",
                  "best rel err", "epochs to MSE < 1e-4", "seed: epochs to 1e-4", "flag"]
        rows = [[r.method, str(len(r.test_loss)), formatted(r.final_loss), claim(exp, "final_loss", r.method),
                 formatted(r.best_loss),
                 formatted(r.final_rel_err), formatted(r.best_rel_err), formatted(r.epochs_to_target, "d"),
                 claim(exp, "epochs_to", r.method), r.flag] for r in results]
    return md_table(header, rows)


def cost_table(exp: int, results: list[RunResult]) -> str:
    sgd = next((r.seconds_per_epoch for r in results if r.method == "sgd"), math.nan)
    header = ["method", "s/epoch (median)", "× SGD", "seed: × SGD", "energy violations", "restart rises",
              "effective lr first → last", "initial test loss", "initial weights", "data"]
    rows = []
    for r in results:
        lr = f"{r.effective_lr[0]:.3g} → {r.effective_lr[-1]:.3g}" if r.effective_lr else "—"
        rows.append([r.method, formatted(r.seconds_per_epoch, ".4f"), _times(r.seconds_per_epoch / sgd),
                     claim(exp, "time", r.method), formatted(r.violations, ".0f"),
                     formatted(r.restart_rises, ".0f"), lr,
                     formatted(r.init_test_loss, ".6e"),
                     f"`{r.init_weights or '—'}`", f"`{r.init_data or '—'}`"])
    return md_table(header, rows)


def same_start_line(results: list[RunResult]) -> str:
    started = [r for r in results if r.init_weights]
    weights = {r.init_weights for r in started}
    data = {r.init_data for r in started}
    if len(weights) == 1 and len(data) == 1:
        return (
            f"All {len(started)} methods started from the same initial weights and the same data (fingerprints above)."
        )
    return (f"**The methods did not all start alike**: {len(weights)} different initial weights, "
            f"{len(data)} different data.")


def machine_line() -> str:
    cuda = f"yes: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no"
    return (f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, CUDA {cuda}")


def where_runs(settings: Settings) -> str:
    return "in this process" if settings.jobs <= 1 else f"in one of {settings.jobs} worker processes"


def run_command(r: RunResult, settings: Settings) -> str:
    """The run's command line, its paths inside the study's root (the folder above ``configs/``) relative to it."""
    return shlex.join(["python", "-m", "gf_lightning", "fit", *r.args]).replace(str(settings.root) + "/", "")


def write_results(exp: int, results: list[RunResult], skipped: list[str], settings: Settings, wall_s: float) -> Path:
    """``<out>/exp<exp>/``: ``loss.png``, ``energy.png``, ``results.md`` and ``results.json`` of the runs ``results``
    (in the order of the tables); ``skipped``: the methods not run, and why; ``wall_s``: the experiment's wall time."""
    folder = settings.out / f"exp{exp}"
    folder.mkdir(parents=True, exist_ok=True)  # where no run got as far as its logs
    plot_losses(results, folder / "loss.png")
    plot_energy(results, folder / "energy.png")
    target = "test accuracy ≥ 90 %" if exp == MNIST else "test MSE < 1e-4"
    captions = {"loss": loss_caption(results), "energy": energy_caption(results)}  # '' where there is nothing to say
    lines = [
        f"# Experiment {exp}: {EXPERIMENTS[exp]}",
        "",
        f"- command: `{settings.command}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine_line()}",
        f"- epochs: each config's `max_epochs` × {settings.epochs_scale:g} (at least 1); wall time of this experiment "
        f"{wall_s:.1f} s",
        f"- each run, {where_runs(settings)}: `{run_command(results[0], settings)}`, with each method's config "
        "(`args` in "
        "`results.json`); "
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
        "training and the validation pass; the checkpoint is written once, after the last epoch), the first epoch "
        "excluded; it depends on the machine's load "
        "(on 2 shared busy cores, 2 intra-op threads stalled each other: exp3 took 0.5 s/epoch against 0.03 with "
        "`--threads 1`). Energy violations: `energy/violations` (the running count of steps where the modified energy "
        "rose above the value the step started from, which the schemes guarantee never happens) at the last logged "
        "step; "
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
    payload = [
        {
            **asdict(r),
            "final_loss": r.final_loss,
            "best_loss": r.best_loss,
            "epochs_to_target": r.epochs_to_target,
            "seconds_per_epoch": r.seconds_per_epoch,
            "flag": r.flag,
        }
        for r in results
    ]
    (folder / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    return folder / "results.md"


def write_summary(done: dict[int, list[RunResult]], settings: Settings, wall_s: float) -> Path:
    """``<out>/summary.md``: each experiment's final numbers, linked to its ``results.md``."""
    lines = [
        "# Reproduction of the seed's four experiments",
        "",
        f"- command: `{settings.command}`",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine_line()}",
        f"- total wall time: {wall_s:.0f} s",
        "",
    ]
    for exp, results in done.items():
        lines += [f"## [Experiment {exp}](exp{exp}/results.md): {EXPERIMENTS[exp]}", ""]
        header = [
            "method",
            "final test loss",
            "best test loss",
            "final acc" if exp == MNIST else "final rel err",
            "flag",
        ]
        rows = [[r.method, formatted(r.final_loss), formatted(r.best_loss),
                 number(r.final_acc, pct=True) if exp == MNIST else formatted(r.final_rel_err), r.flag]
                for r in results]
        lines += [md_table(header, rows), ""]
    path = settings.out / "summary.md"
    path.write_text("\n".join(lines))
    return path
