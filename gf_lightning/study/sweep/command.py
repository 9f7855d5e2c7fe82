"""Sweep a grid of methods × step sizes (× any config settings) on one config, through the CLI, and report it
(the sweep's command line).

    gf-sweep --config configs/exp3_sgd.yaml --methods sgd adam sav --lr 1e-3:1e1:5 --jobs 2 --out /tmp/sw3
    gf-sweep --config configs/exp4_sgd.yaml --data-dir ../shared/data --lr 1e-2:1e1:7 --seeds 0 1 2
    gf-sweep --config configs/exp1_sgd.yaml --lr 1e-3:1:4 --grid model.net.init_args.init=fan_in,kaiming
    gf-sweep ... --slurm            # write <out>/sweep.sbatch (one array task per point) instead of running
    gf-sweep --report-only --out DIR   # gather the run folders (after SLURM) and write the report
    gf-sweep --from-results DIR/results.json   # the report again from results.json alone

Every point runs ``python -m gf_lightning fit --config CONFIG <overrides>`` in its own process and folder
(``<out>/runs/<point>/``), ``--jobs`` at once; points already done (trained, frozen or diverged) are skipped on a
re-run. The method replaces the config's optimizer entirely (class and every setting: the class's defaults, then the
method's variant, then ``--method-args`` where the class takes them). Writes ``<out>/sweep.png`` (final and best
held-out metric against Δt, diverged and frozen runs marked, gradient descent's stability limits), ``<out>/sweep.md``
(per method: the largest Δt that trains, the best Δt and its metric as mean ± spread over the seeds, the time to a
target) and ``<out>/results.json``. ``gf_lightning.study.sweep`` holds the code; its modules' docstrings define every
term. ``gf-sweep`` is ``python -m gf_lightning.study sweep`` and ``python scripts/sweep.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..interrupts import run_command
from ..methods import METHODS
from ..parser import CommandParser
from .execute import execute
from .grid import DEFAULT_METHODS, GRID_FORM, LR_KEY, Plan, SweepError
from .metrics import DEFAULT_TARGET
from .report import rewrite

#: how the command is spelled where it was not named (the report quotes it)
PROG = "python -m gf_lightning.study sweep"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    targets = "; ".join(f"{m}: " + ", ".join(f"{t} {v:g}" for t, v in d.items()) for m, d in DEFAULT_TARGET.items())
    p = CommandParser(prog=prog, description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("the grid")
    g.add_argument("--config", help="the config every point starts from (required unless --report-only)")
    g.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help=f"the methods; any of: {', '.join(METHODS)}, or 'config' (the config's own optimizer); "
                   f"default: {' '.join(DEFAULT_METHODS)}")
    g.add_argument(
        "--lr",
        metavar="SPEC",
        help=f"the step sizes Δt ({LR_KEY}): FROM:TO:N (N log-spaced, e.g. 1e-3:1e2:11) or V1,V2,…",
    )
    g.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=VALUES",
                   help=f"more axes, each {GRID_FORM}; the points are the cartesian product")
    g.add_argument(
        "--seeds",
        nargs="+",
        metavar="SEED",
        help="the seeds (seed_everything): the report gives each point's mean and spread over them",
    )
    g.add_argument("--method-args", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="optimizer settings for the methods whose class takes them (e.g. C=100 lam=4)")
    g.add_argument("--max-epochs", type=int, help="trainer.max_epochs of every point (default: the config's)")
    g.add_argument("--data-dir", help="data.init_args.data_dir: the folder holding MNIST/raw (MNIST configs)")
    g.add_argument("--checkpoints", action="store_true",
                   help="keep each run's checkpoints (off: a sweep needs only the logs)")
    r = p.add_argument_group("running")
    r.add_argument("--out", default=None, help="the sweep's folder (default: sweeps/<config name>)")
    r.add_argument("--jobs", type=int, help="runs at once (default: CPU cores / --threads)")
    r.add_argument("--threads", type=int, default=1, help="CPU threads per run (OMP_NUM_THREADS; default 1)")
    r.add_argument("--slurm", action="store_true", help="write <out>/sweep.sbatch, a job array of the points not done, "
                   "instead of running them; gather with --report-only")
    r.add_argument("--sbatch", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="more #SBATCH options for --slurm, without their dashes: time=2:00:00 partition=cpu")
    r.add_argument(
        "--python", help="the Python of the runs (default: this one; 'python' in a SLURM script, or $PYTHON)"
    )
    r.add_argument("--report-only", action="store_true", help="run nothing: read <out>/plan.json and the run folders, "
                   "write the report")
    r.add_argument(
        "--from-results",
        metavar="RESULTS_JSON",
        help="run nothing: write the report again from a sweep's "
        "results.json alone (every record judged by the current outcome rule), into --out (default: its folder)",
    )
    s = p.add_argument_group("stability limit and report")
    s.add_argument("--no-hessian", action="store_true", help="skip 2/λ_max of the loss Hessian at the initial weights")
    s.add_argument(
        "--hessian-samples", type=int, default=4096, help="training samples for λ_max (0: all; default 4096)"
    )
    s.add_argument(
        "--hessian-iters", type=int, default=200, help="at most this many power-iteration steps (default 200)"
    )
    s.add_argument("--metric", choices=["val/loss", "val/rel_err", "val/rel_l2", "val/acc"],
                   help="the held-out metric (default: val/acc for classification, val/loss for regression)")
    s.add_argument("--target", type=float, help=f"the metric's target for the time to target (defaults: {targets})")
    return p


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Sweep as ``argv`` (default: the process's arguments) asks; ``prog``: the command as the report quotes it."""
    args = build_parser(prog).parse_args(argv)

    def sweep() -> int | None:
        for name in ("jobs", "threads"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise SweepError(f"--{name}: {getattr(args, name)} is not allowed; allowed: an integer >= 1")
        jobs = args.jobs or max(1, (os.cpu_count() or 1) // args.threads)
        if args.from_results:
            results = Path(args.from_results)
            if not results.is_file():
                raise SweepError(f"--from-results: {str(results)!r} is not a file; allowed: a sweep's results.json")
            paths = rewrite(results, Path(args.out) if args.out else None)
            print("sweep: wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
            return 0
        if args.report_only:
            if not args.out:
                raise SweepError("--report-only: no --out given; allowed: the folder of a sweep that was run or "
                                 "written")
            plan = Plan.load(args.out)
        else:
            if not args.config:
                raise SweepError("--config: not given; allowed: a config file such as configs/exp3_sgd.yaml")
            out = args.out or Path("sweeps") / Path(args.config).stem
            command = shlex.join([*shlex.split(prog), *(argv if argv is not None else sys.argv[1:])])
            plan = Plan.build(args.config, args.methods, args.lr, args.grid, args.seeds, args.method_args, out,
                              args.max_epochs, args.data_dir, args.checkpoints, command)
        execute(plan, jobs=jobs, threads=args.threads, slurm=args.slurm, report_only=args.report_only,
                hessian=not args.no_hessian, hessian_samples=args.hessian_samples, hessian_iters=args.hessian_iters,
                metric=args.metric, target=args.target, python=args.python, sbatch=args.sbatch)

    return run_command("sweep", sweep)

