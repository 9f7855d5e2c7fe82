"""Each run its own ``version_N`` folder, claimed race-free.

Lightning's loggers pick ``version_N`` as one more than the largest folder they find, and create it later: two runs started
at once into one ``default_root_dir`` pick the same N, and one overwrites the other's ``config.yaml`` and mixes its events
into the other's TensorBoard run. Here the folder is claimed with ``os.mkdir``, which exactly one process can win: a run
that loses takes the next N.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


def claim_version(root: str | os.PathLike, start: int = 0) -> int:
    """Create ``root/version_N`` for the smallest ``N ≥ start`` that no other process has created, and return ``N``."""
    Path(root).mkdir(parents=True, exist_ok=True)
    version = start
    while True:
        try:
            os.mkdir(Path(root) / f"version_{version}")
            return version
        except FileExistsError:
            version += 1


def is_launched_rank() -> bool:
    """Whether this process is a rank > 0 that a launcher started (plain DDP re-runs the command line with these set);
    such a rank takes rank 0's folder and must not claim one of its own."""
    return any(int(os.environ.get(key, "0") or 0) > 0 for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "GLOBAL_RANK"))


def claim_logger_versions(loggers: list[Logger]) -> None:
    """Give every local TensorBoard or CSV logger that has no version yet a folder of its own (see the module's docstring)."""
    if is_launched_rank():
        return
    for logger in loggers:
        if isinstance(logger, (TensorBoardLogger, CSVLogger)) and logger._version is None and "://" not in str(logger.root_dir):
            logger._version = claim_version(logger.root_dir, logger._get_next_version())
