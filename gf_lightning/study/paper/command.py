"""Measure the figures of Ma, Mao & Shen (2024) on the paper configs (:mod:`.figures`; the paper's command line).

    python -m gf_lightning.study paper --figures fig1 fig3 --out paper_runs --jobs 2
    python -m gf_lightning.study paper --figures all --out paper_runs --data-dir ../shared/data

Each figure's runs go through the CLI, as a sweep's points, under ``<out>/<figure>/``; a second call skips the runs that
are done. Writes ``<out>/<figure>/curves.png`` and ``table.md``; docs/paper.md sets them beside the paper's claims.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..interrupts import run_command
from ..parser import CommandParser
from .figures import FIGURES, measure

PROG = "python -m gf_lightning.study paper"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Measure the figures ``argv`` (default: the process's arguments) names."""
    p = CommandParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--figures", nargs="+", default=["all"], choices=["all", *FIGURES], metavar="FIGURE",
                   help=f"any of: {', '.join(FIGURES)}, or all (default)")
    p.add_argument("--out", type=Path, default=Path("paper_runs"))
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    default_data = "../shared/data" if Path("../shared/data").exists() else "data"
    p.add_argument("--data-dir", default=default_data, help=f"the folder holding MNIST/raw (default {default_data})")
    p.add_argument("--configs", type=Path, default=Path("configs"),
                   help="the configs' folder, holding paper/<name>.yaml (default: configs/ in the current folder)")
    p.add_argument("--report-only", action="store_true", help="draw and tabulate the runs that are done; run nothing")
    opts = p.parse_args(argv)
    names = list(FIGURES) if "all" in opts.figures else opts.figures

    def measure_all() -> None:
        for name in names:
            runs = measure(FIGURES[name], opts.out, jobs=opts.jobs, data_dir=opts.data_dir,
                           run=not opts.report_only, configs=opts.configs)
            print(f"{name}: {len(runs)} runs; wrote {opts.out / name / 'curves.png'} and table.md", file=sys.stderr)

    return run_command("paper", measure_all)

