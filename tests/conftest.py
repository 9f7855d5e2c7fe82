"""The suite's fixtures, and only fixtures; what the tests share otherwise is in ``support.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import find_mnist


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The ``data_dir`` of the real MNIST files (it holds ``MNIST/raw/``); skips with the reason where there is none."""
    folder, why = find_mnist()
    if folder is None:
        pytest.skip(why)
    return folder
