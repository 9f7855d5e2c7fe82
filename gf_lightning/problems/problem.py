"""The record by which a data module says which problem its rows belong to, and an objective which problem it solves.

Data and objectives both import a problem's definition (a leaf module here) and never each other: the data module
carries its :class:`Problem`, and the objective checks it (``Objective.check_data``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """A problem whose rows are not plain targets: what the columns of ``y`` are, and the objective that reads them."""

    name: str  #: e.g. ``"burgers"``
    rows: str  #: what a row is, in words (``"collocation points"``)
    y_columns: tuple[str, ...]  #: what the columns of ``y`` hold (``("target", "kind")``)
    objective: str  #: the objective that reads these rows, by its import path (for messages: no import)
