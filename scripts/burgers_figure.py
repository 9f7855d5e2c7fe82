"""``python scripts/burgers_figure.py …``: the Burgers PINN's figure and table
(:mod:`gf_lightning.study.paper.burgers_command`)."""
import sys

from gf_lightning.study.paper.burgers_command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/burgers_figure.py")


if __name__ == "__main__":
    sys.exit(main())
