"""ExpSAV: the exponential scalar auxiliary variable method, ``r ≈ C·exp(L)``, kept as ``log r``."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .auxiliary import AuxiliaryVariableOptimizer
from .settings import sav_defaults


class ExpSAV(AuxiliaryVariableOptimizer):
    r"""Exponential SAV in the seed's "stable" form (without an ``r⁻ⁿ`` factor), with ``𝓛 = λI``.

    .. code-block:: text

        input: Δt (lr), C, λ (lam), variant, η (eta, relax only); w⁰; r⁰ = C·exp(L(w⁰)) on the first mini-batch
        for n = 0, 1, …
            g  = ∇L(wⁿ);   g̃ = g / (1 + Δt λ);   Sⁿ = ⟨g, g̃⟩
            restart:          rⁿ ← C·exp(L(wⁿ))
            rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / rⁿ)
            seed / restart:   wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹ / rⁿ) g̃
            vanilla / relax:  wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹ / (C·exp(L(wⁿ)))) g̃
            relax:            rⁿ⁺¹ ← ξ rⁿ⁺¹ + (1 − ξ) C·exp(L(wⁿ⁺¹))   (ξ: see logspace.relax; η = 0.99)

    ``variant="seed"`` (the default) carries ``r`` from step to step, as the seed does. ``r`` is never formed: the
    optimizer keeps ``ℓ = log r`` and steps ``ℓⁿ⁺¹ = ℓⁿ − softplus(log(Δt Sⁿ) − ℓⁿ)``, exact in floating point where
    ``C·exp(L)`` would overflow (``L > 709`` in float64, ``L > 88`` in float32: exp2's first losses are in the
    thousands). Note what the formula does there: with ``rⁿ`` astronomically large, ``rⁿ⁺¹/rⁿ = 1`` to machine precision
    and the step is a gradient step of size ``Δt / (1 + Δt λ)``.

    ``vanilla`` and ``relax`` step by ``rⁿ⁺¹/(C·exp(L(wⁿ))) = exp(ℓⁿ⁺¹ − log C − L(wⁿ))``: when the loss falls far below
    the loss that the carried ``r`` remembers (a next mini-batch 100 lower is enough), that factor is ``e¹⁰⁰`` and the
    step blows up; ``relax`` follows a falling loss within a batch but not across batches. At losses of order one they
    behave; at exp2's they do not. The seed and restart forms step by ``rⁿ⁺¹/rⁿ ≤ 1``.

    The modified energy logged is ``log r − log C``, the loss that ``r`` stands for.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` (its time step) and ``lam``; ``C``,
            ``variant``, ``eta`` and ``particles`` are the whole optimizer's.
        lr: the time step ``Δt`` (> 0); seed default 0.1.
        C: the scale of ``r = C·exp(L)`` (> 0; seed default 1).
        lam: ``λ ≥ 0`` of ``𝓛 = λI`` (seed default 1).
        variant: ``"seed"``, ``"restart"``, ``"vanilla"`` or ``"relax"``.
        eta: ``η ∈ (0, 1]`` of the relaxation (0.99).
        particles: ``m ≥ 1``: inner products of the gradient are particle averages ``(1/m) Σ_k u_k·v_k`` — the paper's
            particle time, where the closure back-propagates ``m·L`` (``GradientFlowModule(particle_time=True)`` does
            both); 1 (the default): Euclidean.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        C: float = 1.0,
        lam: float = 1.0,
        variant: str = "seed",
        eta: float = 0.99,
        particles: int = 1,
    ) -> None:
        super().__init__(params, sav_defaults(lr, C, lam, variant, eta, particles))

    def _log_r_hat(self, loss: float) -> float:
        return loss + math.log(self.setting("C"))

    def _log_kappa(self, loss: float, log_r: float) -> float:
        return log_r

    def _record(self, log_r: float, loss: float) -> dict[str, float]:
        return {"energy/modified": log_r - math.log(self.setting("C"))}
