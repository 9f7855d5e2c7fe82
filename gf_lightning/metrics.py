"""Held-out metrics that torchmetrics does not have."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


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
    """``‖f − y‖ / ‖y‖`` over an epoch: the square root of :class:`RelativeError` (the PINN literature's relative L² error)."""

    def compute(self) -> Tensor:
        return super().compute().sqrt()
