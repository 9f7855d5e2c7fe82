"""Fig. 12 of Ma, Mao & Shen (2024), the Burgers PINN: the table of runs, their curves, and u predicted / exact /
difference (the Burgers figure's command line).

    python -m gf_lightning.study burgers-figure --root results/burgers --out docs/paper/fig12 --solution 0.01/ieq

reads every run ``<root>/lr<LR>/lightning_logs/<experiment>/<method>/version_N`` (as docs/paper.md's commands write
them: ``--trainer.default_root_dir=<root>/lr<LR> --run_name=<method>``; the newest version of each) and, if present,
``<root>/times.tsv`` (``method, lr, user s, system s, wall s`` per run, from /usr/bin/time: the table's CPU column), and
writes ``<out>/burgers_curves.png``, ``<out>/burgers_solution.png`` (the run ``--solution LR/METHOD``) and
``<out>/burgers_table.md``. The figures and the table are :mod:`.burgers`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..methods import label
from ..parser import CommandParser
from .burgers import ORDER, curves_figure, load_run, solution_figure, summarize, table

PROG = "python -m gf_lightning.study burgers-figure"


def find_runs(root: Path) -> dict[float, dict[str, Path]]:
    """``{lr: {method: run folder}}`` under ``root`` (the newest version of each method's run)."""
    runs: dict[float, dict[str, Path]] = {}

    def version(folder: Path) -> int:
        number = folder.name.removeprefix("version_")
        return int(number) if number.isdigit() else -1

    folders = [f for f in root.glob("lr*/lightning_logs/*/*/version_*") if (f / "config.yaml").is_file()]  # (not a
    for folder in sorted(folders, key=lambda f: (str(f.parent), version(f))):  # refused run's empty version folder)
        try:
            lr = float(folder.parents[3].name.removeprefix("lr"))
        except ValueError:  # a folder lr<something that is not a number>: not a run of this layout
            continue
        runs.setdefault(lr, {})[folder.parent.name] = folder  # the newest version of a method wins
    return runs


def cpu_times(path: Path) -> dict[tuple[str, float], float]:
    """``{(method, lr): user + system seconds}`` from ``times.tsv`` (empty where there is none)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 5:
                try:
                    out[(parts[0], float(parts[1]))] = float(parts[2]) + float(parts[3])
                except ValueError:
                    pass
    return out


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Draw the figures of the runs ``argv`` (default: the process's arguments) points at."""
    p = CommandParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="results/burgers", help="the runs' folder (default: results/burgers)")
    p.add_argument("--out", help="where the figures and the table go (default: <root>/figures)")
    p.add_argument("--solution", metavar="LR/METHOD", help="the run whose solution is drawn (default: the lowest final "
                   "relative L² error)")
    args = p.parse_args(argv)
    root = Path(args.root)
    out = Path(args.out) if args.out else root / "figures"
    runs = find_runs(root)
    if not runs:
        print(f"burgers_figure: no runs under {root}/lr*/lightning_logs/", file=sys.stderr)
        return 2
    if args.solution:
        lr_text, _, method = args.solution.partition("/")
        try:
            lr_value = float(lr_text)
        except ValueError:
            lr_value = None
        if lr_value not in runs or method not in runs[lr_value]:
            allowed = ", ".join(f"{lr:g}/{m}" for lr in sorted(runs, reverse=True) for m in runs[lr])
            print(f"burgers_figure: --solution {args.solution!r} is not a run under {root}; allowed: {allowed}",
                  file=sys.stderr)
            return 2
    order = list(ORDER)
    rows = [summarize(run, method, lr) for lr in sorted(runs, reverse=True)
            for method, run in sorted(runs[lr].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)]
    text = table(rows, cpu_times(root / "times.tsv"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "burgers_table.md").write_text(text + "\n")
    print(text)
    curves_figure(runs, out / "burgers_curves.png")
    if args.solution:
        lr_text, _, method = args.solution.partition("/")
        chosen = runs[float(lr_text)][method]
    else:
        best = min((r for r in rows if r.final_rel_l2 == r.final_rel_l2), key=lambda r: r.final_rel_l2)
        lr_text, method, chosen = f"{best.lr:g}", best.method, runs[best.lr][best.method]
    steps = next(r.steps for r in rows if r.method == method and r.lr == float(lr_text))
    try:
        net, nu = load_run(chosen)
    except (OSError, RuntimeError, EOFError, KeyError) as err:  # a checkpoint missing, truncated or not a run's
        print(
            f"burgers_figure: cannot load the trained network of {chosen} ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:120]}); allowed: a run with checkpoints/last.ckpt (or --solution another "
            "run)",
            file=sys.stderr,
        )
        return 2
    rel = solution_figure(net, out / "burgers_solution.png", nu,
                          title=f"{label(method)}, lr = {lr_text}, after {steps} steps")
    print(f"solution figure: {chosen} (relative L² error {rel:.4g} on the figure's grid)")
    return 0

