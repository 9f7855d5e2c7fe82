"""Arithmetic in logarithms, for the auxiliary variables whose values span ``e^{±10⁸}``: the relaxation lives here.

Every function takes and returns Python floats (float64), with ``log 0 = −∞`` treated as a value, never as an error, and
none of them produces NaN from finite or infinite inputs that are not NaN themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

NEG_INF = -math.inf


def softplus(x: float) -> float:
    """``log(1 + eˣ)`` without overflow; ``softplus(−∞) = 0``, ``softplus(∞) = ∞``."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def exp0(x: float) -> float:
    """``eˣ``, ``∞`` past the float range instead of an OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def log0(x: float) -> float:
    """``log x`` with ``log 0 = −∞`` (and NaN for a negative or NaN ``x``)."""
    return math.log(x) if x > 0 else (NEG_INF if x == 0 else math.nan)


def logsumexp(values: Iterable[float]) -> float:
    """``log Σ e^{vᵢ}``, exact to rounding for any spread of the ``vᵢ``; ``−∞`` for an empty sum or one of ``−∞``
    only."""
    values = [v for v in values if v != NEG_INF]
    if len(values) < 2:
        return values[0] if values else NEG_INF
    top = max(values)
    if top == math.inf:
        return math.inf
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def logaddexp(a: float, b: float) -> float:
    """``log(eᵃ + eᵇ)``."""
    top, low = (a, b) if a >= b else (b, a)
    if low == NEG_INF or top == math.inf:
        return top
    return top + math.log1p(math.exp(low - top))


def log1mexp(x: float) -> float:
    """``log(1 − eˣ)`` for ``x ≤ 0`` (Mächler 2012: ``expm1`` near 0, ``log1p`` far from it); ``−∞`` at ``x = 0``."""
    if x > 0:
        return math.nan
    return log0(-math.expm1(x)) if x > -math.log(2.0) else math.log1p(-math.exp(x))


@dataclass(frozen=True)
class Relaxation:
    """The outcome of :func:`relax`: ``log rⁿ⁺¹`` and the weight ``ξ`` it gives the unrelaxed ``r̃``."""

    log_r: float
    xi: float


def relax(log_r_old: float, log_r_tilde: float, log_r_hat: float, log_moved: float, eta: float) -> Relaxation:
    """The relaxation of Ma, Mao & Shen (2024, Alg. 4), in closed form and in logarithms.

    Alg. 4 takes ``rⁿ⁺¹ = ξ r̃ + (1 − ξ) r̂`` with the smallest ``ξ ∈ [0, 1]`` such that ``(rⁿ⁺¹)² ≤ r̃² + η D``. The
    right-hand side does not depend on ``ξ`` and ``rⁿ⁺¹`` moves linearly from ``r̂`` (``ξ = 0``) to ``r̃`` (``ξ = 1``),
    which satisfies it, so the answer is

        ``rⁿ⁺¹ = min(r̂, √(r̃² + η D))``,   ``ξ = (r̂ − rⁿ⁺¹) / (r̂ − r̃)``  (``ξ = 0`` when ``r̂`` itself satisfies it),

    without the quadratic formula, whose ``b² − 4ac`` cancels once ``r̂/r̃ ≳ e¹²``. Here ``ℓ = log r`` throughout:
    ``ℓⁿ⁺¹ = min(ℓ̂, ½ log(e^{2ℓ̃} + η e^{log D}))`` and ``ξ = expm1(ℓⁿ⁺¹ − ℓ̂) / expm1(ℓ̃ − ℓ̂)``.

    Ma et al. take ``D = ‖wⁿ⁺¹ − wⁿ‖² / Δt`` (``log_moved``). For SAV the vanilla step gives ``‖Δw‖²/Δt ≤ (rⁿ)² − r̃²``,
    so ``D = min(‖Δw‖²/Δt, (rⁿ)² − r̃²)`` is the same number there; for ExpSAV, where that bound does not follow from
    the scheme, the minimum is what keeps ``rⁿ⁺¹ ≤ rⁿ`` (as ``η ≤ 1``). With it, ``(rⁿ⁺¹)² ≤ (rⁿ)² − (1 − η) D`` for
    both.
    """
    log_gap = 2.0 * log_r_old + log1mexp(2.0 * (log_r_tilde - log_r_old)) if log_r_tilde < log_r_old else NEG_INF
    log_d = min(log_moved, log_gap)
    log_bound = 0.5 * logaddexp(2.0 * log_r_tilde, math.log(eta) + log_d)
    if log_r_hat <= log_bound:
        return Relaxation(log_r_hat, 0.0)
    xi = math.expm1(log_bound - log_r_hat) / math.expm1(log_r_tilde - log_r_hat)
    return Relaxation(log_bound, min(max(xi, 0.0), 1.0))
