"""Several sweeps side by side (:mod:`.compare`): one row per sweep, one column per panel, mean ± s.d. over the
seeds (the comparison's command line).

For example, every method of exp1 at its own config under two initialisations:

    for f in configs/exp1_*.yaml; do m=$(basename $f .yaml); m=${m#exp1_}
      gf-sweep --config $f --methods config --lr <its lr> --seeds 0 1 2 \\
          --grid model.net.init_args.init=fan_in,public --out sweeps/inits/exp1/$m
    done
    python -m gf_lightning.study compare sweeps/inits/exp1/* --out sweeps/inits/exp1_compare \\
        --title "exp1, two initialisations"
"""

from __future__ import annotations

import shlex
import sys

from ..parser import CommandParser
from .compare import compare
from .grid import SweepError

#: how the command is spelled where it was not named (the page quotes it)
PROG = "python -m gf_lightning.study compare"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Compare the sweeps ``argv`` (default: the process's arguments) names; ``prog``: the command as the page quotes
    it."""
    p = CommandParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="the sweeps' folders (each with the results.json of a sweep)")
    p.add_argument("--out", required=True, help="where compare.md and compare.png go")
    p.add_argument("--title", default="", help="the page's title")
    args = p.parse_args(argv)
    command = shlex.join([*shlex.split(prog), *(argv if argv is not None else sys.argv[1:])])
    try:
        paths = compare(args.folders, args.out, args.title, command)
    except SweepError as err:
        print(f"compare_sweeps: {err}", file=sys.stderr)
        return 2
    print("compare_sweeps: wrote " + ", ".join(str(v) for v in paths.values()))
    return 0

