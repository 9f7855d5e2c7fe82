"""IEQ with the adaptive step: the invariant energy quadratization with ``‖J‖²`` estimated as ``‖g‖² / ‖q‖²``."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .auxiliary import AuxiliaryVariableOptimizer
from .base import GFStepError
from .logspace import exp0, log0, logaddexp
from .settings import check_positive


class IEQAdaptive(AuxiliaryVariableOptimizer):
    r"""IEQ, adaptive form (the seed's method B): an ``O(n)`` step with a shrinking auxiliary vector ``q``.

    .. code-block:: text

        input: Δt (lr), ε (eps), variant; w⁰; ‖q⁰‖ = √(2 L(w⁰)) on the first mini-batch
        for n = 0, 1, …
            g = ∇L(wⁿ)
            restart:  ‖qⁿ‖ ← √(2 L(wⁿ))
            αⁿ   = 1 / (1 + Δt ‖g‖² / (‖qⁿ‖² + ε))
            qⁿ⁺¹ = αⁿ qⁿ
            wⁿ⁺¹ = wⁿ − Δt αⁿ g

    ``variant="seed"`` (the default) carries ``q``, so ``‖q‖`` never rises; once ``‖q‖² ≲ Δt ‖g‖²`` the step collapses
    and training freezes (the known failure of this form). ``"restart"`` resets ``q`` to the current batch's residual.

    What ``q`` is: IEQ writes the loss as ``L = ½‖q‖²``. For the mean squared error over a batch of ``B`` that makes ``q
    = √(2/B)·(f(X) − Y)``, which is exactly consistent with ``g = Jᵀq`` and so with the estimate ``‖J‖² ≈ ‖g‖²/‖q‖²``.
    ``q`` is only ever rescaled by ``αⁿ``, and only ``‖q‖`` enters the update, so the optimizer keeps ``ℓ = log ‖q‖``
    (state ``"log_q"``) and takes ``‖q⁰‖ = √(2 L(w⁰))``, which works for any loss (cross-entropy included).

    The modified energy logged is ``½‖q‖²``, on the scale of the loss.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` (its time step); ``eps``,
            ``variant`` and ``particles`` are the whole optimizer's.
        lr: the time step ``Δt`` (> 0); seed default 0.1.
        eps: ``ε > 0`` in the denominator (seed default 1e-8).
        variant: ``"seed"`` or ``"restart"``.
        particles: ``m ≥ 1``: inner products of the gradient are particle averages ``(1/m) Σ_k u_k·v_k`` — the paper's
            particle time, where the closure back-propagates ``m·L`` (``GradientFlowModule(particle_time=True)`` does
            both); 1 (the default): Euclidean.
    """

    variants = ("seed", "restart")
    aux_key = "log_q"
    per_group_settings = {"lr": check_positive}
    shared_settings = ("eps", "variant", "particles")

    def __init__(
        self, params: Iterable, lr: float = 0.1, eps: float = 1e-8, variant: str = "seed", particles: int = 1
    ) -> None:
        check_positive("eps", eps)
        super().__init__(params, dict(lr=lr, eps=float(eps), variant=variant, particles=particles))

    def _log_r_hat(self, loss: float) -> float:
        if loss < 0:
            raise GFStepError(
                f"IEQAdaptive writes the loss as L = ½‖q‖², so L must be >= 0; the closure returned L = {loss:.6g}"
            )
        return 0.5 * log0(2.0 * loss)

    def _log_kappa(self, loss: float, log_r: float) -> float:
        return logaddexp(2.0 * log_r, math.log(self.setting("eps")))  # log(‖q‖² + ε)

    def _record(self, log_r: float, loss: float) -> dict[str, float]:
        return {"energy/modified": 0.5 * exp0(2.0 * log_r)}  # ½q²
