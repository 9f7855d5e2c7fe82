"""Independent references for the optimizers' formulas: SPEC §2 written out in Python floats, the relaxation in 200
bits.

Nothing here imports ``gf_lightning``: the references share no code with the library. Autograd is used only by the
callers, to differentiate their test problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mpmath

mpmath.mp.prec = 200


def relax_reference(log_r_old: float, log_r_tilde: float, log_r_hat: float, log_moved: float, eta: float):
    """Alg. 4 of Ma, Mao & Shen as stated — the smallest ``ξ ∈ [0, 1]`` with ``(ξ r̃ + (1 − ξ) r̂)² ≤ r̃² + η D``,
    ``D = min(‖Δw‖²/Δt, (rⁿ)² − r̃²)`` — solved as a quadratic in ``ζ = 1 − ξ`` (``Δ²ζ² + 2 r̃ Δ ζ − η D ≤ 0``,
    ``Δ = r̂ − r̃``) in 200-bit arithmetic, whose exponent range has no limit. Returns ``(log rⁿ⁺¹, ξ)`` as mpf."""
    r_old, r_tilde, r_hat = (mpmath.exp(mpmath.mpf(v)) for v in (log_r_old, log_r_tilde, log_r_hat))
    moved = mpmath.exp(mpmath.mpf(log_moved)) if log_moved != -math.inf else mpmath.mpf(0)
    d = max(min(moved, r_old**2 - r_tilde**2), mpmath.mpf(0))
    bound = r_tilde**2 + mpmath.mpf(eta) * d
    if r_hat**2 <= bound:  # ξ = 0 satisfies it
        return mpmath.log(r_hat), mpmath.mpf(0)
    delta = r_hat - r_tilde  # > 0 here, since r̃² ≤ bound < r̂²
    zeta = (-r_tilde + mpmath.sqrt(bound)) / delta  # the larger root
    zeta = min(max(zeta, mpmath.mpf(0)), mpmath.mpf(1))
    return mpmath.log(r_tilde + zeta * delta), 1 - zeta


def dot(u: list[float], v: list[float]) -> float:
    return math.fsum(a * b for a, b in zip(u, v))


@dataclass
class RefStep:
    """One step of the reference: the weights after it (per group), the auxiliary variable, the factor φ·Δt/(1+Δtλ) of
    the first group, ξ (relax), the loss at wⁿ."""

    w: list[list[float]]
    aux: float
    eff: float
    xi: float | None
    loss: float


#: ``evaluate(w_groups, n) → (L, g_groups)``: the loss and its gradient at ``w`` for step ``n``'s mini-batch
Evaluate = Callable[[list[list[float]], int], tuple[float, list[list[float]]]]


def scheme_reference(
    method: str,
    variant: str,
    w0: list[list[float]],
    evaluate: Evaluate,
    lrs: list[float],
    steps: int,
    C: float = 1.0,
    lam: float = 0.0,
    eps: float = 1e-8,
    eta: float = 0.99,
) -> list[RefStep]:
    """SAV (``method="sav"``), ExpSAV (``"expsav"``) and IEQAdaptive (``"ieq"``) as SPEC §2 writes them, with per-group
    steps: ``Δt·Sⁿ`` becomes ``Σ_g Δt_g S_g`` and each group moves by its own ``Δt_g g̃_g``. SAV's seed form restarts
    ``r`` every step (the seed writes ``r = √(L + C)``); ExpSAV's and IEQAdaptive's carry it."""
    w = [list(g) for g in w0]
    aux = None
    out = []
    for n in range(steps):
        loss, grads = evaluate(w, n)
        lam_ = 0.0 if method == "ieq" else lam
        gts = [[x / (1.0 + dt * lam_) for x in g] for g, dt in zip(grads, lrs)]
        dt_s = math.fsum(dt * dot(g, gt) for dt, g, gt in zip(lrs, grads, gts))
        if method == "ieq":
            if aux is None or variant == "restart":
                aux = math.sqrt(2.0 * loss)
            new_aux = aux / (1.0 + dt_s / (aux**2 + eps))
            phi = new_aux / aux
        else:
            r_hat = math.sqrt(loss + C) if method == "sav" else C * math.exp(loss)
            if aux is None or variant == "restart" or (method == "sav" and variant == "seed"):
                aux = r_hat
            kappa = 2.0 * (loss + C) if method == "sav" else aux
            new_aux = aux / (1.0 + dt_s / kappa)
            phi = new_aux / aux if variant in ("seed", "restart") else new_aux / r_hat
        w_new = [[x - dt * phi * y for x, y in zip(wg, gt)] for wg, gt, dt in zip(w, gts, lrs)]
        xi = None
        if variant == "relax":
            loss_next, _ = evaluate(w_new, n)
            r_hat_next = math.sqrt(loss_next + C) if method == "sav" else C * math.exp(loss_next)
            moved = math.fsum(math.fsum((a - b) ** 2 for a, b in zip(wn, wo)) / dt for wn, wo, dt in zip(w_new, w, lrs))
            log_moved = math.log(moved) if moved > 0 else -math.inf
            log_r, xi_mp = relax_reference(math.log(aux), math.log(new_aux), math.log(r_hat_next), log_moved, eta)
            new_aux, xi = float(mpmath.exp(log_r)), float(xi_mp)
        out.append(RefStep(w_new, new_aux, phi * lrs[0] / (1.0 + lrs[0] * lam_), xi, loss))
        w, aux = w_new, new_aux
    return out
