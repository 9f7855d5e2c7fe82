"""The reproduction of the seed's experiments (SPEC §3): plan each experiment's runs from its configs, train them
(:mod:`.workers`), and as soon as an experiment's last run has ended write its report (:mod:`.reports`); with several
experiments, a summary of all. :mod:`.command` is its command line."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import yaml

from .in_process import intra_op_threads, quiet_lightning
from .progress import ProgressLines
from .records import RunResult, RunSpec, Settings
from .reports import write_results, write_summary
from .workers import run_plan, usable_cores


def config_path(exp: int, method: str, configs: Path = Path("configs")) -> Path:
    """The config of ``method`` in experiment ``exp``: ``<configs>/exp<exp>_<method>.yaml``."""
    return configs / f"exp{exp}_{method}.yaml"


def plan_experiment(exp: int, methods: list[str], scale: float,
                    configs: Path = Path("configs")) -> tuple[list[RunSpec], list[str]]:
    """The runs of ``methods`` that have a config in experiment ``exp``, each for its config's ``max_epochs`` ×
    ``scale`` (rounded, at least 1); and the methods without one, with why."""
    specs, skipped = [], []
    for method in methods:
        cfg = config_path(exp, method, configs)
        if not cfg.exists():
            skipped.append(f"{method} (no config for experiment {exp})")
            continue
        max_epochs = yaml.safe_load(cfg.read_text())["trainer"]["max_epochs"]
        specs.append(RunSpec(exp, method, cfg, max(1, math.floor(max_epochs * scale + 0.5))))
    return specs, skipped


def reproduce(experiments: list[int], methods: list[str], settings: Settings,
              summary: bool = False) -> dict[int, list[RunResult]]:
    """Run ``methods`` in each of ``experiments`` and write each experiment's report under ``settings.out``;
    ``summary``: also ``summary.md``. Returns each experiment's results, in the order of ``methods``. ``settings.jobs``
    is at most the number of runs; with more than 1 and no ``settings.threads``, each process gets the usable cores ÷
    jobs intra-op threads."""
    plans = {exp: plan_experiment(exp, methods, settings.epochs_scale, settings.configs) for exp in experiments}
    for exp, (specs, skipped) in plans.items():
        if not specs:
            print(f"experiment {exp}: nothing to run ({'; '.join(skipped)})", file=sys.stderr)
    plan = [spec for specs, _ in plans.values() for spec in specs]
    settings = dataclasses.replace(settings, jobs=max(1, min(settings.jobs, len(plan))))
    if settings.jobs > 1 and not settings.threads:
        settings = dataclasses.replace(settings, threads=max(1, usable_cores() // settings.jobs))
    members = {exp: [i for i, spec in enumerate(plan) if spec.experiment == exp] for exp in experiments}
    lines = ProgressLines(plan, settings.jobs, settings.progress_every)
    results: dict[int, RunResult] = {}
    spans: dict[int, tuple[float, float]] = {}  # run index → (start, end)
    done: dict[int, list[RunResult]] = {}
    start = time.monotonic()
    with intra_op_threads(settings.threads), quiet_lightning():
        for finished in run_plan(plan, settings, lines):
            lines.finish(finished.index)
            results[finished.index], spans[finished.index] = finished.result, (finished.started, finished.ended)
            exp = plan[finished.index].experiment
            if all(i in results for i in members[exp]):
                wall = max(spans[i][1] for i in members[exp]) - min(spans[i][0] for i in members[exp])
                done[exp] = [results[i] for i in members[exp]]
                path = write_results(exp, done[exp], plans[exp][1], settings, wall)
                print(f"experiment {exp}: wrote {path}", file=sys.stderr)
        done = {exp: done[exp] for exp in experiments if exp in done}
        if summary:
            print(f"wrote {write_summary(done, settings, time.monotonic() - start)}", file=sys.stderr)
    return done
