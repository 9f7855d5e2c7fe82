"""Reproduce the four experiments of SPEC §3 in one command and report what was measured beside what the seed claims
(the reproduction's command line).

    gf-reproduce --experiment all --threads 1                      # everything: ~11 min on 2 idle cores
    gf-reproduce --experiment 3 --epochs-scale 0.05 --out /tmp/r3  # a quick pass: 5 epochs per method

Every method runs through the same CLI and config a user runs (``python -m gf_lightning fit --config
configs/expN_M.yaml``), with TensorBoard logs under ``<out>/exp<N>/<method>/``: with ``--jobs N``, in N worker processes
at once, the longest runs first, each process on ``--threads`` intra-op threads (with ``--threads 1``, a run's numbers
are bit for bit those of the same run alone in one process); with ``--jobs 1``, in this process, one after the other.
When an experiment's last run has ended, its event files are read back and ``<out>/exp<N>/`` gets ``loss.png``,
``energy.png``, ``results.md`` (measured | claimed) and ``results.json``. ``--experiment all`` also writes
``<out>/summary.md``. A run that goes non-finite is recorded as such; the others go on.

This module only reads the command line (``python -m gf_lightning.study reproduce``, ``gf-reproduce``,
``python scripts/reproduce.py``): the reproduction is :mod:`.reproduction`.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from ..methods import NEW_METHODS, SEED_METHODS
from ..parser import CommandParser
from .records import Settings
from .reproduction import config_path, reproduce
from .workers import default_jobs, usable_cores

#: how the command is spelled where it was not named (the reports quote it)
PROG = "python -m gf_lightning.study reproduce"


def parse_args(argv: list[str] | None, prog: str = PROG, configs: Path = Path("configs")) -> argparse.Namespace:
    p = CommandParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experiment", choices=["1", "2", "3", "4", "all"], required=True)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(SEED_METHODS),
        help=f"default: every config that exists for the experiment among {', '.join(SEED_METHODS)} (the seed's; "
        f"beyond it: {', '.join(NEW_METHODS)}); NAME runs "
        "configs/exp<N>_NAME.yaml, so a variant config such as exp4_expsav_restart.yaml runs as expsav_restart",
    )
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies each config's max_epochs (min 1 epoch)")
    p.add_argument("--accelerator", default="cpu", help="--trainer.accelerator (default cpu)")
    p.add_argument("--devices", default="1", help="--trainer.devices (default 1)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--configs", type=Path, default=configs,
                   help=f"the folder of the configs exp<N>_<method>.yaml (default: {configs})")
    default_data = "../shared/data" if Path("../shared/data").exists() else "data"
    p.add_argument("--data-dir", default=default_data, help=f"MNIST folder holding MNIST/raw/ (default {default_data})")
    p.add_argument("--log-every-n-steps", type=int, default=None,
                   help="--trainer.log_every_n_steps: how often energies are logged (default: the config's, 10)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads of each process that trains (default: torch's choice, or with --jobs N the "
        "cores ÷ N; on a few busy shared cores 1 can be much faster)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"runs trained at once, each in a worker process of its own (default: as many as the "
        f"{usable_cores()} usable cores hold at --threads each, here {default_jobs(1)} with --threads 1; "
        "1 without --threads); --jobs 1 trains in this process, one run after the other",
    )
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines (default 10)")
    opts = p.parse_args(argv)
    if not (math.isfinite(opts.epochs_scale) and opts.epochs_scale > 0):
        refuse(f"--epochs-scale {opts.epochs_scale!r}; allowed: a finite number > 0")
    for name in ("threads", "jobs"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            refuse(f"--{name} {getattr(opts, name)}; allowed: an integer >= 1")
    experiments = [1, 2, 3, 4] if opts.experiment == "all" else [int(opts.experiment)]
    opts.configs = opts.configs.resolve()
    known = sorted({path.stem.partition("_")[2] for path in opts.configs.glob("exp[1-4]_*.yaml")})
    unknown = [m for m in opts.methods if m not in known]
    if unknown:
        refuse(f"--methods: no config configs/exp<N>_NAME.yaml for {', '.join(map(repr, unknown))}; allowed: "
               f"{', '.join(known)}")
    if not any(config_path(exp, m, opts.configs).exists() for exp in experiments for m in opts.methods):
        refuse(f"--methods {' '.join(opts.methods)}: none has a config in experiment {opts.experiment}; nothing to run")
    return opts


def refuse(message: str) -> None:
    """A bad command line: one line on stderr, exit 2."""
    print(f"reproduce: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None, prog: str = PROG, configs: Path = Path("configs")) -> int:
    """Reproduce what ``argv`` (default: the process's arguments) asks; ``prog``: the command as its reports quote it;
    ``configs``: the configs' folder unless ``--configs`` names another."""
    opts = parse_args(argv, prog, configs)
    settings = Settings(
        out=opts.out,
        command=shlex.join([*shlex.split(prog), *(sys.argv[1:] if argv is None else argv)]),
        epochs_scale=opts.epochs_scale,
        accelerator=opts.accelerator,
        devices=opts.devices,
        data_dir=opts.data_dir,
        log_every_n_steps=opts.log_every_n_steps,
        threads=opts.threads,
        jobs=opts.jobs or default_jobs(opts.threads),
        progress_every=opts.progress_every,
        configs=opts.configs,
    )
    experiments = [1, 2, 3, 4] if opts.experiment == "all" else [int(opts.experiment)]
    reproduce(experiments, opts.methods, settings, summary=opts.experiment == "all")
    return 0

