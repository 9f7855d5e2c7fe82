"""The figures of an experiment's report: ``loss.png`` (train loss, held-out loss and its relative error or accuracy per
epoch, every method) and ``energy.png`` (one panel per energy method: its modified energy beside the true one), and the
captions that say what they show. matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from ..methods import COLORS, ENERGY_MEANING, ENERGY_METHODS, base, label
from ..outcome import STEP_COLLAPSE
from ..plotting import pyplot
from .claims import EXPERIMENTS, MNIST
from .records import RunResult, collapsed_from

#: a marker and a dash pattern per method, so that curves that coincide (small steps: SGD ≈ SAV ≈ ExpSAV) stay visible
STYLES = {
    "sgd": ("o", (0, (4, 2))),
    "adam": ("s", "-"),
    "sav": ("^", "-"),
    "expsav": ("v", (0, (1, 1))),
    "ieq": ("D", "-"),
    "ieq_adaptive": ("x", (0, (6, 2, 1, 2))),
    "asav": ("P", "-"),
    "aressav": ("*", (0, (3, 1))),
    "arelsav": ("h", (0, (1, 2))),
    "aegd": ("<", "-"),
    "aegdm": (">", (0, (5, 2))),
}


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
    plt = pyplot()

    groups = coinciding(results)
    same_as, stagger = {}, {}  # run → the first of its group; run → (its place in the group, the group's size)
    for group, _ in groups:
        for k, r in enumerate(group):
            same_as[id(r)] = label(group[0].method) if k else ""
            stagger[id(r)] = (k, len(group))
    mnist = results[0].experiment == MNIST
    third = ("test accuracy", "test_acc", "init_test_metric") if mnist else (
        "test relative error Σ(f−y)²/Σy²", "test_rel_err", "init_test_metric")
    panels = [
        ("train loss (epoch mean)", "train_loss", None),
        ("test loss (held-out 20 %)", "test_loss", "init_test_loss"),
        third,
    ]
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


def _decade_label(x: float, _pos=None) -> str:
    if x == 0:
        return "0"
    e = round(math.log10(abs(x)))
    sign = "-" if x < 0 else ""
    return f"${sign}{10 ** e:g}$" if 0 <= e <= 2 else f"${sign}10^{{{e}}}$"


def _energy_yscale(ax, values: list[float]) -> float | None:
    """Log when every value is positive; else symlog, linear within ±linthresh (the decade at or below the 5th
    percentile of the values' magnitudes, at most 8 decades under the largest; shaded), ticked at 0 and at decades far
    enough apart to be read. Returns linthresh (None: log or linear)."""
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
    start = collapsed_from(r)
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
    text = (
        "Each panel: the method's modified energy (solid, its colour; what it is: the panel's title) and the true "
        "energy, the step's mini-batch loss (black, dashed), in the loss's units, against the optimizer step. y axis: "
        "logarithmic, or where an energy is ≤ 0 symmetric-logarithmic, linear inside the grey band around 0. ✕ and "
        f"the dotted line: where the run froze for good (effective step below {STEP_COLLAPSE:g} × nominal, or the "
        f"modified energy ±∞, up to the last logged step); a modified energy ±∞ or beyond {OFF_CHART:g} × the "
        "panel's largest loss is not drawn."
    )
    frozen = []
    for r in runs:
        start = collapsed_from(r)
        if start is not None:
            frozen.append(f"{label(r.method)} at step {r.energy_steps[start]:,} (modified energy then "
                          f"{_short(r.energy[-1])})")
    if frozen:
        text += " Frozen: " + "; ".join(frozen) + "."
    return text


def plot_energy(results: list[RunResult], path: Path) -> None:
    """One panel per energy method: the modified energy per logged step, beside the true energy (the loss it stands
    for); log or symlog y, freezes marked, notes under the panels, never on the data."""
    plt = pyplot()
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
    if any(collapsed_from(r) is not None for r in runs):
        handles.append(Line2D([], [], color="0.4", ls=":", marker="X", mec="k", mew=0.6, ms=7))
        texts.append(f"frozen for good (step < {STEP_COLLAPSE:g} × nominal, or energy ±∞)")
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
