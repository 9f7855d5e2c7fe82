"""A sweep's report: ``sweep.md`` (every cell's numbers, the summaries and limits of :mod:`.cells`, every point's
command), ``results.json`` (all of it, and every record) and ``sweep.png`` (:mod:`.figure`); and the short form that
docs/study.md shows (:func:`overview`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import asdict
from pathlib import Path

from ..io import write_atomic
from ..outcome import RULE
from ..tables import Stat, md_table, mean_sd, number
from .cells import Cell, Limits, Summary, cells, limits, series_label, settings_text, summaries
from .figure import figure as draw_figure
from .grid import LR_KEY, SEED_KEY, Plan, Point, SweepError, check_out, experiment_name
from .metrics import DEFAULT_METRIC, METRIC_NAMES, default_target, higher_is_better
from .records import RunRecord, rejudge
from .stability import InitialState


def fmt(x: float | None, metric: str = "") -> str:
    """``x`` as the report writes the metric ``metric`` (a percentage where higher is better), or a number."""
    return number(x, bool(metric) and higher_is_better(metric))


def fmt_stat(s: Stat | None, metric: str = "", unit: str = "", runs: int = 1) -> str:
    """``mean ± sd (n=k)`` of the metric ``metric`` (see :func:`..tables.mean_sd`)."""
    return mean_sd(s, bool(metric) and higher_is_better(metric), unit, runs)


def limits_text(lim: Limits) -> str:
    parts = []
    if lim.observed is not None:
        above = (f"; above it SGD {lim.failure} at Δt = {lim.first_failed:.3g}" if lim.first_failed is not None
                 else "; no larger SGD step was tried that failed, so the limit is at least this")
        parts.append(f"largest stable SGD step observed (every seed trained): Δt = {lim.observed:.3g}{above}")
    elif lim.first_failed is not None:
        parts.append(f"SGD trained at no step tried ({lim.failure} from Δt = {lim.first_failed:.3g})")
    else:
        parts.append(
            "no SGD run has finished in the grid (add sgd to --methods, or run its points, for the observed limit)"
        )
    if lim.hessian is not None:
        s0 = lim.states[0]
        conv = all(s["converged"] for s in lim.states)
        parts.append(
            f"2/(s·λ_max) = {fmt_stat(lim.hessian)} with λ_max = {fmt_stat(lim.lambda_max)} (s = gradient scale "
            f"{s0['gradient_scale']:g}) of the training loss's Hessian at the initial weights, on {s0['samples']} "
            "training "
            f"samples, by power iteration ({max(s['products'] for s in lim.states)} Hessian-vector products"
            + ("" if conv else "; NOT converged: read as an estimate")
            + ")"
        )
    else:
        why = "; ".join(sorted({s["error"] for s in lim.states if s.get("error")})) or "no initial state"
        parts.append(f"2/λ_max not available ({why})")
    return "; ".join(parts) + "."


def shown_path(plan: Plan, path: str | Path, in_out: bool = True) -> str:
    """``path`` as a report shows it: relative to the sweep's folder when inside it (``in_out``), else relative to the
    repository that holds the config (the folder above ``configs/``), so no report names the machine it ran on."""
    path, out = Path(path), Path(plan.out)
    if in_out and (path == out or out in path.parents):
        return path.relative_to(out).as_posix() or "."
    config = Path(plan.config)
    root = next((p.parent for p in config.parents if p.name == "configs"), config.parent)
    return Path(os.path.relpath(path, root)).as_posix() if path.is_absolute() else path.as_posix()


def portable(plan: Plan, command: str, in_out: bool = True) -> str:
    """A command line with every absolute path in it shown by :func:`shown_path` (``in_out=False``: all of them
    relative to the repository, as the sweep's own command line names its ``--out``)."""
    words = []
    for word in shlex.split(command):
        key, eq, value = word.partition("=")
        if eq and value.startswith("/"):
            word = f"{key}={shown_path(plan, value, in_out)}"
        elif word.startswith("/") and not word.startswith("/usr") and Path(word).suffix in (".yaml", ".yml", ""):
            word = shown_path(plan, word, in_out)
        words.append(word)
    return shlex.join(words)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [*md_table(header, rows).splitlines(), ""]


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
        portable(plan, plan.command, in_out=False) if plan.command else "(the sweep's command was not recorded)",
        "```",
        "",
        f"Each point is one run of the CLI, `python -m gf_lightning fit --config {shown_path(plan, plan.config)} "
        "<overrides>`, "
        f"in its own folder under `{shown_path(plan, plan.runs)}/` (paths relative to this report's folder or to the "
        "repository); the first point's command:",
        "",
        "```bash",
        example,
        "```",
        "",
        f"All {len(points)} commands are listed at the end, and each run's is in its `result.json` (`args`).",
        "",
        f"Metric: `{metric}` ({name}, on the held-out split, at each epoch's validation; {direction}). Target for the "
        "time to "
        f"target: {target_text} ({target_note}).",
        "",
        "How to read it: *final* is the metric at the last validation, *best* the best over the epochs; numbers are "
        "mean ± "
        f"standard deviation over the seeds that finished finite (n of them). A run's outcome: {RULE}. *Worse*: it "
        "trained, but its final held-out metric is worse than the untrained network's; a step *trains* when every seed "
        "trained and it is not worse. "
        "*Time to target*: seconds from the start of training (the run's first TensorBoard event) to the first "
        "validation at "
        "the target, mean over the seeds when every seed reached it; the table gives the fastest over the steps that "
        "train. "
        "*Peak training loss ÷ initial*: the largest epoch-mean training loss over the training loss at the initial "
        "weights (above 1: the loss rose before it fell, or never fell). "
        "Gradient descent's limit 2/λ_max is for full-batch steps at the initial weights; the runs take mini-batch "
        "steps.",
        "",
    ]
    if figure:
        seeds = any(len(c.runs) > 1 for c in all_cells)
        lines += [
            f"![sweep]({figure})",
            "",
            "Filled markers: trains; open: frozen; half-filled: worse than at the start; ▲ (open, red edge): unstable "
            "(drawn at its final metric); ✕ in the shaded strip at the top: diverged; dashed grey line: the largest "
            "stable SGD step observed; dotted black line: 2/λ_max at the initial weights. Methods at one Δt are drawn "
            "slightly apart on the x-axis so that none hides another."
            + (" Lines: the mean over the seeds; bands: ± one standard deviation." if seeds else ""),
            "",
        ]
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
            mine = sorted(
                (c for c in all_cells if c.method == s.method and c.series == s.series and c.panel == s.panel),
                key=lambda c: c.lr,
            )
            rows = [[f"{c.lr:.3g}", c.outcome, fmt_stat(c.final, metric, runs=len(c.runs)),
                     fmt_stat(c.best, metric, runs=len(c.runs)), fmt_stat(c.seconds, unit=" s", runs=len(c.runs)),
                     fmt_stat(c.peak, runs=len(c.runs))] for c in mine]
            lines += _table(["Δt", "outcome", f"final {name}", f"best {name}", "time to target",
                             "peak training loss ÷ initial"], rows)
    lines += ["## Commands", "", "<details><summary>every point's command</summary>", "", "```bash",
              *(portable(plan, plan.point_command(p)) for p in points), "```", "", "</details>", ""]
    return "\n".join(lines)


def report(plan: Plan, points: list[Point], records: dict[str, RunRecord], states: dict[str, InitialState], task: str,
           metric: str | None = None, target: float | None = None, with_figure: bool = True) -> dict[str, Path]:
    """Write ``sweep.md``, ``results.json`` and (``with_figure``) ``sweep.png`` into the sweep's folder; return their
    paths."""
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
        paths["figure"] = draw_figure(all_cells, lims, metric, out / "sweep.png", experiment_name(plan.config))
    paths["markdown"] = out / "sweep.md"
    write_atomic(paths["markdown"], markdown(plan, points, all_cells, sums, lims, metric, target, note,
                                              "sweep.png" if with_figure else None))
    paths["json"] = out / "results.json"
    data = {"plan": plan.to_json(), "task": task, "metric": metric, "target": target,
            "x": LR_KEY, "seed": SEED_KEY,
            "initial": [asdict(s) | {"sgd_limit": s.sgd_limit} for s in states.values()],
            "limits": [asdict(lim) for lim in lims], "summary": [asdict(s) for s in sums],
            "cells": [asdict(c) | {"status": c.status} for c in all_cells],
            "records": [asdict(records[p.name]) for p in points if p.name in records]}
    write_atomic(paths["json"], json.dumps(data, indent=1, allow_nan=True))
    return paths


def rewrite(results: Path, out: Path | None = None, with_figure: bool = True) -> dict[str, Path]:
    """Write a sweep's report again from its ``results.json`` alone (the run folders need not exist), into ``out``
    (default: the folder of ``results.json``), with every finished record judged again by the current rule
    (:mod:`..outcome`)."""
    results = Path(results)
    fields = {f.name for f in dataclasses.fields(InitialState)}
    try:
        data = json.loads(results.read_text())
        plan = dataclasses.replace(Plan.from_json(data["plan"]), out=str((out or results.parent).resolve()))
        loaded = [RunRecord(**raw) for raw in data["records"]]
        initial = [InitialState(**{k: v for k, v in raw.items() if k in fields}) for raw in data["initial"]]
        metric, target, task = data["metric"], data["target"], data["task"]
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # not JSON, truncated, or another file's
        why = f"{type(err).__name__}: {' '.join(str(err).split())[:100]}"
        raise SweepError(f"--from-results: {str(results)!r} is not a sweep's results.json ({why}); allowed: the "
                         "results.json a sweep wrote") from None
    check_out(plan.out)
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    records = {}
    for record in loaded:
        if record.exit_code == 0 and record.train_loss:
            rejudge(record)
        records[record.name] = record
    states = {json.dumps(tuple(tuple(kv) for kv in state.group)): state for state in initial}
    # the points as they ran: a record stands for the plan's point of its method and settings (today's command line for
    # it may differ, e.g. by a setting a class has gained since, and so may its name)
    by_settings = {(r.method, json.dumps(r.settings)): r for r in records.values()}
    points = []
    for point in plan.points():
        record = records.get(point.name) or by_settings.get((point.method, json.dumps(point.values)))
        points.append(point if record is None else Point(point.method, point.settings, record.name, tuple(record.args)))
    return report(plan, points, records, states, task, metric,
                  None if target == default_target(metric, task) else target, with_figure)


def overview(results: Path) -> str:
    """The short form of a sweep that docs/study.md shows: gradient descent's limit, then a row per method with its
    final metric at every Δt (the outcome in brackets where the step does not train) and the largest Δt that trains."""
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
