"""``python scripts/compare_sweeps.py …``: several sweeps side by side
(:mod:`gf_lightning.study.sweep.compare_command`)."""
import sys

from gf_lightning.study.sweep.compare_command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/compare_sweeps.py")


if __name__ == "__main__":
    sys.exit(main())
