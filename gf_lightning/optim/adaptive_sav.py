"""Adaptive SAV: Adam's step-size strategy inside each SAV scheme (Ma, Mao & Shen 2024, Alg. 5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .auxiliary import Evaluation, GradientGroup
from .logspace import NEG_INF, exp0, log0, log1mexp, logaddexp, softplus
from .sav import SAV
from .settings import check_betas, check_choice, check_count, check_fraction, check_nonnegative, check_positive


@dataclass(slots=True)
class MomentGroup(GradientGroup):
    """A :class:`~.auxiliary.GradientGroup` whose direction is the bias-corrected first moment ``m̂ = m/(1 − β1ᵗ)``.

    ``grads`` holds the new (uncorrected) first moments ``mⁿ⁺¹``, which :meth:`AdaptiveSAV.step` stores once the step
    has succeeded; ``log_scale = −log(1 − β1ᵗ)`` turns them into ``m̂``. ``log_dt`` is ``log Δt̂_g``, ``log_c`` is
    ``log(Δt̂_g/(1 + Δt̂_g λ_g))`` and ``log_g2`` is ``log ‖m̂_g‖²``: the fields mean what they mean for SAV with ``m̂``
    for ``g`` and ``Δt̂`` for ``Δt``."""

    log_scale: float = 0.0


class AdaptiveSAV(SAV):
    r"""Adaptive SAV (A-SAV, A-ResSAV, A-RelSAV): Ma, Mao & Shen (2024), Alg. 5, with ``𝓛 = λI``.

    .. code-block:: text

        input: Δt (lr), C, λ (lam), variant, (β1, β2) (betas), ε (eps), η (eta, relax only)
               w⁰; m⁰ = 0, v⁰ = 0; r⁰ = √(L(w⁰) + C) on the first mini-batch
        for n = 0, 1, …   (t = n + 1)
            g = ∇L(wⁿ)
            mⁿ⁺¹ = β1 mⁿ + (1 − β1) g            a vector (per parameter, like Adam's exp_avg)
            vⁿ⁺¹ = β2 vⁿ + (1 − β2) ‖g‖²         a scalar: the squared norm of the whole gradient, all groups
            m̂ = mⁿ⁺¹ / (1 − β1ᵗ);   v̂ = vⁿ⁺¹ / (1 − β2ᵗ);   Δt̂ = Δt / √(v̂ + ε)
            then SAV (see SAV) with N̂ = m̂ for the gradient and Δt̂ for Δt:
            ĝ = m̂ / (1 + Δt̂ λ);   Ŝ = ⟨m̂, ĝ⟩
            restart:          rⁿ ← √(L(wⁿ) + C)                                    (Alg. 3)
            rⁿ⁺¹ = rⁿ / (1 + Δt̂ Ŝ / (2 (L(wⁿ) + C)))
            restart:          wⁿ⁺¹ = wⁿ − Δt̂ (rⁿ⁺¹ / rⁿ) ĝ
            vanilla / relax:  wⁿ⁺¹ = wⁿ − Δt̂ (rⁿ⁺¹ / √(L(wⁿ) + C)) ĝ              (Alg. 2)
            relax:            rⁿ⁺¹ ← ξ rⁿ⁺¹ + (1 − ξ) √(L(wⁿ⁺¹) + C),  D = ‖wⁿ⁺¹ − wⁿ‖² / Δt̂   (Alg. 4; η = 0.99)

    The ``r`` recursion has SAV's form with ``Δt̂ Ŝ ≥ 0``, so ``r`` never rises within a step, whatever ``m̂`` is; and
    SAV's theorem holds with ``m̂`` for ``g`` (its proof never uses that ``g`` is the gradient): for ``vanilla`` (and
    ``restart`` from the restarted ``r``) ``(rⁿ)² − (rⁿ⁺¹)² = (1/Δt̂ + λ)‖Δw‖² + (rⁿ⁺¹ − rⁿ)²``; for ``relax`` ``(rⁿ⁺¹)²
    ≤ (rⁿ)² − (1 − η) D``. The modified energy ``r²`` never rises for ``vanilla`` and ``relax``; ``restart`` resets it
    each step (rises are counted in ``energy/restart_rises``). What the scheme does not promise: ``m̂`` is not the
    gradient, so the loss itself may rise for a step (as under Adam) while ``r²`` falls.

    Choices the paper leaves open, decided here:

    - ``variant="relax"`` is the default (A-RelSAV, the method of the paper's Fig. 10): its ``r²`` never rises, and the
      relaxation pulls ``r`` back toward ``√(L + C)`` each step. ``"vanilla"`` (the paper's A-SAV proper) carries ``r``
      with no way back up (SPEC §2's failure of vanilla SAV): on exp1 at ``lr = 1``, 20 epochs, ``r² − C`` ended at
      −13.7 for vanilla and −3.8 for relax, at a loss of about 0.5. (Relax gives back at most ``η D`` a step, so the
      ``λ‖Δw‖²`` part of each decrease stays lost and ``r² − C`` still drifts below the loss.) ``relax`` costs a second
      closure call per step; ``"vanilla"`` and ``"restart"`` cost one.
    - Per-group step sizes: ``v̂`` is one scalar over every group's gradient (the spec's ``‖N‖²``), and each group takes
      ``Δt̂_g = Δt_g / √(v̂ + ε)``; as in SAV, ``Δt̂ Ŝ`` is ``Σ_g Δt̂_g Ŝ_g``, each group moves by its own
      ``Δt̂_g ĝ_g``, and relax's ``D`` is ``Σ_g ‖Δw_g‖² / Δt̂_g``. One group with ``lr = Δt`` is exactly Alg. 5.
      ``lr = 0`` (a warm-up scheduler) moves nothing but the moments still advance, as Adam's do.
    - ``optim/effective_lr`` is the step that multiplies ``m̂`` in ``wⁿ⁺¹ = wⁿ − (effective_lr) m̂`` for the first
      group: ``φ Δt̂ / (1 + Δt̂ λ)`` with ``φ = rⁿ⁺¹/rⁿ`` (restart) or ``rⁿ⁺¹/√(L + C)`` (vanilla, relax) — SAV's
      ``φ Δt/(1 + Δt λ)`` with its ``Δt`` replaced by ``Δt̂`` and ``g`` by ``m̂``.
    - State: ``exp_avg`` (``m``) per parameter, as Adam keeps it; the global scalars (with the first parameter) are
      SAV's ``log_r``, ``step``, ``violations``, ``restart_rises`` and ``log_v = log v`` (kept in logarithms like ``r``:
      ``‖g‖²`` of a float64 model may pass 1e308). A step refused before it moves the weights (``L + C ≤ 0``, a closure
      that returns no loss) leaves ``m``, ``v``, ``r`` and the counters as they were: ``m`` is formed out of place and
      stored, with ``v``, once the step is done.
    - Under DDP the gradient is the ranks' mean (DDP's doing) and the loss is averaged over ranks before it enters
      ``r``; every rank then computes the same ``m``, ``v`` and step.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` and ``lam``; ``C``, ``variant``,
            ``betas``, ``eps``, ``eta`` and ``particles`` are the whole optimizer's (``v`` and ``r`` are one scalar
            each).
        lr: the time step ``Δt`` (> 0) before the adaptive scaling; the paper runs 0.01 to 1.
        C: the shift with ``L + C > 0`` (> 0; the paper's Examples 1 and 3 use 100).
        lam: ``λ ≥ 0`` of ``𝓛 = λI`` (the paper's 4).
        variant: ``"relax"`` (A-RelSAV, the default), ``"vanilla"`` (A-SAV) or ``"restart"`` (A-ResSAV).
        betas: ``(β1, β2)`` in ``[0, 1)``, Adam's (0.9, 0.999).
        eps: ``ε > 0`` in ``√(v̂ + ε)`` (1e-8).
        eta: ``η ∈ (0, 1]`` of the relaxation (0.99).
        particles: ``m ≥ 1``: inner products of the gradient are particle averages ``(1/m) Σ_k u_k·v_k`` — the paper's
            particle time, where the closure back-propagates ``m·L`` (``GradientFlowModule(particle_time=True)`` does
            both); 1 (the default): Euclidean.
    """

    variants = ("vanilla", "restart", "relax")
    per_group_settings = {"lr": check_positive, "lam": check_nonnegative}
    shared_settings = ("C", "variant", "eta", "betas", "eps", "particles")
    #: the state key of ``log v``
    second_moment_key = "log_v"

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        C: float = 100.0,
        lam: float = 4.0,
        variant: str = "relax",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eta: float = 0.99,
        particles: int = 1,
    ) -> None:
        defaults = dict(
            lr=check_positive("lr", lr),
            C=check_positive("C", C),
            lam=check_nonnegative("lam", lam),
            variant=check_choice("variant", variant, self.variants),
            betas=check_betas("betas", betas),
            eps=check_positive("eps", eps),
            eta=check_fraction("eta", eta),
            particles=check_count("particles", particles),
        )
        self._pending: tuple[list[tuple[Tensor, Tensor]], float] | None = None
        super(SAV, self).__init__(params, defaults)  # AuxiliaryVariableOptimizer's, with these defaults

    # -- the moments ---------------------------------------------------------------------------------------------------
    def _evaluate(self, closure: Callable[[], Any]) -> Evaluation:
        """Run the closure at ``wⁿ``, form ``mⁿ⁺¹`` (out of place: it is stored only when the step succeeds), and read
        the loss, ``‖g‖`` and ``‖mⁿ⁺¹‖`` of every tensor back from the device in one transfer; then ``vⁿ⁺¹``, ``Δt̂_g``
        and ``‖m̂_g‖²`` on the host, in logarithms."""
        with torch.enable_grad():
            returned = closure()
        loss = self._mean_loss(returned)
        beta1, beta2 = self.setting("betas")
        state = self.global_state
        t = int(state["step"].item()) + 1 if "step" in state else 1
        entries, g_norms, m_norms = [], [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            avgs = [self.state[p].get("exp_avg") for p in params]
            avgs = [
                torch.zeros_like(p, memory_format=torch.preserve_format) if a is None else a
                for p, a in zip(params, avgs)
            ]
            moments = list(torch._foreach_lerp(avgs, grads, 1.0 - beta1))  # β1 m + (1 − β1) g, as Adam's lerp_
            entries.append((group, params, moments))
            g_norms += torch._foreach_norm(grads)
            m_norms += torch._foreach_norm(moments)
        scalars = [loss, *g_norms, *m_norms]
        if len({s.dtype for s in scalars}) > 1 or loss.dtype not in (torch.float32, torch.float64):
            scalars = [s.to(torch.float64) for s in scalars]  # keep a bfloat16 loss's digits
        values = torch.stack(scalars).tolist()
        count = len(g_norms)
        g_values, m_values = values[1 : 1 + count], values[1 + count :]

        # vⁿ⁺¹ = β2 vⁿ + (1 − β2)‖g‖² in logs; v̂ = vⁿ⁺¹/(1 − β2ᵗ); log √(v̂ + ε)
        log_g2 = self._log_sq_norm(g_values) if g_values else NEG_INF
        log_v_old = state[self.second_moment_key].item() if self.second_moment_key in state else NEG_INF
        log_v = logaddexp(log0(beta2) + log_v_old, math.log1p(-beta2) + log_g2)
        log_v_hat = log_v - log1mexp(t * log0(beta2))
        log_root = 0.5 * logaddexp(log_v_hat, math.log(self.setting("eps")))
        log_scale = -log1mexp(t * log0(beta1))  # m̂ = mⁿ⁺¹ · e^{log_scale}

        groups, start, pending = [], 0, []
        for group, params, moments in entries:
            n = len(moments)
            log_dt = log0(group["lr"]) - log_root  # log Δt̂_g
            log_c = log_dt - softplus(log_dt + log0(group["lam"]))  # log(Δt̂_g / (1 + Δt̂_g λ_g))
            log_m2 = self._log_sq_norm(m_values[start : start + n]) + 2.0 * log_scale  # log ‖m̂_g‖²
            groups.append(MomentGroup(params, moments, log_dt, log_c, log_m2, log_scale))
            pending += zip(params, moments)
            start += n
        self._pending = (pending, log_v)
        return Evaluation(returned, values[0], groups)

    def _move(self, groups: list[GradientGroup], log_factor: float) -> None:
        """``w_g ← w_g − φ c_g m̂_g``, with ``m̂_g = mⁿ⁺¹_g e^{log_scale}``, for every group that has a step."""
        for entry in groups:
            if entry.log_c == NEG_INF or entry.log_g2 == NEG_INF:
                continue
            alpha = exp0(log_factor + entry.log_c + entry.log_scale)  # type: ignore[attr-defined]
            alpha = min(alpha, torch.finfo(entry.params[0].dtype).max)
            torch._foreach_add_(entry.params, entry.grads, alpha=-alpha)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step (see the class). ``closure`` zeroes the gradients, computes the mean mini-batch loss,
        back-propagates and returns the loss; it is required. Returns what the closure returned. The moments ``m`` and
        ``v`` are stored only once the step has succeeded."""
        self._pending = None
        try:
            returned = super().step(closure)
            pending, log_v = self._pending
        finally:
            self._pending = None
        for p, moment in pending:
            self.state[p]["exp_avg"] = moment
        state = self.global_state
        if self.second_moment_key in state:
            state[self.second_moment_key].fill_(log_v)
        else:
            state[self.second_moment_key] = self._scalar(log_v)
        return returned

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # the base puts the first parameter's 0-dim tensors back where the global scalars live (CPU): a 0-dim first
        # parameter's exp_avg belongs with its parameter
        for group in self.param_groups:
            for p in group["params"]:
                avg = self.state[p].get("exp_avg") if p in self.state else None
                if avg is not None and (avg.device != p.device or avg.dtype != p.dtype):
                    self.state[p]["exp_avg"] = avg.to(device=p.device, dtype=p.dtype)
