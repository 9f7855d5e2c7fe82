"""The held-out metrics of a run (``val/…``, ``test/…``): the objective's loss and the quality metric of its task."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from .components.objectives import Objective
from .metrics import RatioOfSums, RelativeError, RelativeL2Error


class EvalMetrics(nn.Module):
    """``loss``: the objective, as a mean of per-sample terms weighted by batch size, or (an objective that is a ratio
    of sums, :class:`~gf_lightning.components.RelativeError`) as that ratio; and one ``quality`` metric, named
    :attr:`quality_name`: ``acc`` (classification), ``rel_l2 = ‖u − u*‖/‖u*‖`` over the rows that have an exact solution
    (an objective with ``solution(pred, y) -> (u, u*)``, :class:`~gf_lightning.components.BurgersPINN`), else ``rel_err
    = Σ(f − y)²/Σy²`` (which a network predicting zero scores 1). Lightning computes them once an epoch, synchronised
    across ranks, when they are logged as metric objects."""

    def __init__(self, objective: Objective, task: str, num_classes: int) -> None:
        super().__init__()
        self.per_sample = objective.per_sample
        self.solution = getattr(objective, "solution", None)
        self.loss: Metric = MeanMetric() if self.per_sample else RatioOfSums()
        if task == "classification":
            self.quality_name, self.quality = "acc", MulticlassAccuracy(num_classes=num_classes, average="micro")
        elif self.solution is None:
            self.quality_name, self.quality = "rel_err", RelativeError()
        else:
            self.quality_name, self.quality = "rel_l2", RelativeL2Error()

    def update(self, objective: Objective, out: Tensor, y: Tensor) -> None:
        """Count one batch: its predictions ``out`` against its targets ``y``."""
        if self.per_sample:
            self.loss.update(objective.loss(out, y), weight=out.shape[0])
        else:
            self.loss.update(**vars(objective.ratio(out, y)))
        if self.quality_name == "rel_l2":
            self.quality.update(*self.solution(out, y))
        else:
            self.quality.update(out, y)

    def names(self, prefix: str) -> dict[str, Metric]:
        """``{"val/loss": …, "val/acc": …}``: the metrics under the names they are logged with."""
        return {f"{prefix}/loss": self.loss, f"{prefix}/{self.quality_name}": self.quality}

    def computed(self, prefix: str) -> dict[str, float]:
        """The epoch's values, synchronised across ranks, under their names; ``{}`` when no batch was counted."""
        if not self.loss.update_called:
            return {}
        return {name: float(metric.compute()) for name, metric in self.names(prefix).items()}

    def reset(self) -> None:
        """Empty every metric, as normal tensors: validate and test run under inference mode, and state reset there
        would be inference tensors that a later fit's validation (under no_grad) could not update."""
        with torch.inference_mode(False):
            self.loss.reset()
            self.quality.reset()
