"""Several sweeps side by side (``gf_lightning.study.compare``): one row per sweep, one column per panel, mean ± s.d.
over the seeds.

For example, every method of exp1 at its own config under two initialisations:

    for f in configs/exp1_*.yaml; do m=$(basename $f .yaml); m=${m#exp1_}
      python scripts/sweep.py --config $f --methods config --lr <its lr> --seeds 0 1 2 \\
          --grid model.net.init_args.init=fan_in,public --out sweeps/inits/exp1/$m
    done
    python scripts/compare_sweeps.py sweeps/inits/exp1/* --out sweeps/inits/exp1_compare --title "exp1, two initialisations"
"""

from __future__ import annotations

import argparse
import shlex
import sys

from gf_lightning.study.compare import compare
from gf_lightning.study.grid import SweepError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/compare_sweeps.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="the sweeps' folders (each with the results.json of scripts/sweep.py)")
    p.add_argument("--out", required=True, help="where compare.md and compare.png go")
    p.add_argument("--title", default="", help="the page's title")
    args = p.parse_args(argv)
    command = shlex.join(["python", "scripts/compare_sweeps.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        paths = compare(args.folders, args.out, args.title, command)
    except SweepError as err:
        print(f"compare_sweeps: {err}", file=sys.stderr)
        return 2
    print("compare_sweeps: wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
