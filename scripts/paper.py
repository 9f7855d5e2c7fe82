"""``python scripts/paper.py …``: the paper's figures, measured (:mod:`gf_lightning.study.paper.command`)."""
import sys

from gf_lightning.study.paper.command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/paper.py")


if __name__ == "__main__":
    sys.exit(main())
