"""``python -m gf_lightning.study COMMAND [ARGS …]``: the studies' commands, each its pipeline's ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

#: each command's module (its ``main(argv)``) and what it does
COMMANDS = {
    "reproduce": ("gf_lightning.study.reproduce.command", "the seed's four experiments, with reports"),
    "sweep": ("gf_lightning.study.sweep.command", "a grid of methods × step sizes (× settings) on one config"),
    "compare": ("gf_lightning.study.sweep.compare_command", "several sweeps side by side"),
    "paper": ("gf_lightning.study.paper.command", "the paper's figures, measured"),
    "burgers-figure": ("gf_lightning.study.paper.burgers_command", "the Burgers PINN's figure and table"),
    "pinn-race": ("gf_lightning.study.paper.race_command", "the Burgers PINN race"),
}
PROG = "python -m gf_lightning.study"


def usage() -> str:
    width = max(map(len, COMMANDS))
    return f"usage: {PROG} COMMAND [ARGS ...]\n\ncommands:\n" + "\n".join(
        f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv[0]`` with the rest of ``argv`` (default: the process's arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROG}: error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"{PROG} {name}") or 0


if __name__ == "__main__":
    sys.exit(main())
