"""The three regressions of SPEC §3, generated from one seeded draw."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import GFConfigError
from .base import TensorDataModule


class SyntheticRegression(TensorDataModule):
    """``n_samples`` inputs ``x ∈ R^d`` and targets ``y = target(x)``, split ``train_fraction`` / rest, in float32.

    Everything — the target's random coefficients, the inputs, the split — comes from one ``torch.Generator`` seeded
    with ``seed``: one seed gives bit-identical tensors, on any machine that runs the same torch.

    Args:
        d: input dimension. n_samples: samples in all (train + test). train_fraction: the share that trains (the seed:
        0.8). standardize: z-score the inputs with the training split's per-feature mean and standard deviation (Ma, Mao
        & Shen
            2024; the targets are computed from the raw inputs first). The seed does not.
        batch_size, eval_batch_size, seed, steps_per_call: see :class:`TensorDataModule`.
    """

    def __init__(
        self,
        d: int = 40,
        n_samples: int = 10_000,
        train_fraction: float = 0.8,
        batch_size: int | None = 256,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
        standardize: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, steps_per_call=steps_per_call
        )
        if not isinstance(standardize, bool):
            raise GFConfigError(f"data.standardize must be true or false; got {standardize!r}")
        self.standardize = standardize
        if not isinstance(d, int) or d <= 0:
            raise GFConfigError(f"data.d must be a positive integer; got {d!r}")
        if not isinstance(n_samples, int) or n_samples < 2:
            raise GFConfigError(f"data.n_samples must be an integer >= 2; got {n_samples!r}")
        if not 0 < train_fraction < 1:
            raise GFConfigError(f"data.train_fraction must be in (0, 1); got {train_fraction!r}")
        n_train = round(train_fraction * n_samples)
        if not 1 <= n_train <= n_samples - 1:
            raise GFConfigError(
                f"data.train_fraction = {train_fraction!r} of data.n_samples = {n_samples} leaves {n_train} samples to "
                f"train and {n_samples - n_train} held out; both need at least one: allowed train_fraction "
                f"{1 / n_samples:.4g} … {(n_samples - 1) / n_samples:.4g} for n_samples = {n_samples}, or more samples"
            )
        self.d, self.n_samples, self.train_fraction = d, n_samples, train_fraction

    @property
    def dims(self) -> tuple[int, int]:
        return self.d, 1

    def sample_inputs(self, n: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def target(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """``y`` for inputs ``x`` of shape ``(n, d)``, as ``(n,)``; draws its own coefficients from ``gen``."""
        raise NotImplementedError

    def build(self) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        x = self.sample_inputs(self.n_samples, gen).to(torch.float64)
        y = self.target(x, gen).reshape(-1, 1)
        n_train = round(self.train_fraction * self.n_samples)
        if self.standardize:
            mean, std = x[:n_train].mean(dim=0), x[:n_train].std(dim=0)
            if n_train < 2 or not (std > 0).all():
                raise GFConfigError(
                    f"data.standardize needs inputs that vary over the training split; {n_train} training samples have "
                    f"{int((~(std > 0)).sum()) if n_train > 1 else self.d} constant features: use more samples or "
                    "data.standardize=false"
                )
            x = (x - mean) / std
        x, y = x.float(), y.float()
        return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


class SinCosRegression(SyntheticRegression):
    """Experiment 1: ``y = sin(Σ pᵢxᵢ) + cos(Σ qᵢxᵢ)``, ``p, q ~ N(0, I)``, ``x ~ U(0, 1)^d``."""

    def sample_inputs(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.rand(n, self.d, generator=gen, dtype=torch.float64)

    def target(self, x: Tensor, gen: torch.Generator) -> Tensor:
        p, q = torch.randn(2, self.d, generator=gen, dtype=torch.float64)
        return torch.sin(x @ p) + torch.cos(x @ q)


class QuadraticRegression(SyntheticRegression):
    """Experiment 2: ``y = Σ cᵢ xᵢ²``, ``c ~ N(0, I)``, ``x ~ U(0, high)^d`` with ``high = 5``. The targets are not
    normalised (mean ≈ −55, std ≈ 32 at the defaults), as in the seed."""

    def __init__(
        self,
        d: int = 40,
        n_samples: int = 10_000,
        train_fraction: float = 0.8,
        high: float = 5.0,
        batch_size: int | None = 64,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
        standardize: bool = False,
    ) -> None:
        super().__init__(d, n_samples, train_fraction, batch_size, eval_batch_size, seed, steps_per_call, standardize)
        if not high > 0:
            raise GFConfigError(f"data.high must be > 0; got {high!r}")
        self.high = float(high)

    scale_settings = ("high",)

    def sample_inputs(self, n: int, gen: torch.Generator) -> Tensor:
        return self.high * torch.rand(n, self.d, generator=gen, dtype=torch.float64)

    def target(self, x: Tensor, gen: torch.Generator) -> Tensor:
        c = torch.randn(self.d, generator=gen, dtype=torch.float64)
        return x.square() @ c


class GaussianRegression(SyntheticRegression):
    """Experiment 3: ``y = exp(−10 ‖x‖²)``, ``x ~ N(0, σ² I)`` with ``σ = 0.2`` (variance 0.04), 1000 samples.

    With ``E‖x‖² = 40 · 0.04 = 1.6`` the targets are tiny (median ≈ 1.5e−7): report the relative error beside the
    MSE."""

    def __init__(
        self,
        d: int = 40,
        n_samples: int = 1000,
        train_fraction: float = 0.8,
        std: float = 0.2,
        batch_size: int | None = 256,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
        standardize: bool = False,
    ) -> None:
        super().__init__(d, n_samples, train_fraction, batch_size, eval_batch_size, seed, steps_per_call, standardize)
        if not std > 0:
            raise GFConfigError(f"data.std must be > 0; got {std!r}")
        self.std = float(std)

    scale_settings = ("std",)

    def sample_inputs(self, n: int, gen: torch.Generator) -> Tensor:
        return self.std * torch.randn(n, self.d, generator=gen, dtype=torch.float64)

    def target(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return torch.exp(-10.0 * x.square().sum(dim=1))
