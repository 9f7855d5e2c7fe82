"""A sweep's report: the runs summarised over seeds (mean and spread) per method and step size, gradient descent's
stability limits, and ``sweep.md``, ``results.json`` (and ``sweep.png`` through :mod:`.sweep_figure`).

Definitions the report states with its numbers:

- a cell is one method (with the grid's other optimizer settings), one panel (the grid's settings outside the optimizer)
  and one step size ``Δt``, over the seeds; its numbers are mean ± standard deviation over the seeds whose run finished
  finite (the sample standard deviation; none with one seed);
- a cell *trains* when every seed trained (:mod:`.outcome` defines trained, frozen, unstable and diverged); it is
  *diverged* when any seed diverged, else *unstable* when any was, else *frozen* when any froze;
- *largest Δt that trains*: the largest step of a cell that trains; *best Δt*: among those, the step with the best mean
  final metric; *time to target*: seconds from the start of training (the run's first TensorBoard event) to the first
  validation at which the metric reached the target, the mean over the seeds when every seed reached it; the table gives
  the fastest over the method's steps that train;
- gradient descent's stability limit: the largest SGD step at which every seed trained (the grid's SGD runs: above it
  SGD diverged, blew up (unstable) or froze), and
  ``2 / (gradient_scale · λ_max)`` of the training loss's Hessian at the initial weights (:mod:`.stability`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .grid import LR_KEY, SEED_KEY, Plan, Point, _write_atomic, label
from .stability import InitialState
from .outcome import RULE
from .sweep import RunRecord

#: the default metric and target per task: the seed's "epochs to test loss < 1e-4" (regression) and "epochs to 90 %
#: accuracy" (MNIST); the held-out cross-entropy's target is the seed's final loss for SGD (0.25–0.35)
DEFAULT_METRIC = {"regression": "val/loss", "classification": "val/acc"}
DEFAULT_TARGET = {"val/loss": {"regression": 1e-4, "classification": 0.3}, "val/rel_err": {"regression": 0.01},
                  "val/rel_l2": {"regression": 0.1}, "val/acc": {"classification": 0.90}}
METRIC_NAMES = {"val/loss": "test loss", "val/rel_err": "test relative error", "val/rel_l2": "relative L² error",
                "val/acc": "test accuracy"}


def higher_is_better(metric: str) -> bool:
    return metric.endswith("acc")


def default_target(metric: str, task: str) -> float | None:
    return DEFAULT_TARGET.get(metric, {}).get(task)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over ``n`` seeds (``sd`` NaN for one), and the smallest and largest value."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    @classmethod
    def of(cls, xs: list[float]) -> Stat | None:
        xs = [x for x in xs if x == x]
        if not xs:
            return None
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs), min(xs), max(xs))


def _reached(record: RunRecord, metric: str, target: float | None) -> float | None:
    """Seconds to the first validation at which ``metric`` reached ``target`` (None: never)."""
    if target is None:
        return None
    better = higher_is_better(metric)
    for v, s in zip(record.metric(metric), record.val_seconds):
        if (v >= target) if better else (v <= target):
            return s
    return None


@dataclass
class Cell:
    """One method (series), one panel, one step size, over the seeds."""

    method: str
    series: list[list[str]]  #: the grid's optimizer settings beside the method and Δt
    panel: list[list[str]]
    lr: float
    runs: list[str]  #: the points' folder names
    counts: dict[str, int]  #: outcome → runs
    final: Stat | None  #: the last validation's metric, over the seeds that finished finite
    best: Stat | None  #: the best validation's metric over the epochs
    seconds: Stat | None  #: time to target, when every finite seed reached it
    peak: Stat | None = None  #: the largest epoch's training loss ÷ the training loss at the initial weights
    missing: int = 0  #: points of the plan with no outcome yet
    initial: float | None = None  #: the metric at the initial weights (the first seed's)
    higher_better: bool = False

    @property
    def worse(self) -> bool:
        """Every seed learned, but the final metric (their mean) is worse than the untrained network's: it trained on
        the training set and lost on the held-out one (a blow-up it did not recover from)."""
        if self.final is None or self.initial is None:
            return False
        return self.final.mean < self.initial if self.higher_better else self.final.mean > self.initial

    @property
    def status(self) -> str:
        c = self.counts
        if c.get("diverged"):
            return "diverged"
        if not (c.get("trained") or c.get("frozen") or c.get("unstable")):
            return "error" if c.get("error") else "missing"
        if c.get("unstable"):
            return "unstable"
        if c.get("frozen"):
            return "frozen"
        if self.worse:
            return "worse"
        return "trained" if not c.get("error") and not self.missing else "partial"

    @property
    def outcome(self) -> str:
        n = sum(self.counts.values()) + self.missing
        parts = [f"{k} {v}/{n}" if n > 1 else k for k, v in self.counts.items() if v]
        text = ", ".join(parts + ([f"not run {self.missing}/{n}"] if self.missing else []))
        return f"{text}; worse than at the start" if self.status == "worse" else text


def cells(points: list[Point], records: dict[str, RunRecord], metric: str, target: float | None,
          initial: dict[str, float] | None = None) -> list[Cell]:
    """The plan's points grouped over seeds, in the plan's order; ``initial`` is each point's metric at its initial
    weights (by point name)."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.series(), p.panel(), p.lr), []).append(p)
    best_of = max if higher_is_better(metric) else min
    out = []
    for (series, panel, lr), pts in groups.items():
        recs = [records[p.name] for p in pts if p.name in records]
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.status] = counts.get(r.status, 0) + 1
        finite = [r for r in recs if r.status in ("trained", "frozen", "unstable") and r.metric(metric)]
        times = [_reached(r, metric, target) for r in finite]
        out.append(Cell(
            method=series[0], series=[list(kv) for kv in series[1]], panel=[list(kv) for kv in panel], lr=lr,
            runs=[p.name for p in pts], counts=counts,
            final=Stat.of([r.metric(metric)[-1] for r in finite]),
            best=Stat.of([best_of(r.metric(metric)) for r in finite]),
            seconds=Stat.of(times) if times and all(t is not None for t in times) else None,  # type: ignore[arg-type]
            peak=Stat.of([max(r.train_loss) / r.init_train_loss for r in recs
                          if r.train_loss and r.init_train_loss > 0 and math.isfinite(max(r.train_loss))]),
            missing=len(pts) - len(recs),
            initial=(initial or {}).get(pts[0].name), higher_better=higher_is_better(metric),
        ))
    return out


@dataclass
class Summary:
    """One method (series) in one panel, over its step sizes."""

    method: str
    series: list[list[str]]
    panel: list[list[str]]
    tried: list[float]
    largest_trained: float | None
    best_lr: float | None
    final: Stat | None  #: at the best Δt
    best: Stat | None  #: at the best Δt
    fastest: Stat | None  #: the shortest mean time to target over the steps that train
    fastest_lr: float | None


def summaries(all_cells: list[Cell], metric: str) -> list[Summary]:
    groups: dict[str, list[Cell]] = {}
    for c in all_cells:
        groups.setdefault(json.dumps([c.method, c.series, c.panel]), []).append(c)
    sign = -1.0 if higher_is_better(metric) else 1.0
    out = []
    for cs in groups.values():
        cs = sorted(cs, key=lambda c: c.lr)
        trains = [c for c in cs if c.status == "trained"]
        ranked = [c for c in trains if c.final is not None]
        best = min(ranked, key=lambda c: sign * c.final.mean, default=None)  # type: ignore[union-attr]
        timed = [c for c in trains if c.seconds is not None]
        fastest = min(timed, key=lambda c: c.seconds.mean, default=None)  # type: ignore[union-attr]
        out.append(Summary(cs[0].method, cs[0].series, cs[0].panel, [c.lr for c in cs],
                           max((c.lr for c in trains), default=None), best.lr if best else None,
                           best.final if best else None, best.best if best else None,
                           fastest.seconds if fastest else None, fastest.lr if fastest else None))
    return out


@dataclass
class Limits:
    """Gradient descent's stability limit in one panel: observed in the grid's SGD runs, and from the Hessian."""

    panel: list[list[str]]
    observed: float | None = None  #: the largest SGD step at which every seed trained
    first_failed: float | None = None  #: the smallest SGD step above it at which a seed did not train
    failure: str = ""  #: what happened there: diverged, unstable, frozen or worse
    hessian: Stat | None = None  #: 2/(gradient_scale·λ_max) over the seeds
    lambda_max: Stat | None = None
    states: list[dict[str, Any]] = field(default_factory=list)


def limits(all_cells: list[Cell], points: list[Point], states: dict[str, InitialState]) -> list[Limits]:
    panels: dict[str, Limits] = {}
    for p in points:
        panels.setdefault(json.dumps(p.panel()), Limits([list(kv) for kv in p.panel()]))
    for key, lim in panels.items():
        sgd = [c for c in all_cells if c.method == "sgd" and not c.series and json.dumps(c.panel) == key
               and c.status not in ("missing", "error")]
        lim.observed = max((c.lr for c in sgd if c.status == "trained"), default=None)
        above = [c for c in sgd if c.status in ("diverged", "unstable", "frozen", "worse")
                 and (lim.observed is None or c.lr > lim.observed)]
        first = min(above, key=lambda c: c.lr, default=None)
        lim.first_failed, lim.failure = (first.lr, first.status) if first else (None, "")
        group_keys = {json.dumps(p.group()) for p in points if json.dumps(p.panel()) == key}
        found = [states[g] for g in sorted(group_keys) if g in states]
        lim.states = [asdict(s) for s in found]
        lim.hessian = Stat.of([s.sgd_limit for s in found if math.isfinite(s.sgd_limit)])
        lim.lambda_max = Stat.of([s.lambda_max for s in found])
    return list(panels.values())


# -- formatting ----------------------------------------------------------------------------------------------------------------
def fmt(x: float | None, metric: str = "") -> str:
    if x is None or x != x:
        return "—"
    if metric and higher_is_better(metric):
        return f"{100 * x:.2f} %"
    return f"{x:.3g}"


def fmt_stat(s: Stat | None, metric: str = "", unit: str = "", runs: int = 1) -> str:
    """``mean ± sd (n=k)``; a single value with ``(n=1)`` when ``runs`` (the cell's seeds) were more."""
    if s is None:
        return "—"
    text = fmt(s.mean, metric) + unit
    if s.n > 1:
        spread = fmt(s.sd, metric) if metric and higher_is_better(metric) else f"{s.sd:.2g}"
        text += f" ± {spread}{unit} (n={s.n})"
    elif runs > 1:
        text += " (n=1)"
    return text


def settings_text(kvs: list[list[str]]) -> str:
    return ", ".join(f"{k.rpartition('.')[2] if k != SEED_KEY else 'seed'}={v}" for k, v in kvs)


def series_label(method: str, series: list[list[str]]) -> str:
    return label(method) + (f" ({settings_text(series)})" if series else "")


def limits_text(lim: Limits) -> str:
    parts = []
    if lim.observed is not None:
        above = (f"; above it SGD {lim.failure} at Δt = {lim.first_failed:.3g}" if lim.first_failed is not None
                 else "; no larger SGD step was tried that failed, so the limit is at least this")
        parts.append(f"largest stable SGD step observed (every seed trained): Δt = {lim.observed:.3g}{above}")
    elif lim.first_failed is not None:
        parts.append(f"SGD trained at no step tried ({lim.failure} from Δt = {lim.first_failed:.3g})")
    else:
        parts.append("no SGD run has finished in the grid (add sgd to --methods, or run its points, for the observed limit)")
    if lim.hessian is not None:
        s0 = lim.states[0]
        conv = all(s["converged"] for s in lim.states)
        parts.append(
            f"2/(s·λ_max) = {fmt_stat(lim.hessian)} with λ_max = {fmt_stat(lim.lambda_max)} (s = gradient scale "
            f"{s0['gradient_scale']:g}) of the training loss's Hessian at the initial weights, on {s0['samples']} training "
            f"samples, by power iteration ({max(s['products'] for s in lim.states)} Hessian-vector products"
            + ("" if conv else "; NOT converged: read as an estimate") + ")"
        )
    else:
        why = "; ".join(sorted({s["error"] for s in lim.states if s.get("error")})) or "no initial state"
        parts.append(f"2/λ_max not available ({why})")
    return "; ".join(parts) + "."


def experiment_name(config: str | Path) -> str:
    """The config's ``experiment:`` (what its runs are filed under in TensorBoard), else the file's stem."""
    import yaml

    try:
        name = (yaml.safe_load(Path(config).read_text()) or {}).get("experiment")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else Path(config).stem


def shown_path(plan: Plan, path: str | Path) -> str:
    """``path`` as a report shows it: relative to the sweep's folder when inside it, else relative to the repository that
    holds the config (the folder above ``configs/``), so no report names the machine it ran on."""
    path, out = Path(path), Path(plan.out)
    if path == out or out in path.parents:
        return path.relative_to(out).as_posix() or "."
    config = Path(plan.config)
    root = next((p.parent for p in config.parents if p.name == "configs"), config.parent)
    return Path(os.path.relpath(path, root)).as_posix() if path.is_absolute() else path.as_posix()


def portable(plan: Plan, command: str) -> str:
    """A command line with every absolute path in it shown by :func:`shown_path`."""
    words = []
    for word in shlex.split(command):
        key, eq, value = word.partition("=")
        if eq and value.startswith("/"):
            word = f"{key}={shown_path(plan, value)}"
        elif word.startswith("/") and not word.startswith("/usr") and Path(word).suffix in (".yaml", ".yml", ""):
            word = shown_path(plan, word)
        words.append(word)
    return shlex.join(words)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def markdown(plan: Plan, points: list[Point], all_cells: list[Cell], sums: list[Summary], lims: list[Limits],
             metric: str, target: float | None, target_note: str, figure: str | None) -> str:
    name = METRIC_NAMES.get(metric, metric)
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    target_text = (f"{'≥' if higher_is_better(metric) else '≤'} {fmt(target, metric)}" if target is not None
                   else "none (give --target)")
    example = portable(plan, plan.point_command(points[0])) if points else ""
    lines = [
        f"# Sweep: {experiment_name(plan.config)} ({shown_path(plan, plan.config)})",
        "",
        "Produced by:",
        "",
        "```bash",
        plan.command or "(the sweep's command was not recorded)",
        "```",
        "",
        f"Each point is one run of the CLI, `python -m gf_lightning fit --config {shown_path(plan, plan.config)} <overrides>`, "
        f"in its own folder under `{shown_path(plan, plan.runs)}/` (paths relative to this report's folder or to the "
        "repository); the first point's command:",
        "",
        "```bash",
        example,
        "```",
        "",
        f"All {len(points)} commands are listed at the end, and each run's is in its `result.json` (`args`).",
        "",
        f"Metric: `{metric}` ({name}, on the held-out split, at each epoch's validation; {direction}). Target for the time to "
        f"target: {target_text} ({target_note}).",
        "",
        "How to read it: *final* is the metric at the last validation, *best* the best over the epochs; numbers are mean ± "
        f"standard deviation over the seeds that finished finite (n of them). A run's outcome: {RULE}. *Worse*: it "
        "trained, but its final held-out metric is worse than the untrained network's; a step *trains* when every seed "
        "trained and it is not worse. "
        "*Time to target*: seconds from the start of training (the run's first TensorBoard event) to the first validation at "
        "the target, mean over the seeds when every seed reached it; the table gives the fastest over the steps that train. "
        "*Peak training loss ÷ initial*: the largest epoch-mean training loss over the training loss at the initial "
        "weights (above 1: the loss rose before it fell, or never fell). "
        "Gradient descent's limit 2/λ_max is for full-batch steps at the initial weights; the runs take mini-batch steps.",
        "",
    ]
    if figure:
        seeds = any(len(c.runs) > 1 for c in all_cells)
        lines += [f"![sweep]({figure})", "",
                  "Filled markers: trains; open: frozen; half-filled: worse than at the start; ▲ (open, red edge): unstable "
                  "(drawn at its final metric); ✕ in the shaded strip at the top: diverged; dashed grey line: the largest "
                  "stable SGD step observed; dotted black line: 2/λ_max at the initial weights. Methods at one Δt are drawn "
                  "slightly apart on the x-axis so that none hides another."
                  + (" Lines: the mean over the seeds; bands: ± one standard deviation." if seeds else ""), ""]
    for lim in lims:
        panel_sums = [s for s in sums if s.panel == lim.panel]
        title = settings_text(lim.panel) or "Results"
        lines += [f"## {title}", "", f"Gradient descent's stability limit: {limits_text(lim)}", ""]
        rows = [[series_label(s.method, s.series), ", ".join(f"{x:.3g}" for x in s.tried), fmt(s.largest_trained),
                 fmt(s.best_lr), fmt_stat(s.final, metric), fmt_stat(s.best, metric),
                 (fmt_stat(s.fastest, unit=" s") + f" (Δt = {s.fastest_lr:.3g})") if s.fastest else "—"]
                for s in panel_sums]
        lines += _table(["method", "Δt tried", "largest Δt that trains", "best Δt", f"final {name} at best Δt",
                         f"best {name} there", "time to target"], rows)
        for s in panel_sums:
            lines += [f"### {series_label(s.method, s.series)}" + (f" — {title}" if lim.panel else ""), ""]
            mine = sorted((c for c in all_cells if c.method == s.method and c.series == s.series and c.panel == s.panel),
                          key=lambda c: c.lr)
            rows = [[f"{c.lr:.3g}", c.outcome, fmt_stat(c.final, metric, runs=len(c.runs)),
                     fmt_stat(c.best, metric, runs=len(c.runs)), fmt_stat(c.seconds, unit=" s", runs=len(c.runs)),
                     fmt_stat(c.peak, runs=len(c.runs))] for c in mine]
            lines += _table(["Δt", "outcome", f"final {name}", f"best {name}", "time to target",
                             "peak training loss ÷ initial"], rows)
    lines += ["## Commands", "", "<details><summary>every point's command</summary>", "", "```bash",
              *(portable(plan, plan.point_command(p)) for p in points), "```", "", "</details>", ""]
    return "\n".join(lines)


# -- writing it all ------------------------------------------------------------------------------------------------------------
def report(plan: Plan, points: list[Point], records: dict[str, RunRecord], states: dict[str, InitialState], task: str,
           metric: str | None = None, target: float | None = None, with_figure: bool = True) -> dict[str, Path]:
    """Write ``sweep.md``, ``results.json`` and (``with_figure``) ``sweep.png`` into the sweep's folder; return their paths."""
    metric = metric or DEFAULT_METRIC[task]
    if target is None:
        target = default_target(metric, task)
        note = (f"the default for {metric} in {task}; --target changes it" if target is not None
                else f"no default for {metric} in {task}")
    else:
        note = "--target"
    initial = {p.name: states[json.dumps(p.group())].val.get(metric) for p in points if json.dumps(p.group()) in states}
    all_cells = cells(points, records, metric, target, initial)
    sums = summaries(all_cells, metric)
    lims = limits(all_cells, points, states)
    out = Path(plan.out)
    paths = {}
    if with_figure:
        from .sweep_figure import figure

        paths["figure"] = figure(all_cells, lims, metric, out / "sweep.png", experiment_name(plan.config))
    paths["markdown"] = out / "sweep.md"
    _write_atomic(paths["markdown"], markdown(plan, points, all_cells, sums, lims, metric, target, note,
                                              "sweep.png" if with_figure else None))
    paths["json"] = out / "results.json"
    data = {"plan": plan.to_json(), "task": task, "metric": metric, "target": target,
            "x": LR_KEY, "seed": SEED_KEY,
            "initial": [asdict(s) | {"sgd_limit": s.sgd_limit} for s in states.values()],
            "limits": [asdict(lim) for lim in lims], "summary": [asdict(s) for s in sums],
            "cells": [asdict(c) | {"status": c.status} for c in all_cells],
            "records": [asdict(records[p.name]) for p in points if p.name in records]}
    _write_atomic(paths["json"], json.dumps(data, indent=1, allow_nan=True))
    return paths


def rewrite(results: Path, out: Path | None = None, with_figure: bool = True) -> dict[str, Path]:
    """Write a sweep's report again from its ``results.json`` alone (the run folders need not exist), into ``out`` (default:
    the folder of ``results.json``), with every finished record judged again by the current rule (:mod:`.outcome`)."""
    from .sweep import rejudge

    results = Path(results)
    data = json.loads(results.read_text())
    plan = dataclasses.replace(Plan.from_json(data["plan"]), out=str((out or results.parent).resolve()))
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    records = {}
    for raw in data["records"]:
        record = RunRecord(**raw)
        if record.exit_code == 0 and record.train_loss:
            rejudge(record)
        records[record.name] = record
    fields = {f.name for f in dataclasses.fields(InitialState)}
    states = {}
    for raw in data["initial"]:
        state = InitialState(**{k: v for k, v in raw.items() if k in fields})
        states[json.dumps(tuple(tuple(kv) for kv in state.group))] = state
    # the points as they ran: a record stands for the plan's point of its method and settings (today's command line for
    # it may differ, e.g. by a setting a class has gained since, and so may its name)
    by_settings = {(r.method, json.dumps(r.settings)): r for r in records.values()}
    points = []
    for point in plan.points():
        record = records.get(point.name) or by_settings.get((point.method, json.dumps(point.values)))
        points.append(point if record is None else Point(point.method, point.settings, record.name, tuple(record.args)))
    metric, target = data["metric"], data["target"]
    return report(plan, points, records, states, data["task"], metric,
                  None if target == default_target(metric, data["task"]) else target, with_figure)


def overview(results: Path) -> str:
    """The short form of a sweep that docs/study.md shows: gradient descent's limit, then a row per method with its final
    metric at every Δt (the outcome in brackets where the step does not train) and the largest Δt that trains."""
    data = json.loads(Path(results).read_text())
    metric = data["metric"]
    lines = []
    for lim in data["limits"]:
        observed = fmt(lim["observed"]) if lim["observed"] is not None else "—"
        failed = f" ({lim['failure']} at {fmt(lim['first_failed'])})" if lim["first_failed"] is not None else ""
        hessian = fmt((lim.get("hessian") or {}).get("mean"))
        initial = next((c["initial"] for c in data["cells"] if c["panel"] == lim["panel"] and c["initial"] is not None),
                       None)
        panel = settings_text(lim["panel"])
        lines += [f"{panel + ': ' if panel else ''}SGD's limit: observed {observed}{failed}; 2/(s·λ_max) = {hessian}. "
                  f"Metric `{metric}`; untrained network: {fmt(initial, metric)}.", ""]
        mine = [c for c in data["cells"] if c["panel"] == lim["panel"]]
        steps = sorted({c["lr"] for c in mine})
        rows = []
        for s in (s for s in data["summary"] if s["panel"] == lim["panel"]):
            by_lr = {c["lr"]: c for c in mine if c["method"] == s["method"] and c["series"] == s["series"]}
            cols = [series_label(s["method"], s["series"])]
            for lr in steps:
                c = by_lr.get(lr)
                if c is None:
                    cols.append("—")
                elif c["status"] == "diverged" or c["final"] is None:
                    cols.append(c["status"] if c["status"] in ("diverged", "missing", "error") else "—")
                else:
                    tag = "" if c["status"] == "trained" else f" ({c['status']})"
                    cols.append(fmt(c["final"]["mean"], metric) + tag)
            cols.append(fmt(s["largest_trained"]))
            rows.append(cols)
        lines += _table(["method", *(f"Δt = {lr:g}" for lr in steps), "largest Δt that trains"], rows)
    return "\n".join(lines)
