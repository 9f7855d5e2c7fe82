"""Running a sweep's points: each as its own ``python -m gf_lightning fit`` process, several at once, or as a SLURM job
array; each run's outcome read back from its folder into a :class:`RunRecord` (``result.json``).

A point's folder, ``<out>/runs/<name>/``, holds its TensorBoard run (``lightning_logs/…``), ``log.txt`` (the process's
stdout and stderr), ``started`` (the start, seconds since the epoch), ``exit_code``, and once read back ``result.json``. A
local run and a SLURM array task write the same files, and one function reads them (:func:`collect`), so a sweep gathered
from a cluster is reported by the same code as one run here. A point whose ``result.json`` (or ``exit_code``, from a
SLURM task not yet gathered) says it finished — trained, frozen, unstable or diverged — is not run again; a point that
failed otherwise (``error``: killed, interrupted, refused, stopped before its last epoch) is.

Outcomes (``RunRecord.status``): ``diverged``, ``unstable``, ``frozen`` or ``trained`` by :mod:`.outcome` (the one rule
of every study; a run stopped by the CLI's non-finite guard, "training went non-finite …", is diverged), or ``error``:
anything else (the CLI refused a setting, the process was killed or interrupted — SIGTERM and Ctrl-C exit 143 and 130 —,
or it logged fewer epochs than ``trainer.max_epochs``: ``incomplete``); the message has the reason.

A sweep holds ``<out>/sweep.lock`` while it runs (:mod:`.folder_lock`); its runs are in its process group and end with
it, even when it is SIGKILLed (:mod:`gf_lightning.lifeline`); interrupted, it stops them (:meth:`Runner.stop`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..lifeline import PARENT_ENV
from .events import read_scalars, values
from .folder_lock import FolderLock
from .grid import Plan, Point, SweepError, _identity, _write_atomic, label
from .outcome import judge
from .stability import InitialState, build, initial_state, logged_tags

#: the outcomes that count as done: a re-run of the sweep skips them
DONE = ("trained", "frozen", "unstable", "diverged")
#: the CLI's line when the non-finite guard stops a run (gf_lightning.errors.NonFiniteError)
NON_FINITE = "training went non-finite"
#: the held-out tags read back, one list each in the record
VAL_TAGS = ("val/loss", "val/rel_err", "val/rel_l2", "val/acc")
#: seconds the runs under way get to stop after SIGTERM when the sweep is interrupted, before SIGKILL
STOP_GRACE_S = 30.0


@dataclass
class RunRecord:
    """One point's outcome, written as ``result.json`` in its folder."""

    name: str
    method: str
    settings: dict[str, str]
    lr: float
    seed: str | None
    args: list[str]  #: what followed ``python -m gf_lightning fit``
    status: str = "error"  #: trained, frozen, unstable, diverged (:mod:`.outcome`) or error
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
        _write_atomic(folder / "result.json", _json(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> RunRecord | None:
        path = folder / "result.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, allow_nan=True)


# -- reading a finished point back ---------------------------------------------------------------------------------------------
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
    if record.exit_code is None:
        record.status, record.message = "error", "not finished: no exit code (still running, or killed)"
    elif record.exit_code != 0:
        record.status = "diverged" if NON_FINITE in log else "error"
        record.message = _reason(log)
    elif any(not math.isfinite(v) for v in finals + record.train_loss[-1:]):
        record.status, record.message = "diverged", "a non-finite loss or metric was logged"
    elif not record.train_loss:
        record.status, record.message = "error", "exit 0 but no training loss logged"
    elif record.epochs < (asked := epochs_asked(folder)):
        record.status, record.message = "error", f"incomplete: {record.epochs} of {asked} epochs done (run again)"
    else:
        rejudge(record)
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
    with the command line it has now (but where the data are read from and the run is written: the same run elsewhere)."""
    folder = point_folder(point)
    record = RunRecord.load(folder)
    if record is not None and record.exit_code == 0 and record.train_loss:
        rejudge(record)  # a record saved under an earlier rule
    same = record is not None and _identity(record.args) == _identity(list(point.args))
    cut_short = same and record.status != "diverged" and record.epochs < epochs_asked(folder)  # (exit 0 on SIGTERM)
    return record if same and record.status in DONE and not cut_short else None


# -- running points here -------------------------------------------------------------------------------------------------------
def child_env(threads: int) -> dict[str, str]:
    """The environment of a run: ``threads`` threads for torch's CPU kernels, and this checkout's package first on the
    path (so the runs use the code that planned them, installed or not)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    n = str(threads)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def prepare(point: Point) -> Path:
    """Empty the point's folder of an earlier attempt (its logs would mix with the new run's)."""
    folder = point_folder(point)
    for name in ("lightning_logs", "log.txt", "started", "exit_code", "result.json"):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Runner:
    """Runs points as ``python -m gf_lightning fit`` processes, ``jobs`` at once, ``threads`` CPU threads each."""

    def __init__(self, jobs: int = 1, threads: int = 1, python: str = sys.executable, echo=None) -> None:
        self.jobs, self.threads, self.python = jobs, threads, python
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False  #: set by :meth:`stop`: no run starts after it

    def run_one(self, point: Point) -> None:
        folder = prepare(point)
        (folder / "started").write_text(f"{time.time():.3f}\n")
        env = {**child_env(self.threads), PARENT_ENV: str(os.getpid())}  # the run ends if this process dies
        with open(folder / "log.txt", "w") as log, self._lock:  # in this process's group: a kill of the group ends it
            if self._stopping:
                return
            proc = subprocess.Popen([self.python, "-m", "gf_lightning", "fit", *point.args], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            self._procs.add(proc)
        code = proc.wait()
        with self._lock:
            self._procs.discard(proc)
        (folder / "exit_code").write_text(f"{code}\n")

    def run(self, points: list[Point], init_loss: dict[str, float]) -> list[RunRecord]:
        """Run ``points`` (none of them done), record each as it ends; on Ctrl-C, stop the runs under way."""
        records: list[RunRecord] = []
        if not points:
            return records
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            futures = {pool.submit(self.run_one, p): p for p in points}
            for i, future in enumerate(as_completed(futures), 1):
                point = futures[future]
                future.result()
                record = collect(point, init_loss.get(point.name, math.nan))
                record.save(point_folder(point))
                records.append(record)
                self.echo(f"[{i}/{len(points)}] {point.name}: {record.status} ({record.wall_s:.1f} s)"
                          + (f": {record.message}" if record.status == "error" else ""))
        except BaseException:  # Ctrl-C, SIGTERM: no new runs; the runs under way end (their exit says so: redone later)
            pool.shutdown(wait=False, cancel_futures=True)
            self.stop()
            raise
        pool.shutdown()
        return records

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End the runs under way: SIGTERM (a run stops after its step and says so in its log; it passes the signal on
        to processes it started), then SIGKILL for what is left after ``grace_s`` seconds or at a second interrupt."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        try:
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()


# -- SLURM ---------------------------------------------------------------------------------------------------------------------
SLURM_RUN = r"""run() {  # the point's folder, then its command: output, start time and exit code as a local run writes them
  dir=$1; shift
  rm -rf "$dir/lightning_logs" "$dir/log.txt" "$dir/started" "$dir/exit_code" "$dir/result.json"
  mkdir -p "$dir"
  date +%s.%N > "$dir/started"
  set +e
  "$@" > "$dir/log.txt" 2>&1
  code=$?
  set -e
  echo "$code" > "$dir/exit_code"
  exit "$code"
}
"""


def slurm_script(plan: Plan, points: list[Point], threads: int = 1, python: str = "python",
                 sbatch: list[str] | None = None) -> str:
    """A job-array script with one task per point, each running that point's exact command (``$PYTHON`` is ``python``
    unless set). Gather the results afterwards with ``--report-only``."""
    root = Path(__file__).resolve().parents[2]
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=gf-sweep",
        f"#SBATCH --array=0-{len(points) - 1}",
        f"#SBATCH --cpus-per-task={threads}",
        f"#SBATCH --output={Path(plan.out) / 'slurm' / '%A_%a.out'}",
        *(f"#SBATCH --{opt.removeprefix('--')}" for opt in sbatch or []),
        f"# written by: {plan.command}" if plan.command else "# written by gf_lightning.study.sweep",
        f"# {len(points)} points; when every task has ended: python scripts/sweep.py --report-only --out "
        + shlex.quote(plan.out),
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads}",
        f"PYTHON=${{PYTHON:-{python}}}",
        SLURM_RUN,
        'case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch, or set SLURM_ARRAY_TASK_ID}" in',
    ]
    for i, point in enumerate(points):
        command = shlex.join(["-m", "gf_lightning", "fit", *point.args])
        lines.append(f"  {i}) run {shlex.quote(str(point_folder(point)))} \"$PYTHON\" {command} ;;")
    lines += ['  *) echo "no point for task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def write_slurm(plan: Plan, points: list[Point], threads: int = 1, python: str = "python",
                sbatch: list[str] | None = None) -> Path:
    path = Path(plan.out) / "sweep.sbatch"
    (Path(plan.out) / "slurm").mkdir(parents=True, exist_ok=True)
    _write_atomic(path, slurm_script(plan, points, threads, python, sbatch))
    path.chmod(0o755)
    return path


def describe(point: Point) -> str:
    return f"{label(point.method)} " + " ".join(f"{k}={v}" for k, v in point.settings)


# -- the whole sweep -----------------------------------------------------------------------------------------------------------
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
            _write_atomic(path, _json({k: asdict(v) for k, v in cache.items()}))
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
    from .sweep_report import report

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
                         f"'python scripts/sweep.py --report-only --out {plan.out}'")
                    return {"slurm": path}
            else:
                init_loss = {p.name: states[json.dumps(p.group())].train_loss for p in pending}
                runner = Runner(jobs, threads, python or sys.executable, echo)
                for record in runner.run(pending, init_loss):
                    records[record.name] = record
        if not any(r.status in DONE for r in records.values()):  # nothing to draw: say so instead of an empty report
            echo(f"sweep: none of its {len(points)} points has finished; no report written")
            return {}
        paths = report(plan, points, records, states, task, metric, target)
        echo("sweep: wrote " + ", ".join(str(p) for p in paths.values()))
        return paths
