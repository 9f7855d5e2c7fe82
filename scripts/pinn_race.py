"""``python scripts/pinn_race.py …``: the Burgers PINN race (:mod:`gf_lightning.study.paper.race_command`)."""
import sys

from gf_lightning.study.paper.race_command import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python scripts/pinn_race.py")


if __name__ == "__main__":
    sys.exit(main())
