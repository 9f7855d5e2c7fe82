"""The held-out metrics a sweep reports: their names, which way is better, and the default metric and target per task
(the seed's "epochs to test loss < 1e-4" for a regression and "epochs to 90 % accuracy" for MNIST)."""

from __future__ import annotations

#: the default metric and target per task: the seed's "epochs to test loss < 1e-4" (regression) and "epochs to 90 %
#: accuracy" (MNIST); the held-out cross-entropy's target is the seed's final loss for SGD (0.25–0.35)
DEFAULT_METRIC = {"regression": "val/loss", "classification": "val/acc"}
DEFAULT_TARGET = {"val/loss": {"regression": 1e-4, "classification": 0.3}, "val/rel_err": {"regression": 0.01},
                  "val/rel_l2": {"regression": 0.1}, "val/acc": {"classification": 0.90}}
METRIC_NAMES = {"val/loss": "test loss", "val/rel_err": "test relative error", "val/rel_l2": "relative L² error",
                "val/acc": "test accuracy"}


def higher_is_better(metric: str) -> bool:
    return metric.endswith("acc")


def default_target(metric: str, task: str) -> float | None:
    return DEFAULT_TARGET.get(metric, {}).get(task)
