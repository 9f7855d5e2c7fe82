"""The suite's fixtures, and only fixtures; what the tests share otherwise is in ``support.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import cli_args, find_mnist


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The ``data_dir`` of the real MNIST files (it holds ``MNIST/raw/``); skips with the reason where there is none."""
    folder, why = find_mnist()
    if folder is None:
        pytest.skip(why)
    return folder


@pytest.fixture
def cli_run(tmp_path: Path):
    """A small CLI run in this process: ``cli_run(config, *extra, root=tmp_path, subcommand="fit", epochs=None,
    run=True)`` runs :func:`support.cli_args`'s command line through ``cli_main`` and returns the LightningCLI (with
    ``run=False``: the parse and instantiation alone, no subcommand)."""
    from gf_lightning.cli import cli_main

    def run(config: str | Path, *extra: str, root: Path | None = None, subcommand: str = "fit",
            epochs: int | None = None, run: bool = True):
        args = cli_args(config, root or tmp_path, *extra, subcommand=subcommand if run else None, epochs=epochs)
        return cli_main(args, run=run)

    return run
