"""The Burgers PINN race (docs/pinn.md): relative L² error against wall-clock seconds, every method × dtype × seed
(the race's command line).

    gf-pinn-race --out results/pinn_race                       # the race: 30 minutes a run, 3 seeds
    gf-pinn-race --out /tmp/smoke --budget 60 --seeds 0        # a smoke
    gf-pinn-race --out results/pinn_race --report-only         # redraw race.png and race.md

The race is :mod:`.race`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..interrupts import run_command
from ..parser import CommandParser
from .race import DTYPES, METHODS, RaceSettings, report, run_race

PROG = "python -m gf_lightning.study pinn-race"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Race (or, with ``--report-only``, report) as ``argv`` (default: the process's arguments) asks."""
    parser = CommandParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = RaceSettings()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default=default.config)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"some of {', '.join(METHODS)}")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), help=f"some of {', '.join(DTYPES)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(default.seeds))
    parser.add_argument("--budget", type=float, default=default.budget, help="training seconds a run")
    parser.add_argument("--every", type=float, default=default.every, help="seconds between records")
    parser.add_argument("--ieq-lr", type=float, default=default.ieq_lr, help="IEQ's fixed Δt")
    parser.add_argument("--ieq-adaptive-lr", type=float, default=default.ieq_adaptive_lr,
                        help="the adaptive IEQ's starting Δt")
    parser.add_argument("--row-fraction", type=float, default=default.row_fraction)
    parser.add_argument("--threads", type=int, default=default.threads, help="torch threads a run")
    parser.add_argument("--clock", default=default.clock, help="wall (seconds) or cpu (the run's CPU seconds)")
    parser.add_argument("--jobs", type=int, default=default.jobs, help="runs at once, each in its own process")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    settings = RaceSettings(config=args.config, methods=tuple(args.methods), dtypes=tuple(args.dtypes),
                            seeds=tuple(args.seeds), budget=args.budget, every=args.every, ieq_lr=args.ieq_lr,
                            ieq_adaptive_lr=args.ieq_adaptive_lr, row_fraction=args.row_fraction,
                            threads=args.threads, clock=args.clock, jobs=args.jobs)

    def race() -> None:
        if not args.report_only:
            run_race(settings, args.out)
        report(args.out)
        print((args.out / "race.md").read_text())

    return run_command("pinn-race", race)

