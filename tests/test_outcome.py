"""A run's outcome (``gf_lightning.study.outcome``), the one rule of every study: records that blew up and collapsed,
blew up and recovered, froze, trained, went non-finite; and what the sweep's report makes of them (the cell's status,
the largest step that trains, gradient descent's observed limit)."""

from __future__ import annotations

import math

import pytest

from gf_lightning.study.outcome import FROZEN_DROP, UNSTABLE_RISE, judge
from gf_lightning.study.sweep.cells import cells, limits, summaries
from gf_lightning.study.sweep.grid import Point
from gf_lightning.study.sweep.records import RunRecord, rejudge

L0 = 2.0  # the training loss at the initial weights

#: name → (training loss per epoch, final held-out values, expected status)
CURVES = {
    # exp3's SGD at Δt = 100: a blow-up to 1e8 × the start that collapsed to the zero predictor (its loss then below L0)
    "blew up, collapsed": ([3.0, 2.4e8, 5.0, 1.5], [1.0], "unstable"),
    "blew up, recovered": ([1.5, 30.0, 0.5, 0.1], [0.2], "unstable"),
    "blew up, stayed up": ([5.0, 1e6, 1e9], [1e12], "unstable"),
    "rose a little, then trained": ([3.0, 15.0, 0.4], [0.5], "trained"),  # a peak of 7.5 × is not far above
    "froze": ([2.0, 1.995, 1.99], [1.0], "frozen"),
    "froze after a rise it recovered from": ([2.5, 4.0, 1.99], [1.0], "frozen"),
    "trained": ([1.5, 0.8, 0.3], [0.4], "trained"),
    "trained by just over the frozen line": ([L0 * (1 - 1.5 * FROZEN_DROP)], [1.0], "trained"),
    "non-finite loss": ([1.0, math.inf], [], "diverged"),
    "non-finite metric": ([1.0, 0.5], [math.nan], "diverged"),
}


@pytest.mark.parametrize("name", CURVES)
def test_the_outcome_of_a_run(name: str) -> None:
    loss, finals, status = CURVES[name]
    outcome = judge(loss, L0, finals)
    assert outcome.status == status, outcome.message
    if status == "unstable":
        assert f"{max(loss) / L0:.3g} ×" in outcome.message  # the message says how far it rose


def test_the_threshold_is_strict_and_relative_to_the_start() -> None:
    assert judge([UNSTABLE_RISE * L0 * 0.999, 0.1], L0).status == "trained"
    assert judge([UNSTABLE_RISE * L0 * 1.001, 0.1], L0).status == "unstable"
    assert judge([UNSTABLE_RISE * L0 * 1.001, 0.1], 100 * L0).status == "trained"  # the same curve from a higher start


def _record(name: str, lr: float, loss: list[float], status: str = "trained") -> RunRecord:
    """A record saved under an earlier rule (``status`` as it was then), re-judged as a report re-reads it."""
    record = RunRecord(name, "sgd", {"model.optimizer.init_args.lr": str(lr)}, lr, None, [], status=status, exit_code=0,
                       init_train_loss=L0, train_loss=loss, val={"val/loss": [loss[-1]]}, epochs=len(loss))
    return rejudge(record)


def test_a_sweep_reads_blow_ups_as_unstable() -> None:
    """exp3's SGD sweep as it was reported under the earlier rule: the steps that blew up and collapsed were "trained",
    so the largest step that trains, and SGD's observed limit, were the largest step tried. Re-judged, the limit is the
    last step that never blew up."""
    curves = {0.01: [1.8, 1.0], 0.1: [1.5, 0.5], 1.0: [40.0, 3.0], 10.0: [2e4, 1.0], 100.0: [2.4e8, 1.9]}
    points, records = [], {}
    for lr, loss in curves.items():
        name = f"sgd__lr={lr}"
        points.append(Point("sgd", (("model.optimizer.init_args.lr", str(lr)),), name, ()))
        records[name] = _record(name, lr, loss)
    all_cells = cells(points, records, "val/loss", None, {p.name: 1.0 for p in points})
    assert [c.status for c in all_cells] == ["trained", "trained", "unstable", "unstable", "unstable"]
    (summary,) = summaries(all_cells, "val/loss")
    assert summary.largest_trained == 0.1
    (limit,) = limits(all_cells, points, {})
    assert (limit.observed, limit.first_failed, limit.failure) == (0.1, 1.0, "unstable")
