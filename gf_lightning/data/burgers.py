"""The collocation points of a physics-informed network for the Burgers problem of Ma, Mao & Shen (2024), Example 5
(its definition, constants and exact solution: :mod:`gf_lightning.problems.burgers`), and a held-out grid on which the
exact solution is known. No download.

Every row of ``y`` carries its target and its *kind* (``(target, kind)``, :data:`~gf_lightning.problems.burgers.KINDS`),
while ``x`` holds only the coordinates ``(x, t)``, so any network of two inputs takes it. The data module carries the
problem (:data:`~gf_lightning.problems.burgers.BURGERS`) and its ``nu``; the objective checks them
(:meth:`BurgersPINN.check_data <gf_lightning.components.BurgersPINN.check_data>`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import GFConfigError
from ..problems.burgers import (
    BOUNDARY,
    BURGERS,
    INITIAL,
    INTERIOR,
    MIN_NU,
    NU,
    SOLUTION,
    T_MAX,
    X_MAX,
    X_MIN,
    burgers_exact,
)
from .base import TensorDataModule


class BurgersCollocation(TensorDataModule):
    """The collocation points of a physics-informed network for the Burgers problem, and a held-out grid with the exact
    solution. Nothing is downloaded; everything is a function of the settings (and ``seed``, when
    ``sampling="random"``).

    Training rows (``x_train``: ``(x, t)``; ``y_train``: ``(target, kind)``, see the module's docstring):

    - interior: ``n_x × n_t`` points, the paper's 200 × 60 "residual points". ``sampling="grid"``:
      ``x = −1 + 2i/(n_x + 1)``, ``i = 1 … n_x`` (the open interval) and ``t = j/n_t``, ``j = 1 … n_t``; ``"random"``:
      as many points uniform in ``(−1, 1) × (0, 1]``;
    - initial: ``n_initial`` points on ``t = 0``, ``x`` evenly spaced over ``[−1, 1]``, target ``−sin(πx)``;
    - boundary: ``n_boundary`` points on each of ``x = −1`` and ``x = 1``, ``t = j/n_boundary``, target 0.

    Held-out rows (``x_test``, ``y_test``): the grid of ``eval_nx`` × ``eval_nt`` points ``x ∈ [−1, 1]``, ``t ∈ [0, 1]``
    (both ends included), kind SOLUTION, target the exact ``u*`` (:func:`burgers_exact`). The objective's validation
    then reports the relative L² error ``‖u − u*‖ / ‖u*‖`` on it (``val/rel_l2``).

    Args:
        n_x, n_t: interior points along x and t (200, 60).
        n_initial: points on t = 0 (200).
        n_boundary: points on each boundary x = ±1 (60).
        sampling: ``"grid"`` or ``"random"`` interior points.
        nu: the viscosity (``0.01/π``; at least :data:`MIN_NU`); the objective's ``nu`` must be the same.
        eval_nx, eval_nt: the held-out grid (256 × 100).
        batch_size: ``None`` (default): every collocation point in one batch, one optimizer step an epoch (the paper's
            full-batch training). A smaller batch takes the per-kind means over the batch's own rows.
        eval_batch_size, seed, steps_per_call: see :class:`TensorDataModule`.
    """

    samplings = ("grid", "random")
    #: the problem whose rows these are: the objective checks it (and ``nu``) before any step
    problem = BURGERS

    def __init__(
        self,
        n_x: int = 200,
        n_t: int = 60,
        n_initial: int = 200,
        n_boundary: int = 60,
        sampling: str = "grid",
        nu: float = NU,
        eval_nx: int = 256,
        eval_nt: int = 100,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, steps_per_call=steps_per_call
        )
        for name, value, low in (
            ("n_x", n_x, 1),
            ("n_t", n_t, 1),
            ("n_initial", n_initial, 1),
            ("n_boundary", n_boundary, 1),
            ("eval_nx", eval_nx, 2),
            ("eval_nt", eval_nt, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GFConfigError(f"data.{name} must be an integer >= {low}; got {value!r}")
        if sampling not in self.samplings:
            raise GFConfigError(f"data.sampling must be one of {', '.join(self.samplings)}; got {sampling!r}")
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not (math.isfinite(nu) and nu >= MIN_NU):
            raise GFConfigError(
                f"data.nu must be a finite number >= {MIN_NU:.4g} (0.002/π: below it the exact solution's quadrature "
                "is not "
                f"accurate); got {nu!r}"
            )
        self.n_x, self.n_t, self.n_initial, self.n_boundary = n_x, n_t, n_initial, n_boundary
        self.sampling, self.nu = sampling, float(nu)
        self.eval_nx, self.eval_nt = eval_nx, eval_nt

    @property
    def dims(self) -> tuple[int, int]:
        return 2, 1

    def collocation(self) -> tuple[Tensor, Tensor]:
        """The training rows ``(x, y)`` in float64: interior, then initial, then boundary points."""
        f64 = torch.float64
        if self.sampling == "grid":
            xs = X_MIN + (X_MAX - X_MIN) * torch.arange(1, self.n_x + 1, dtype=f64) / (self.n_x + 1)
            ts = T_MAX * torch.arange(1, self.n_t + 1, dtype=f64) / self.n_t
            xi, ti = (g.reshape(-1) for g in torch.meshgrid(xs, ts, indexing="ij"))
        else:
            gen = torch.Generator().manual_seed(self.seed)
            n = self.n_x * self.n_t
            xi = torch.rand(n, generator=gen, dtype=f64) * (X_MAX - X_MIN) + X_MIN
            ti = T_MAX - torch.rand(n, generator=gen, dtype=f64) * T_MAX  # (0, T_MAX]
        x0 = (torch.linspace(X_MIN, X_MAX, self.n_initial, dtype=f64) if self.n_initial > 1
              else torch.zeros(1, dtype=f64))
        tb = T_MAX * torch.arange(1, self.n_boundary + 1, dtype=f64) / self.n_boundary
        xs = torch.cat([xi, x0, torch.full_like(tb, X_MIN), torch.full_like(tb, X_MAX)])
        ts = torch.cat([ti, torch.zeros_like(x0), tb, tb])
        target = torch.cat([torch.zeros_like(xi), -torch.sin(math.pi * x0), torch.zeros(2 * len(tb), dtype=f64)])
        kind = torch.cat(
            [
                torch.full_like(xi, INTERIOR),
                torch.full_like(x0, INITIAL),
                torch.full((2 * len(tb),), BOUNDARY, dtype=f64),
            ]
        )
        return torch.stack([xs, ts], dim=1), torch.stack([target, kind], dim=1)

    def solution_grid(self) -> tuple[Tensor, Tensor]:
        """The held-out rows ``(x, y)`` in float64: the ``eval_nx × eval_nt`` grid (x-major), target ``u*``."""
        xs = torch.linspace(X_MIN, X_MAX, self.eval_nx, dtype=torch.float64)
        ts = (torch.linspace(0.0, T_MAX, self.eval_nt, dtype=torch.float64) if self.eval_nt > 1
              else torch.full((1,), T_MAX, dtype=torch.float64))
        xg, tg = (g.reshape(-1) for g in torch.meshgrid(xs, ts, indexing="ij"))
        u = burgers_exact(xg, tg, self.nu)
        return torch.stack([xg, tg], dim=1), torch.stack([u, torch.full_like(u, SOLUTION)], dim=1)

    def build(self) -> dict[str, Tensor]:
        x_train, y_train = self.collocation()
        x_test, y_test = self.solution_grid()
        return {
            "x_train": x_train.float(),
            "y_train": y_train.float(),
            "x_test": x_test.float(),
            "y_test": y_test.float(),
        }
