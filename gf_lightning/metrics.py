"""Metrics that torchmetrics does not have: ratios of sums for the held-out data, and the training epoch's loss."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric


class RatioOfSums(Metric):
    """``Σ numerator / Σ denominator`` over an epoch's batches (and, under DDP, over every rank's), in float64."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("numerator", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, numerator: Tensor, denominator: Tensor) -> None:
        self.numerator += numerator.double()
        self.denominator += denominator.double()

    def compute(self) -> Tensor:
        return self.numerator / self.denominator


class RelativeError(RatioOfSums):
    """``Σ (f − y)² / Σ y²`` over an epoch (the meaningful error for exp3, whose targets are tiny)."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update((preds - target).double().square().sum(), target.double().square().sum())


class RelativeL2Error(RelativeError):
    """``‖f − y‖ / ‖y‖`` over an epoch: the square root of :class:`RelativeError` (the PINN literature's relative L²
    error)."""

    def compute(self) -> Tensor:
        return super().compute().sqrt()


class EpochLoss(MeanMetric):
    """The training epoch's loss so far: ``Σ loss × weight`` (``mean_value``) and ``Σ weight`` (``weight``), in float64,
    with persistent state, so that a checkpoint taken inside an epoch carries the epoch's sums and a resume from it
    continues them. Each step's loss counts as it is, NaN included: the non-finite guard, not the metric, stops a run
    (:class:`MeanMetric` would drop a NaN, or with ``nan_strategy="disable"`` drop the weights)."""

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")
        self.set_dtype(torch.float64)
        self.persistent(True)

    def update(self, value: Tensor, weight: float) -> None:  # type: ignore[override]
        self.mean_value += value.detach().to(torch.float64) * weight
        self.weight += weight

    def sums(self) -> Tensor:
        """``[Σ loss × weight, Σ weight]`` of this rank."""
        return torch.stack([self.mean_value, self.weight])
