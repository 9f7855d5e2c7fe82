"""A whole sweep: plan, check, run (here, or written for SLURM), gather and report (:func:`execute`), with the initial
state of every group of points (``<out>/initial.json``).

A sweep holds ``<out>/sweep.lock`` while it runs (:mod:`.folder_lock`); the runs are :mod:`.runner`'s processes or
:mod:`.slurm`'s array tasks, read back by :mod:`.records` and reported by :mod:`.report`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..io import json_text, write_atomic
from ..methods import label
from .folder_lock import FolderLock
from .grid import Plan, Point, SweepError
from .records import DONE, RunRecord, collect, done, point_folder
from .report import report
from .runner import ProcessRunner
from .slurm import REPORT_COMMAND, write_slurm
from .stability import InitialState, build, initial_state, logged_tags


def describe(point: Point) -> str:
    return f"{label(point.method)} " + " ".join(f"{k}={v}" for k, v in point.settings)


def _state_key(plan: Plan, group: tuple, samples: int, iters: int, hessian: bool) -> str:
    return json.dumps([plan.config, [list(kv) for kv in group], plan.common, samples, iters, hessian])


def initial_states(plan: Plan, points: list[Point], samples: int = 4096, iters: int = 200, hessian: bool = True,
                   echo=None) -> dict[str, InitialState]:
    """The initial state (training loss, λ_max) of every group of points (their settings outside the optimizer), as
    ``json.dumps(point.group()) → state``; kept in ``<out>/initial.json`` and computed only for groups not there."""
    path = Path(plan.out) / "initial.json"
    try:
        cache = {k: InitialState(**v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        cache = {}
    except (OSError, ValueError, TypeError, AttributeError) as err:  # truncated, or not a dict of states
        if echo:
            echo(f"sweep: {path} is not a sweep's initial states ({type(err).__name__}); computing them again")
        cache = {}
    out = {}
    for point in points:
        group = json.dumps(point.group())
        if group in out:
            continue
        key = _state_key(plan, point.group(), samples, iters, hessian)
        if key not in cache or not cache[key].val:  # (a state from before the held-out metrics were kept)
            if echo:
                where = " ".join(f"{k}={v}" for k, v in point.group()) or "the config"
                echo(f"initial state{' and λ_max' if hessian else ''} of {where} …")
            cache[key] = initial_state(list(point.args), [list(kv) for kv in point.group()], samples, iters,
                                       hessian=hessian)
            Path(plan.out).mkdir(parents=True, exist_ok=True)
            write_atomic(path, json_text({k: asdict(v) for k, v in cache.items()}))
        out[group] = cache[key]
    return out


def check(points: list[Point]) -> int:
    """Build the CLI of enough pending points that every value of every axis (and every method) is in one of them: a
    setting the CLI refuses stops the sweep before anything runs, with the CLI's line. Returns how many were built."""
    covered: set = set()
    built = 0
    for point in points:
        pairs = {("method", point.method), *point.settings}
        if pairs <= covered:
            continue
        build(list(point.args), f"the point {point.name} ({describe(point)})")
        covered |= pairs
        built += 1
    return built


def execute(plan: Plan, jobs: int = 1, threads: int = 1, slurm: bool = False, report_only: bool = False,
            hessian: bool = True, hessian_samples: int = 4096, hessian_iters: int = 200, metric: str | None = None,
            target: float | None = None, python: str | None = None, sbatch: list[str] | None = None,
            echo=None) -> dict[str, Path]:
    """Plan, check, run (or write for SLURM), gather and report a sweep; returns the files written."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    points = plan.points()
    if metric is not None and points:  # a metric the runs' validation never logs: refused before any work
        cli = build(list(points[0].args), f"the point {points[0].name}")
        logged = logged_tags(cli.model, cli.datamodule)
        if metric not in logged:
            raise SweepError(f"--metric: {Path(plan.config).name} does not log {metric}; allowed: {', '.join(logged)}")
    finished = {p.name: r for p in points if (r := done(p)) is not None}
    if not report_only:
        check([p for p in points if p.name not in finished])  # a bad setting stops here, before any output
    with FolderLock(Path(plan.out)):  # one sweep at a time in a folder (a second one is refused)
        if not report_only:
            plan.save()
        states = initial_states(plan, points, hessian_samples, hessian_iters, hessian, echo)
        task = next(iter(states.values())).task if states else "regression"
        records: dict[str, RunRecord] = {}
        pending = []
        for point in points:
            record = finished.get(point.name)
            if record is None and (point_folder(point) / "exit_code").exists():  # a SLURM task's run, not gathered yet
                record = collect(point, states[json.dumps(point.group())].train_loss)
                record.save(point_folder(point))
            if record is not None and (record.status in DONE or report_only):
                records[point.name] = record
            else:
                pending.append(point)
        if report_only:
            if not any(r.status in DONE for r in records.values()):
                raise SweepError(f"--report-only: none of the {len(points)} points of {plan.out} has finished "
                                 "(trained, frozen or diverged); allowed: a sweep with a finished point: run it (the "
                                 "same command without --report-only), or wait for its SLURM tasks")
            echo(f"sweep: {len(records)} of {len(points)} points have an outcome; {len(pending)} not run")
        else:
            how = "write for SLURM" if slurm else f"run, {jobs} at a time, {threads} thread{'s' * (threads > 1)} each"
            echo(f"sweep: {len(points)} points, {len(points) - len(pending)} done before (skipped), {len(pending)} to "
                 + how)
            if slurm:
                if not pending:
                    echo("sweep: nothing to run")
                else:
                    path = write_slurm(plan, pending, threads, python or "python", sbatch)
                    echo(f"sweep: wrote {path}: submit it with 'sbatch {path}', then gather with "
                         f"'{REPORT_COMMAND} {plan.out}'")
                    return {"slurm": path}
            else:
                init_loss = {p.name: states[json.dumps(p.group())].train_loss for p in pending}
                runner = ProcessRunner(jobs, threads, python or sys.executable, echo)
                for record in runner.run(pending, init_loss):
                    records[record.name] = record
        if not any(r.status in DONE for r in records.values()):  # nothing to draw: say so instead of an empty report
            echo(f"sweep: none of its {len(points)} points has finished; no report written")
            return {}
        paths = report(plan, points, records, states, task, metric, target)
        echo("sweep: wrote " + ", ".join(str(p) for p in paths.values()))
        return paths
