"""``sweep.png``: the final and the best held-out metric against the step size Δt, one line per method, one column per
panel (the grid's settings outside the optimizer), with gradient descent's stability limits.

A filled marker is a step that trains, an open one a step where a run froze, a ✕ at the top edge a step where a run
diverged; the line joins the means over the seeds and the band spans ± one standard deviation (on a logarithmic axis its
lower edge stops at the smallest seed's value when the mean minus the deviation is not positive). The dashed grey line
is the largest stable SGD step observed, the dotted black one ``2/λ_max`` at the initial weights.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..methods import COLORS  # (a method without one takes matplotlib's cycle)
from ..outcome import UNSTABLE_RISE
from ..plotting import MARKERS, pyplot, save_atomic
from .cells import Cell, Limits, series_label, settings_text
from .metrics import METRIC_NAMES, higher_is_better

#: series at one Δt are drawn side by side, ``10**(DODGE·k)`` apart on the x-axis, so that no marker hides another
DODGE = 0.012
#: the top strip of each panel, above the data, where diverged steps are marked (axes fraction)
STRIP = 0.9
DIVERGED_Y = 0.955


def _all_positive(ax) -> bool:
    ys = [y for line in ax.get_lines() if line.get_transform() == ax.transData for y in line.get_ydata()]
    ys += [y for coll in ax.collections for path in coll.get_paths() for y in path.vertices[:, 1]]
    return all(y > 0 for y in ys)


def _headroom(ax, log: bool) -> None:
    """Scale y (logarithmic when ``log``) so that the data fill the panel below :data:`STRIP`, and shade the strip
    above, where the diverged steps are marked."""
    from matplotlib.patches import Rectangle

    if log:
        ax.set_yscale("log")
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    if log:
        hi = lo * (hi / lo) ** (1 / STRIP)
    else:
        hi = lo + (hi - lo) / STRIP
    ax.set_ylim(lo, hi)
    ax.add_patch(Rectangle((0, STRIP), 1, 1 - STRIP, transform=ax.transAxes, color="0.93", lw=0, zorder=0))
    ax.text(0.01, (1 + STRIP) / 2, "diverged", transform=ax.transAxes, fontsize=7, color="0.4", va="center")


def figure(cells: list[Cell], lims: list[Limits], metric: str, path: Path, title: str = "") -> Path:
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    panels = [lim.panel for lim in lims]
    series = list(dict.fromkeys((c.method, repr(c.series)) for c in cells))
    spare = iter(f"C{i}" for i in itertools.count())
    style = {}
    for i, (method, key) in enumerate(series):
        color = COLORS.get(method) if not any(s[0] == method and s[1] != key for s in series[:i]) else None
        style[(method, key)] = (color or next(spare), MARKERS[i % len(MARKERS)])
    log_y = not higher_is_better(metric)
    fig, axes = plt.subplots(2, len(panels), figsize=(6.2 * len(panels) + 2.6, 8.4), squeeze=False, sharex=True)
    name = METRIC_NAMES.get(metric, metric)
    handles: dict[str, object] = {}
    banded = False
    for col, (panel, lim) in enumerate(zip(panels, lims)):
        for row, which in enumerate(("final", "best")):
            ax = axes[row][col]
            for i, (method, key) in enumerate(series):
                mine = sorted((c for c in cells if c.method == method and repr(c.series) == key and c.panel == panel),
                              key=lambda c: c.lr)
                if not mine:
                    continue
                color, marker = style[(method, key)]
                ok = [c for c in mine if c.status in ("trained", "frozen", "worse", "partial", "unstable")
                      and getattr(c, which) is not None]
                dodge = 10 ** (DODGE * (i - (len(series) - 1) / 2))  # series side by side, none hidden under another
                xs = [c.lr * dodge for c in ok]
                ms = [getattr(c, which).mean for c in ok]
                lbl = series_label(method, mine[0].series)
                line = ax.plot(xs, ms, "-", color=color, lw=1.4, alpha=0.9)[0] if ok else None
                filled = [(x, m) for c, x, m in zip(ok, xs, ms) if c.status not in ("frozen", "worse", "unstable")]
                unstable = [(x, m) for c, x, m in zip(ok, xs, ms) if c.status == "unstable"]
                if unstable:
                    ax.plot(*zip(*unstable), linestyle="none", marker="^", ms=9, markerfacecolor="none",
                            markeredgecolor="red", markeredgewidth=1.4)
                    ax.plot(*zip(*unstable), linestyle="none", marker=marker, color=color, ms=4)
                hollow = [(x, m) for c, x, m in zip(ok, xs, ms) if c.status == "frozen"]
                half = [(x, m) for c, x, m in zip(ok, xs, ms) if c.status == "worse"]
                if half:
                    ax.plot(*zip(*half), linestyle="none", marker=marker, color=color, ms=7, fillstyle="bottom",
                            markerfacecoloralt="white")
                if filled:
                    ax.plot(*zip(*filled), linestyle="none", marker=marker, color=color, ms=6)
                if hollow:
                    ax.plot(*zip(*hollow), linestyle="none", marker=marker, color=color, ms=7, markerfacecolor="none")
                band = [(c.lr * dodge, getattr(c, which)) for c in ok if getattr(c, which).n > 1]
                banded = banded or bool(band)
                if band:
                    lo = [s.mean - s.sd if not (log_y and s.mean - s.sd <= 0) else s.lo for _, s in band]
                    ax.fill_between([x for x, _ in band], lo, [s.mean + s.sd for _, s in band], color=color, alpha=0.15,
                                    lw=0)
                diverged = [c.lr * dodge for c in mine if c.status == "diverged"]
                if diverged:
                    ax.plot(diverged, [DIVERGED_Y - 0.022 * (i % 3)] * len(diverged), linestyle="none", marker="X",
                            color=color, ms=8, transform=ax.get_xaxis_transform(), clip_on=False)
                if line is not None or diverged:
                    handles.setdefault(lbl, Line2D([], [], color=color, marker=marker, lw=1.4))
            _headroom(ax, log_y and _all_positive(ax))
            if lim.observed is not None:
                ax.axvline(lim.observed, color="0.45", ls="--", lw=1.2)
            if lim.hessian is not None:
                ax.axvline(lim.hessian.mean, color="black", ls=":", lw=1.4)
            ax.set_xscale("log")
            if not log_y:
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.grid(True, which="major", alpha=0.3)
            ax.set_ylabel(f"{which} {name}" + (" (over the epochs)" if which == "best" else ""))
            if row == 0:
                ax.set_title(" — ".join(t for t in (title, settings_text(panel)) if t), fontsize=10)
            if row == 1:
                ax.set_xlabel("Δt (lr)")
    key = [Line2D([], [], color="0.3", marker="o", ls="none", label="trains"),
           Line2D([], [], color="0.3", marker="o", ls="none", markerfacecolor="none", label="frozen (did not learn)"),
           Line2D([], [], color="0.3", marker="o", ls="none", fillstyle="bottom", markerfacecoloralt="white",
                  label="worse than at the start (held out)"),
           Line2D([], [], color="red", marker="^", ls="none", markerfacecolor="none",
                  label=f"unstable (loss rose > {UNSTABLE_RISE:g}× the start)"),
           Line2D([], [], color="0.3", marker="X", ls="none", label="diverged (NaN/Inf)"),
           Line2D([], [], color="0.45", ls="--", label="largest stable SGD step observed"),
           Line2D([], [], color="black", ls=":", label="2/λ_max at the initial weights")]
    if banded:
        key.insert(3, Patch(color="0.3", alpha=0.15, label="± 1 s.d. over the seeds"))
    legend = [*(h for h in handles.values()), *key]
    for h, lbl in zip(handles.values(), handles):
        h.set_label(lbl)
    fig.legend(handles=legend, loc="center right", fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (6.2 * len(panels) + 2.6), 1))
    return save_atomic(fig, path, dpi=110)
