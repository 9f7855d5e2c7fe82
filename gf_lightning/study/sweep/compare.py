"""Several sweeps side by side: one row per sweep — typically one method at its own config, each swept over the same
settings, e.g. ``--grid model.net.init_args.init=fan_in,public --seeds 0 1 2`` — and one column per panel of those
sweeps (each initialisation), every entry the mean ± standard deviation over the seeds of the final and the best
held-out metric, with each panel's ranking; as a markdown table and a figure with error bars.

It reads only what each sweep wrote (``results.json``: its cells, already summarised over the seeds by
:mod:`.report`), so a sweep gathered from a SLURM job array compares like one run here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..plotting import pyplot
from ..tables import Stat, mean_sd
from .grid import SweepError
from .metrics import METRIC_NAMES, higher_is_better

#: colours of the panels in the figure, in order
PANEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


@dataclass(frozen=True)
class Entry:
    """One sweep's cell: its row (the sweep's name), its panel, its step size, and what the seeds reached."""

    row: str
    panel: str  #: the panel's settings that vary in its sweep, as ``key=value`` (last part of the key): ``init=public``
    lr: float
    status: str  #: the cell's status: trained, frozen, worse, diverged, …
    outcome: str
    final: Stat | None
    best: Stat | None


def _panel_text(panel: list[list[str]], varying: set[str]) -> str:
    """``key=value`` of the panel's settings that vary across the sweep (the last part of each key)."""
    return " ".join(f"{key.rpartition('.')[2]}={value}" for key, value in panel if key in varying) or "all"


def _stat(data: dict | None) -> Stat | None:
    return Stat(**data) if data else None


def load(folder: str | Path) -> tuple[list[Entry], str]:
    """The cells of the sweep in ``folder`` (its ``results.json``) as entries named after the sweep's folder, and its
    metric. A folder without results raises :class:`SweepError`."""
    folder = Path(folder)
    path = folder / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"{folder}: no sweep results to compare ({path}: {err.__class__.__name__}); allowed: a folder "
                         "that a sweep has reported into") from None
    row = folder.name
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or "metric" not in data:
        raise SweepError(f"{folder}: {path} is not a sweep's report (no cells and metric); allowed: a folder that "
                         "a sweep has reported into")
    values: dict[str, set[str]] = {}
    for cell in data["cells"]:
        for key, value in cell["panel"]:
            values.setdefault(key, set()).add(value)
    varying = {key for key, seen in values.items() if len(seen) > 1}
    entries = []
    for cell in data["cells"]:
        n = sum(cell["counts"].values()) + cell.get("missing", 0)
        counts = ", ".join(f"{k} {v}/{n}" for k, v in cell["counts"].items() if v)
        entries.append(Entry(row, _panel_text(cell["panel"], varying), float(cell["lr"]), cell["status"], counts,
                             _stat(cell["final"]), _stat(cell["best"])))
    return entries, data["metric"]


def _fmt(stat: Stat | None, metric: str) -> str:
    return mean_sd(stat, higher_is_better(metric), count=False)


def ranks(entries: list[Entry], metric: str) -> dict[tuple[str, str], int]:
    """Each entry's place in its panel by its final mean (1 = best), over the entries that trained."""
    sign = -1.0 if higher_is_better(metric) else 1.0
    out: dict[tuple[str, str], int] = {}
    for panel in dict.fromkeys(e.panel for e in entries):
        ranked = sorted((e for e in entries if e.panel == panel and e.final is not None and e.status == "trained"),
                        key=lambda e: sign * e.final.mean)  # type: ignore[union-attr]
        out.update({(e.row, panel): i + 1 for i, e in enumerate(ranked)})
    return out


def table(entries: list[Entry], metric: str) -> str:
    """Markdown: a row per sweep (and step size, when a sweep has several), per panel the final and best metric over
    the seeds, the rank, and the outcome; with two panels, the second's final mean against the first's where both are
    over every seed (no run diverged, failed or is missing)."""
    panels = list(dict.fromkeys(e.panel for e in entries))
    rows = list(dict.fromkeys((e.row, e.lr) for e in entries))
    several_lr = len({lr for _, lr in rows}) > len({r for r, _ in rows})
    place = ranks(entries, metric)
    by = {(e.row, e.lr, e.panel): e for e in entries}
    pct = higher_is_better(metric)
    head = ["method", *(["Δt"] if several_lr else [])]
    for p in panels:
        head += [f"{p}: final", f"{p}: best", f"{p}: rank", f"{p}: outcome"]
    if len(panels) == 2:
        head.append(f"{panels[1]} − {panels[0]} (points)" if pct else f"{panels[1]} ÷ {panels[0]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, lr in rows:
        cells = [row, *([f"{lr:g}"] if several_lr else [])]
        for p in panels:
            e = by.get((row, lr, p))
            cells += ["—"] * 4 if e is None else [_fmt(e.final, metric), _fmt(e.best, metric),
                                                    str(place.get((row, p), "—")), e.outcome]
        if len(panels) == 2:
            a, b = (by.get((row, lr, p)) for p in panels)
            incomplete = ("diverged", "error", "missing", "partial")  # a mean over part of the seeds: no comparison
            if a is None or b is None or a.final is None or b.final is None or {a.status, b.status} & set(incomplete):
                cells.append("—")
            elif pct:
                cells.append(f"{100 * (b.final.mean - a.final.mean):+.2f}")
            else:
                cells.append(f"{b.final.mean / a.final.mean:.3g}×" if a.final.mean else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(entries: list[Entry], metric: str, path: str | Path, title: str = "") -> Path:
    """Bars of the final metric's mean per sweep, one colour per panel, ± one standard deviation, the seeds' values as
    dots; a sweep that did not train in a panel is marked by its status instead of a bar, or, where it finished finite,
    by a hatched bar with its status written at the bar's foot."""
    plt = pyplot()
    panels = list(dict.fromkeys(e.panel for e in entries))
    rows = list(dict.fromkeys((e.row, e.lr) for e in entries))
    by = {(e.row, e.lr, e.panel): e for e in entries}
    width = 0.8 / len(panels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) * len(panels) + 2.5), 4.8))
    scale = 100.0 if higher_is_better(metric) else 1.0
    for j, panel in enumerate(panels):
        color = PANEL_COLORS[j % len(PANEL_COLORS)]
        for i, key in enumerate(rows):
            e = by.get((*key, panel))
            x = i + (j - (len(panels) - 1) / 2) * width
            if e is None:
                continue
            if e.final is None:
                ax.text(x, 0.5, e.status, rotation=90, ha="center", va="center", fontsize=7, color=color,
                        transform=ax.get_xaxis_transform())
                continue
            sd = 0.0 if math.isnan(e.final.sd) else e.final.sd
            ax.bar(x, scale * e.final.mean, width, color=color, alpha=0.75 if e.status == "trained" else 0.3,
                   yerr=scale * sd, capsize=3, label=panel if i == 0 else None, edgecolor=color,
                   hatch=None if e.status == "trained" else "//")
            ax.plot([x, x], [scale * e.final.lo, scale * e.final.hi], ls="none", marker="_", color="black", ms=8)
            if e.status != "trained":  # at the foot of the bar, clear of its error bar and ticks
                ax.text(x, 0.02, e.status, rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row if len({r for r, _ in rows}) == len(rows) else f"{row}\nΔt={lr:g}" for row, lr in rows],
                       rotation=30, ha="right")
    name = METRIC_NAMES.get(metric, metric)
    ax.set_ylabel(f"final {name}" + (" (%)" if scale == 100.0 else ""))
    if not higher_is_better(metric):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
    ax.set_title((title + ": " if title else "") + "mean ± s.d. over seeds (bars), smallest and largest seed (ticks)",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(folders: list[str | Path], out: str | Path, title: str = "", command: str = "") -> dict[str, Path]:
    """Write ``compare.md`` and ``compare.png`` for the sweeps in ``folders`` into ``out``; all must report one
    metric."""
    entries: list[Entry] = []
    metrics = set()
    for folder in folders:
        mine, metric = load(folder)
        entries += mine
        metrics.add(metric)
    if len(metrics) != 1:
        raise SweepError(f"the sweeps report different metrics ({', '.join(sorted(metrics))}); allowed: one metric "
                         "(report them again with --report-only --metric …)")
    (metric,) = metrics
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = figure(entries, metric, out / "compare.png", title)
    name = METRIC_NAMES.get(metric, metric)
    text = [f"# {title or 'Sweeps compared'}", ""]
    if command:
        text += ["Produced by:", "", "```bash", command, "```", ""]
    text += [
        f"Metric: `{metric}` ({name}, held-out, {'higher' if higher_is_better(metric) else 'lower'} is better): "
        "mean ± standard deviation over the seeds that finished finite, at the last validation (*final*) and the "
        "best over the epochs (*best*); *rank* orders the rows that trained in each column by the final mean. Each "
        "row is one sweep (its folder's name), read from its `results.json`.",
        "",
        f"![compare]({png.name})",
        "",
        table(entries, metric),
        "",
    ]
    md = out / "compare.md"
    md.write_text("\n".join(text))
    return {"markdown": md, "figure": png}
