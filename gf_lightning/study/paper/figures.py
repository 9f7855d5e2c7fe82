"""The figures of Ma, Mao & Shen (2024), measured: each figure's runs as small grids on the paper configs, run by the
sweep's process runner (:mod:`..sweep.runner`), and drawn as the paper draws them — loss against epochs, one line per
method and step.

A figure is a list of :class:`Part`\\ s (one grid each: methods × step sizes × other settings); its runs live under
``<out>/<figure>/<part>/runs/<point>``, so a second call skips what is done. :func:`measure` runs a figure and writes
``<out>/<figure>/curves.png`` and ``table.md``; the claims and verdicts are written in ``docs/paper.md`` beside them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..events import read_scalars
from ..methods import label
from ..plotting import MARKERS, pyplot
from ..sweep.execute import execute
from ..sweep.grid import Plan, Point, experiment_name
from ..sweep.records import RunRecord, done
from ..tables import Stat, counts_text, md_table, mean_sd, number

#: the paper's three SAV schemes by the project's names: Alg. 2 (vanilla), Alg. 3 (restart = the seed's form), Alg. 4
PAPER_NAMES = {
    "sav-vanilla": "SAV",
    "sav": "ResSAV",
    "sav-relax": "RelSAV",
    "sgd": "Euler (SGD)",
    "adam": "A-Euler (Adam)",
    "asav": "A-SAV",
    "aressav": "A-ResSAV",
    "arelsav": "A-RelSAV",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
}
SAV_FAMILY = ["sav-vanilla", "sav", "sav-relax"]
ADAPTIVE_FAMILY = ["asav", "aressav", "arelsav"]


@dataclass(frozen=True)
class Part:
    """One grid of a figure's runs."""

    name: str
    methods: list[str]
    lr: str  #: the step sizes, ``V1,V2,…``
    grid: list[str] = field(default_factory=list)  #: more axes, ``KEY=V1,V2,…``
    method_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Figure:
    """One figure of the paper: its config, the settings every run shares, its parts, and the reduction we made."""

    name: str
    config: str  #: the config, in the configs' folder: ``paper/ex1.yaml``
    claim: str
    parts: list[Part]
    epochs: int
    common: list[str] = field(default_factory=list)  #: ``KEY=VALUE`` settings of every run (a one-value grid axis)
    metric: str = "val/loss"
    energy: bool = False  #: also draw ``1 − r/r̂`` (Fig. 6)

    def config_path(self, configs: Path = Path("configs")) -> Path:
        """The config's file in the configs' folder ``configs``."""
        return Path(configs) / self.config


#: every figure's runs are repeated with these seeds (seed_everything: the network's initial weights, the data and the
#: order of the batches); tables give mean ± s.d. over them
SEEDS = ("0", "1", "2")
#: Fig. 10 on the paper's full 100 000 samples: long enough that Adam's test loss levels off (docs/paper.md says where)
FIG10_EPOCHS = 5
EX1, EX2, EX3, MNIST = (f"paper/{n}.yaml" for n in ("ex1", "ex2", "ex3", "mnist"))
FIGURES: dict[str, Figure] = {
    f.name: f
    for f in [
        Figure(
            "fig1",
            EX1,
            "SAV and RelSAV losses decay monotonically; Euler (gradient descent) oscillates",
            [Part("all", ["sgd", "sav-vanilla", "sav-relax"], "0.6", method_args=["C=1", "lam=10"])],
            epochs=300,
            common=[
                "data.init_args.d=20",
                "model.net.init_args.d=20",
                "data.init_args.n_samples=10000",
                "data.init_args.batch_size=null",
            ],
        ),
        Figure(
            "fig3",
            EX1,
            "SAV, ResSAV, RelSAV nearly identical and far better than SGD at 0.01; at lr 1 SAV unchanged "
            "while Euler does not converge",
            [Part("sav", SAV_FAMILY, "0.5,1", method_args=["C=100", "lam=4"]), Part("sgd", ["sgd"], "0.01,0.5,1")],
            epochs=3,
        ),
        Figure(
            "fig4",
            EX1,
            "the A-SAV family converges at lr 1 where Adam at lr 1 does not; slightly better and faster than "
            "Adam at 0.001",
            [
                Part("adaptive", ADAPTIVE_FAMILY, "0.01,1", method_args=["C=100", "lam=4"]),
                Part("adam", ["adam"], "0.001,1"),
            ],
            epochs=3,
        ),
        Figure(
            "fig5",
            EX1,
            "λ = 4 is best for vanilla SAV; λ matters little for ResSAV and RelSAV",
            [Part("lam", SAV_FAMILY, "0.5", grid=["model.optimizer.init_args.lam=0,1,4,10"], method_args=["C=100"])],
            epochs=3,
        ),
        Figure(
            "fig6",
            EX1,
            "1 − rⁿ/r̂ⁿ ≈ 0.6 for vanilla SAV at λ = 0, ≈ 0 for the others",
            [Part("ratio", SAV_FAMILY, "0.5", grid=["model.optimizer.init_args.lam=0,4"], method_args=["C=10"])],
            epochs=3,
            energy=True,
        ),
        Figure(
            "fig8",
            EX2,
            "Euler diverges at lr 0.4 and 1; the SAV schemes converge there but about one order of magnitude "
            "less accurate than SGD at 0.01",
            [Part("sav", SAV_FAMILY, "0.4,1", method_args=["C=1", "lam=4"]), Part("sgd", ["sgd"], "0.01,0.4,1")],
            epochs=20,
        ),
        Figure(
            "fig9",
            EX2,
            "the A-SAV family is about as accurate as Adam at 0.001 and faster early on; Adam at the large lr is worse",
            [
                Part("adaptive", ADAPTIVE_FAMILY, "0.1,1", method_args=["C=1", "lam=4"]),
                Part("adam", ["adam"], "0.001,1"),
            ],
            epochs=20,
        ),
        Figure(
            "fig10",
            EX3,
            "RelSAV is more stable than Euler at lr 1; A-RelSAV is more accurate and much faster than Adam, "
            "Adagrad and RMSprop (train ≈ 1e-6, test ≈ 1.5e-3 against ≈ 1e-2)",
            [
                Part("large", ["sgd", "sav-relax", "arelsav"], "1", method_args=["C=100", "lam=4"]),
                Part("baselines", ["adam", "adagrad", "rmsprop"], "0.001"),
            ],
            epochs=FIG10_EPOCHS,
        ),
        Figure(
            "fig11",
            MNIST,
            "no obvious difference between the four methods; ≈ 98.2–98.5 % test accuracy after 10 epochs",
            [Part("all", ["sgd", *SAV_FAMILY], "0.1", method_args=["C=100", "lam=4"])],
            epochs=10,
            metric="val/acc",
        ),
    ]
}


@dataclass
class Run:
    """One run of a figure, read back."""

    label: str  #: the method and its settings, without the seed
    record: RunRecord
    folder: Path


def plans(figure: Figure, out: Path, data_dir: str | None = None, configs: Path = Path("configs")) -> list[Plan]:
    """A sweep's plan per part of ``figure``, its runs under ``<out>/<figure>/<part>/``."""
    return [Plan.build(figure.config_path(configs), methods=part.methods, lr=part.lr, grid=[*part.grid, *figure.common],
                       seeds=list(SEEDS), method_args=part.method_args, out=out / figure.name / part.name,
                       max_epochs=figure.epochs, data_dir=data_dir if "mnist" in figure.config else None)
            for part in figure.parts]


def _run_label(point: Point) -> str:
    name = PAPER_NAMES.get(point.method, label(point.method))
    extra = [f"λ = {v}" for k, v in point.settings if k.endswith(".lam")]
    return ", ".join([name, f"lr {point.lr:g}", *extra])


def measure(figure: Figure, out: Path, jobs: int = 2, data_dir: str | None = None, run: bool = True,
            configs: Path = Path("configs")) -> list[Run]:
    """Run (unless done, or ``run`` is false) and read back every run of ``figure``; write its curves and table."""
    runs = []
    for plan in plans(figure, out, data_dir, configs):
        if run:
            execute(plan, jobs=jobs, hessian=False, echo=lambda line: None)
        for point in plan.points():
            record = done(point)
            if record is not None:
                runs.append(Run(_run_label(point), record, plan.runs / point.name))
    folder = out / figure.name
    curves(figure, runs, folder / "curves.png", configs)
    (folder / "table.md").write_text(table(figure, runs))
    return runs


def energy_gap(folder: Path) -> tuple[list[int], list[float]]:
    """``1 − rⁿ/r̂ⁿ`` at each logged step, with ``r = √(modified + C)`` and ``r̂ = √(true + C)`` (``energy/modified`` is
    ``r² − C``, ``energy/true`` the batch loss)."""
    scalars = read_scalars(folder)
    config = next(folder.rglob("config.yaml"), None)
    C = 1.0
    if config is not None:
        import yaml

        C = float(yaml.safe_load(config.read_text())["model"]["optimizer"]["init_args"]["C"])
    mod, true = scalars.get("energy/modified", []), {p.step: p.value for p in scalars.get("energy/true", [])}
    steps, gaps = [], []
    for p in mod:
        if p.step in true and true[p.step] + C > 0:
            steps.append(p.step)
            gaps.append(1.0 - math.sqrt(max(p.value + C, 0.0) / (true[p.step] + C)))
    return steps, gaps


def grouped(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs by label (one method and setting), each group its seeds, in the figure's order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    return groups


def _mean_curve(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, smallest and largest over the seeds at each epoch that every seed reached."""
    n = min((len(c) for c in curves), default=0)
    columns = [[c[i] for c in curves] for i in range(n)]
    return [statistics.fmean(col) for col in columns], [min(col) for col in columns], [max(col) for col in columns]


DIVERGED_Y = 0.97  #: where a diverged run's ✕ is drawn: near the top of the panel (axes fraction), never on the data


def curves(figure: Figure, runs: list[Run], path: Path, configs: Path = Path("configs")) -> Path:
    """Loss (and the held-out metric, and Fig. 6's ``1 − r/r̂``) against epochs: per method and setting the mean over
    the seeds with a band from the smallest to the largest, a marker of its own every few epochs (so no curve hides
    under another); a seed that diverged is a ✕ at the top of the panel at the epoch where it stopped, one that stopped
    early (fewer epochs than planned) a ■ at its last point, and the label says how many seeds were unstable."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = 3 if figure.energy else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 3.2, 4.4), squeeze=False)
    axes = axes[0]
    groups = grouped(runs)
    handles = []
    for i, (lbl, seeds) in enumerate(groups.items()):
        color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
        every = max(1, figure.epochs // 8)  # markers offset per curve within one period, so that every curve has some
        style = dict(color=color, lw=1.3, ls=("-", "--", ":", "-.")[i // 10 % 4], marker=marker, ms=5,
                     markevery=(i % min(5, every), every))
        finished = [r for r in seeds if r.record.status != "diverged"]
        series = [[r.record.train_loss for r in finished], [r.record.metric(figure.metric) for r in finished]]
        if figure.energy:
            series.append([energy_gap(r.folder)[1] for r in finished])
        for ax, curves_ in zip(axes, series):
            mean, lo, hi = _mean_curve([c for c in curves_ if c])
            if not mean:
                continue
            xs = range(1, len(mean) + 1)
            ax.plot(xs, mean, **style)
            if len(finished) > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, lw=0)
        for r in seeds:
            done_epochs = len(r.record.train_loss)
            if r.record.status == "diverged":
                for ax in axes[:2]:
                    ax.plot([max(done_epochs, 1)], [DIVERGED_Y], marker="X", ms=9, color=color, ls="none",
                            transform=ax.get_xaxis_transform(), clip_on=False)
            elif done_epochs < figure.epochs and r.record.train_loss:
                axes[0].plot([done_epochs], [r.record.train_loss[-1]], marker="s", ms=8, color=color, ls="none")
        unstable = sum(r.record.status == "unstable" for r in seeds)
        diverged = len(seeds) - len(finished)
        notes = [f"{k}/{len(seeds)} {word}" for k, word in ((unstable, "unstable"), (diverged, "diverged")) if k]
        handles.append(Line2D([], [], **{k: v for k, v in style.items() if k != "markevery"},
                              label=lbl + (f" ({', '.join(notes)})" if notes else "")))
    handles += [Line2D([], [], color="0.3", marker="X", ls="none", label="a seed that diverged (where it stopped)"),
                Line2D([], [], color="0.3", marker="s", ls="none", label="a seed that stopped early")]
    axes[0].set_ylabel("training loss (epoch mean)")
    axes[1].set_ylabel({"val/loss": "test loss", "val/acc": "test accuracy"}.get(figure.metric, figure.metric))
    full_batch = "batch_size=null" in " ".join(figure.common)
    for ax in axes[:2]:
        ax.set_xlabel("step (= epoch, full batch)" if full_batch else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if figure.metric != "val/acc" or ax is axes[0]:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    if figure.energy:
        axes[2].set_xlabel("logged step (every 10 steps)")
        axes[2].set_ylabel("1 − rⁿ / √(L(θⁿ) + C)")
        axes[2].grid(True, alpha=0.3)
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    seeds = len(SEEDS)
    name = experiment_name(figure.config_path(configs))
    fig.suptitle(f"{figure.name}: {name}, {figure.epochs} epochs; lines: mean over {seeds} "
                 f"seeds, bands: their range", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 3.1 / fig.get_figwidth(), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stat(values: list[float], pct: bool = False) -> str:
    """``mean ± s.d.`` over the seeds (the sample s.d.; a lone value alone)."""
    return mean_sd(Stat.of(values), pct, count=False)


def outcome_text(seeds: list[Run]) -> str:
    """``trained 2/3, diverged 1/3``: the seeds' outcomes."""
    counts: dict[str, int] = {}
    for r in seeds:
        counts[r.record.status] = counts.get(r.record.status, 0) + 1
    return counts_text(counts, len(seeds))


def table(figure: Figure, runs: list[Run]) -> str:
    """One row per method and setting: the seeds' outcomes, and mean ± s.d. over the seeds that did not diverge."""
    pct = figure.metric == "val/acc"
    best = max if pct else min
    header = ["run", "outcome", "final training loss", "final test", "best test", "wall (s, mean)"]
    if figure.energy:
        header.append("mean 1 − r/r̂ over the last epoch")
    rows = []
    for lbl, seeds in grouped(runs).items():
        ok = [r.record for r in seeds if r.record.status != "diverged"]
        metric = [rec.metric(figure.metric) for rec in ok]
        cols = [lbl, outcome_text(seeds), _stat([rec.train_loss[-1] for rec in ok if rec.train_loss]),
                _stat([m[-1] for m in metric if m], pct), _stat([best(m) for m in metric if m], pct),
                number(statistics.fmean(r.record.wall_s for r in seeds))]
        if figure.energy:
            tails = []
            for r in seeds:
                _, gaps = energy_gap(r.folder)
                tail = gaps[-max(1, len(gaps) // figure.epochs):] if gaps else []
                if tail:
                    tails.append(sum(tail) / len(tail))
            cols.append(_stat(tails))
        rows.append(cols)
    return md_table(header, rows) + "\n"
