"""Example 5 of Ma, Mao & Shen (2024), the viscous Burgers equation: its constants, its domain, the kinds of its rows
and its exact solution — the problem's definition, which the collocation data (:mod:`gf_lightning.data.burgers`) and the
PINN objective (:mod:`gf_lightning.components.pinn`) both import.

.. math::
    u_t + u\\,u_x = \\nu\\, u_{xx},\\quad x \\in (-1, 1),\\ t \\in (0, 1],\\qquad
    u(x, 0) = -\\sin(\\pi x),\\quad u(\\pm 1, t) = 0,\\quad \\nu = 0.01/\\pi.

Every row of ``y`` carries its target and its *kind*::

    y[:, 0]  the target: 0 for an interior point (the PDE's right-hand side), −sin(πx) on t = 0, 0 on x = ±1, u*(x, t)
    y[:, 1]  the kind:   INTERIOR = 0, INITIAL = 1, BOUNDARY = 2, SOLUTION = 3  (:data:`KINDS`)

while ``x`` holds only the coordinates ``(x, t)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import GFConfigError
from .problem import Problem

#: the domain: ``x ∈ [X_MIN, X_MAX]``, ``t ∈ [0, T_MAX]``
X_MIN, X_MAX, T_MAX = -1.0, 1.0, 1.0
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
    ``exp(±1/(2πν))`` (``e^{±50}`` at the paper's ν), so each sum is taken in logarithms: ``aₖ = log wₖ − cos(π
    yₖ)/(2πν)``, shifted by its maximum before the exponential (a log-sum-exp), and the ratio formed from the shifted
    terms. ``u(x, 0) = −sin(πx)`` directly. At the paper's ν, 100 nodes already agree with a 400 001-point trapezoidal
    rule to ~2e−15 over the whole domain; the default 200 leaves a margin, and stays accurate (to 4e−15) down to ``ν =
    0.002/π`` (:data:`MIN_NU`; a smaller ν is refused: there the nodes miss the far contributions, and the rule is off
    by 0.1 at ``0.001/π``). (In float64 the shift is a safeguard rather than a necessity at these ν: ``e^{±50}`` does
    not overflow; it would below ``ν ≈ 2e−4``.) The solution is extended ``2``-periodically and odd in x (the Cole–Hopf
    integral runs over the whole line), so it meets ``u(±1, t) = 0`` exactly.

    Computed in float64, returned in the floating dtype of the inputs (float64 for integer inputs); ``chunk`` points at
    a time (a ``chunk × n_nodes`` work array).
    """
    if not (isinstance(nu, (int, float)) and not isinstance(nu, bool) and math.isfinite(nu) and nu >= MIN_NU):
        raise GFConfigError(
            f"nu must be a finite number >= {MIN_NU:.4g} (0.002/π: where the quadrature was checked); got {nu!r}"
        )
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


#: the rows of this problem, as the data module carries them and the objective checks them
BURGERS = Problem("burgers", "collocation points", ("target", "kind"), "gf_lightning.components.BurgersPINN")
