"""``python scripts/reproduce.py …``: :mod:`gf_lightning.study.reproduce.command` with this repository's configs."""
import sys
from pathlib import Path

from gf_lightning.study.reproduce.command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/reproduce.py", configs=Path(__file__).resolve().parents[1] / "configs")


if __name__ == "__main__":
    sys.exit(main())
