"""Example 5 of Ma, Mao & Shen (2024): the viscous Burgers equation, its collocation points and its exact solution.

.. math::
    u_t + u\\,u_x = \\nu\\, u_{xx},\\quad x \\in (-1, 1),\\ t \\in (0, 1],\\qquad
    u(x, 0) = -\\sin(\\pi x),\\quad u(\\pm 1, t) = 0,\\quad \\nu = 0.01/\\pi.

No download: the training set is the collocation points of a physics-informed network, the held-out set a grid on which
the exact solution (Cole–Hopf, :func:`burgers_exact`) is known. Every row of ``y`` carries its target and its *kind*::

    y[:, 0]  the target: 0 for an interior point (the PDE's right-hand side), −sin(πx) on t = 0, 0 on x = ±1, u*(x, t)
    y[:, 1]  the kind:   INTERIOR = 0, INITIAL = 1, BOUNDARY = 2, SOLUTION = 3  (:data:`KINDS`)

while ``x`` holds only the coordinates ``(x, t)``, so any network of two inputs takes it. The objective
(:class:`~gf_lightning.components.BurgersPINN`) applies the PDE operator to the interior rows and compares ``u`` with the
target on the others.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import GFConfigError
from .base import TensorDataModule

#: the row kinds, the codes in ``y[:, 1]``
INTERIOR, INITIAL, BOUNDARY, SOLUTION = 0, 1, 2, 3
KINDS = {"interior": INTERIOR, "initial": INITIAL, "boundary": BOUNDARY, "solution": SOLUTION}
#: the paper's viscosity
NU = 0.01 / math.pi
#: numpy's ``hermgauss`` gives finite weights up to about 360 nodes; the solution has converged to rounding by 100
MAX_NODES = 300
#: the smallest viscosity at which the 200-node rule was checked (to 4e−15 against a 600 001-point trapezoidal rule over
#: the domain): 0.2 · 0.01/π. At half of it the rule is off by 0.1 — the nodes, |s| ≤ √(2n), no longer reach the far
#: contributions η ≈ x ± 1 — so :func:`burgers_exact` refuses a smaller ν rather than return a wrong "exact" solution
MIN_NU = 0.002 / math.pi


def _hermite(n_nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss–Hermite nodes and the logarithms of their weights (the weights reach 1e-163 at 200 nodes), in float64."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or not 2 <= n_nodes <= MAX_NODES:
        raise GFConfigError(f"n_nodes must be an integer in 2 … {MAX_NODES} (numpy's hermgauss); got {n_nodes!r}")
    s, w = np.polynomial.hermite.hermgauss(n_nodes)
    return torch.from_numpy(s), torch.from_numpy(np.log(w))


def burgers_exact(x: Tensor, t: Tensor, nu: float = NU, n_nodes: int = 200, chunk: int = 8192) -> Tensor:
    """The exact solution of the Burgers problem above at points ``(x, t)`` (tensors that broadcast), by Cole–Hopf.

    With ``φ(y) = exp(−cos(πy) / (2πν))`` (the heat equation's initial data, from ``u(x, 0) = −sin(πx)``),

    ``u(x, t) = −∫ sin(π(x − η)) φ(x − η) e^{−η²/(4νt)} dη / ∫ φ(x − η) e^{−η²/(4νt)} dη``;

    ``η = √(4νt)·s`` turns both integrals into Gauss–Hermite sums over the weight ``e^{−s²}``. ``φ`` spans
    ``exp(±1/(2πν))`` (``e^{±50}`` at the paper's ν), so each sum is taken in logarithms: ``aₖ = log wₖ − cos(π yₖ)/(2πν)``,
    shifted by its maximum before the exponential (a log-sum-exp), and the ratio formed from the shifted terms.
    ``u(x, 0) = −sin(πx)`` directly. At the paper's ν, 100 nodes already agree with a 400 001-point trapezoidal rule to
    ~2e−15 over the whole domain; the default 200 leaves a margin, and stays accurate (to 4e−15) down to ``ν = 0.002/π``
    (:data:`MIN_NU`; a smaller ν is refused: there the nodes miss the far contributions, and the rule is off by 0.1 at
    ``0.001/π``). (In float64 the shift is a safeguard rather than a necessity at these ν: ``e^{±50}`` does not overflow;
    it would below ``ν ≈ 2e−4``.) The solution is extended ``2``-periodically and odd in x (the Cole–Hopf integral runs
    over the whole line), so it meets ``u(±1, t) = 0`` exactly.

    Computed in float64, returned in the floating dtype of the inputs (float64 for integer inputs); ``chunk`` points at a
    time (a ``chunk × n_nodes`` work array).
    """
    if not (isinstance(nu, (int, float)) and not isinstance(nu, bool) and math.isfinite(nu) and nu >= MIN_NU):
        raise GFConfigError(f"nu must be a finite number >= {MIN_NU:.4g} (0.002/π: where the quadrature was checked); got {nu!r}")
    x, t = torch.as_tensor(x), torch.as_tensor(t)
    dtype = torch.promote_types(x.dtype, t.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float64
    xb, tb = torch.broadcast_tensors(x.double(), t.double())
    if (tb < 0).any():
        raise GFConfigError(f"burgers_exact: t must be >= 0; got min t = {tb.min().item():.3g}")
    s, log_w = (v.to(xb.device) for v in _hermite(n_nodes))
    xf, tf = xb.reshape(-1), tb.reshape(-1)
    out = torch.empty_like(xf)
    for start in range(0, len(xf), chunk):
        xc, tc = xf[start : start + chunk, None], tf[start : start + chunk, None]
        y = xc - torch.sqrt(4.0 * nu * tc) * s  # x − η at the nodes
        a = log_w - torch.cos(math.pi * y) / (2.0 * math.pi * nu)
        e = torch.exp(a - a.amax(dim=1, keepdim=True))
        out[start : start + chunk] = -(e * torch.sin(math.pi * y)).sum(dim=1) / e.sum(dim=1)
    out = torch.where(tf == 0, -torch.sin(math.pi * xf), out)
    return out.reshape(xb.shape).to(dtype)


class BurgersCollocation(TensorDataModule):
    """The collocation points of a physics-informed network for the Burgers problem, and a held-out grid with the exact
    solution. Nothing is downloaded; everything is a function of the settings (and ``seed``, when ``sampling="random"``).

    Training rows (``x_train``: ``(x, t)``; ``y_train``: ``(target, kind)``, see the module's docstring):

    - interior: ``n_x × n_t`` points, the paper's 200 × 60 "residual points". ``sampling="grid"``:
      ``x = −1 + 2i/(n_x + 1)``, ``i = 1 … n_x`` (the open interval) and ``t = j/n_t``, ``j = 1 … n_t``; ``"random"``:
      as many points uniform in ``(−1, 1) × (0, 1]``;
    - initial: ``n_initial`` points on ``t = 0``, ``x`` evenly spaced over ``[−1, 1]``, target ``−sin(πx)``;
    - boundary: ``n_boundary`` points on each of ``x = −1`` and ``x = 1``, ``t = j/n_boundary``, target 0.

    Held-out rows (``x_test``, ``y_test``): the grid of ``eval_nx`` × ``eval_nt`` points ``x ∈ [−1, 1]``, ``t ∈ [0, 1]``
    (both ends included), kind SOLUTION, target the exact ``u*`` (:func:`burgers_exact`). The objective's validation then
    reports the relative L² error ``‖u − u*‖ / ‖u*‖`` on it (``val/rel_l2``).

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
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, steps_per_call=steps_per_call)
        for name, value, low in (("n_x", n_x, 1), ("n_t", n_t, 1), ("n_initial", n_initial, 1), ("n_boundary", n_boundary, 1),
                                 ("eval_nx", eval_nx, 2), ("eval_nt", eval_nt, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GFConfigError(f"data.{name} must be an integer >= {low}; got {value!r}")
        if sampling not in self.samplings:
            raise GFConfigError(f"data.sampling must be one of {', '.join(self.samplings)}; got {sampling!r}")
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not (math.isfinite(nu) and nu >= MIN_NU):
            raise GFConfigError(
                f"data.nu must be a finite number >= {MIN_NU:.4g} (0.002/π: below it the exact solution's quadrature is not "
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
            xs = -1.0 + 2.0 * torch.arange(1, self.n_x + 1, dtype=f64) / (self.n_x + 1)
            ts = torch.arange(1, self.n_t + 1, dtype=f64) / self.n_t
            xi, ti = (g.reshape(-1) for g in torch.meshgrid(xs, ts, indexing="ij"))
        else:
            gen = torch.Generator().manual_seed(self.seed)
            n = self.n_x * self.n_t
            xi = torch.rand(n, generator=gen, dtype=f64) * 2.0 - 1.0
            ti = 1.0 - torch.rand(n, generator=gen, dtype=f64)  # (0, 1]
        x0 = torch.linspace(-1.0, 1.0, self.n_initial, dtype=f64) if self.n_initial > 1 else torch.zeros(1, dtype=f64)
        tb = torch.arange(1, self.n_boundary + 1, dtype=f64) / self.n_boundary
        xs = torch.cat([xi, x0, -torch.ones_like(tb), torch.ones_like(tb)])
        ts = torch.cat([ti, torch.zeros_like(x0), tb, tb])
        target = torch.cat([torch.zeros_like(xi), -torch.sin(math.pi * x0), torch.zeros(2 * len(tb), dtype=f64)])
        kind = torch.cat([torch.full_like(xi, INTERIOR), torch.full_like(x0, INITIAL), torch.full((2 * len(tb),), BOUNDARY, dtype=f64)])
        return torch.stack([xs, ts], dim=1), torch.stack([target, kind], dim=1)

    def solution_grid(self) -> tuple[Tensor, Tensor]:
        """The held-out rows ``(x, y)`` in float64: the ``eval_nx × eval_nt`` grid (x-major), target ``u*``."""
        xs = torch.linspace(-1.0, 1.0, self.eval_nx, dtype=torch.float64)
        ts = torch.linspace(0.0, 1.0, self.eval_nt, dtype=torch.float64) if self.eval_nt > 1 else torch.ones(1, dtype=torch.float64)
        xg, tg = (g.reshape(-1) for g in torch.meshgrid(xs, ts, indexing="ij"))
        u = burgers_exact(xg, tg, self.nu)
        return torch.stack([xg, tg], dim=1), torch.stack([u, torch.full_like(u, SOLUTION)], dim=1)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None:
            self.check_objective(getattr(model, "objective", None))

    def check_objective(self, objective: object) -> None:
        """These rows mean something only to :class:`~gf_lightning.components.BurgersPINN` of the same ``nu`` (a default
        mean squared error would compare ``u`` with ``(target, kind)``): anything else stops the run with one line."""
        from ..components.pinn import BurgersPINN  # (here: the objective imports this module)

        if not isinstance(objective, BurgersPINN):
            raise GFConfigError(
                f"data ({type(self).__name__}) holds collocation points whose y is (target, kind): model.objective must be "
                f"gf_lightning.components.BurgersPINN; got {objective!r}"
            )
        if not math.isclose(objective.nu, self.nu, rel_tol=1e-12):
            raise GFConfigError(
                f"model.objective.init_args.nu = {objective.nu!r} differs from data.nu = {self.nu!r}; allowed: the same "
                f"viscosity in both (the default of both is 0.01/π)"
            )

    def build(self) -> dict[str, Tensor]:
        x_train, y_train = self.collocation()
        x_test, y_test = self.solution_grid()
        return {"x_train": x_train.float(), "y_train": y_train.float(), "x_test": x_test.float(), "y_test": y_test.float()}
