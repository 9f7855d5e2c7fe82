"""The study commands' argument parser: argparse's, except that a bad argument (a wrong type, an unknown option, a
missing one) ends in one line — ``<prog>: error: <what>; see <prog> --help`` — and exit 2, not in argparse's usage dump
before it."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class CommandParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose :meth:`error` prints one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)
