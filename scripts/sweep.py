"""``python scripts/sweep.py …``: a sweep of methods × step sizes (:mod:`gf_lightning.study.sweep.command`)."""
import sys

from gf_lightning.study.sweep.command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/sweep.py")


if __name__ == "__main__":
    sys.exit(main())
