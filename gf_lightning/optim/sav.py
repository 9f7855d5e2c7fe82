"""SAV: the scalar auxiliary variable method (Shen, Xu & Yang 2018) for training, as in the seed and Ma, Mao & Shen
(2024)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .auxiliary import AuxiliaryVariableOptimizer
from .base import GFStepError
from .logspace import exp0
from .settings import sav_defaults


class SAV(AuxiliaryVariableOptimizer):
    r"""Scalar auxiliary variable method with ``r ≈ √(L + C)`` and the linear operator ``𝓛 = λI``.

    .. code-block:: text

        input: Δt (lr), C, λ (lam), variant, η (eta, relax only); w⁰; r⁰ = √(L(w⁰) + C) on the first mini-batch
        for n = 0, 1, …
            g  = ∇L(wⁿ);   g̃ = g / (1 + Δt λ);   Sⁿ = ⟨g, g̃⟩
            seed / restart:   rⁿ ← √(L(wⁿ) + C)
            rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / (2 (L(wⁿ) + C)))
            seed / restart:   wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹ / rⁿ) g̃
            vanilla / relax:  wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹ / √(L(wⁿ) + C)) g̃
            relax:            rⁿ⁺¹ ← ξ rⁿ⁺¹ + (1 − ξ) √(L(wⁿ⁺¹) + C)   (ξ: see logspace.relax; η = 0.99)

    ``variant="seed"`` (the default) is the seed's formula. There ``rⁿ`` cancels from ``rⁿ⁺¹/rⁿ``, so it is exactly
    ``restart`` (Ma, Mao & Shen 2024, Alg. 3), and the two names are one method here. ``vanilla`` is their Alg. 2 (``r``
    carries memory and never rises), ``relax`` their Alg. 4 (the modified energy ``r²`` never rises, and ``r`` tracks
    ``√(L + C)``).

    The modified energy logged is ``r² − C``, on the scale of the loss it stands for. A restart above the value the last
    step left is counted in ``energy/restart_rises``, not as a violation: the restart form allows it.

    Theorem (every variant but ``relax``, with ``rⁿ`` after any restart): ``(rⁿ)² − (rⁿ⁺¹)² = (1/Δt + λ)‖Δw‖² +
    (rⁿ⁺¹ − rⁿ)²``, so ``r`` never rises within a step; ``relax``: ``(rⁿ⁺¹)² ≤ (rⁿ)² − (1 − η) D``.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` (its time step) and ``lam``; ``C``,
            ``variant``, ``eta`` and ``particles`` are the whole optimizer's.
        lr: the time step ``Δt`` (> 0). Seed's default 0.01 (exp2/3/4 use 0.01–0.1, exp1 0.5).
        C: the shift with ``L + C > 0`` (> 0; seed default 100). ``L + C ≤ 0`` at the first step is an error.
        lam: ``λ ≥ 0`` of ``𝓛 = λI`` (seed default 4).
        variant: ``"seed"`` (= ``"restart"``), ``"vanilla"`` or ``"relax"``.
        eta: ``η ∈ (0, 1]`` of the relaxation (0.99).
        particles: ``m ≥ 1``: inner products of the gradient are particle averages ``(1/m) Σ_k u_k·v_k`` — the paper's
            particle time, where the closure back-propagates ``m·L`` (``GradientFlowModule(particle_time=True)`` does
            both); 1 (the default): Euclidean.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        C: float = 100.0,
        lam: float = 4.0,
        variant: str = "seed",
        eta: float = 0.99,
        particles: int = 1,
    ) -> None:
        super().__init__(params, sav_defaults(lr, C, lam, variant, eta, particles))

    @property
    def _restarts(self) -> bool:
        return self.setting("variant") in ("seed", "restart")

    def _log_r_hat(self, loss: float) -> float:
        C = self.setting("C")
        shifted = loss + C
        if not shifted > 0:
            raise GFStepError(f"SAV needs L + C > 0: the loss is L = {loss:.6g} and C = {C:g}; choose C > {-loss:.6g}")
        return 0.5 * math.log(shifted)

    def _log_kappa(self, loss: float, log_r: float) -> float:
        return math.log(2.0) + math.log(loss + self.setting("C"))

    def _record(self, log_r: float, loss: float) -> dict[str, float]:
        return {"energy/modified": exp0(2.0 * log_r) - self.setting("C")}  # r² − C
