"""What the energy-stable optimizers share: validators, one exception type, the closure protocol, cross-rank reduction.

Every optimizer here is a ``torch.optim.Optimizer``. Scalars that are global to the optimizer (the auxiliary variable, counters)
live in ``self.state`` of the first parameter, as ``torch.optim.LBFGS`` keeps its own, so that ``state_dict()`` carries them
and ``load_state_dict()`` moves them to the parameters' device.

Per-group step sizes: a group's ``lr`` is its own time step ``Δt_g`` (a diagonal mobility in the gradient flow). Where the
formulas of SPEC §2 have the product ``Δt·Sⁿ`` or ``Δt·‖g‖²``, the optimizers use ``Σ_g Δt_g S_g``, which is the same number when
every group has one ``lr`` and keeps each energy estimate exact when they differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import GFConfigError, GFStepError


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GFConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GFConfigError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise GFConfigError(f"{name} must be in (0, 1]; got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise GFConfigError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


NO_CLOSURE = (
    "{cls}.step() needs a closure that zeroes the gradients, computes the loss, back-propagates and returns the loss. "
    "Called without one: 16-bit mixed precision with a gradient scaler does this; use precision '32-true', '64-true' or "
    "'bf16-mixed' with the energy-stable methods."
)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_mean_(t: Tensor) -> Tensor:
    """Average a tensor over all ranks in place (a no-op on one process). gloo has no AVG, so SUM then divide."""
    n = world_size()
    if n > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(n)
    return t


class EnergyOptimizer(torch.optim.Optimizer):
    """Base of the scalar-auxiliary-variable methods: evaluates the closure and reduces what it needs across ranks.

    Subclasses implement :meth:`_update`. The scalars that a step produces for logging are kept in ``self.stats`` (0-dim
    tensors on the parameters' device, never synchronised to the host here).
    """

    #: Names of the global state entries, in the first parameter's ``state``.
    stat_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.stats: dict[str, Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # validate per-group overrides as strictly as the defaults
        for key in ("lr", "lam"):
            if key in param_group:
                (check_positive if key == "lr" else check_nonnegative)(key, param_group[key])
        super().add_param_group(param_group)

    # -- state -------------------------------------------------------------------------------------------------------------
    @property
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def global_state(self) -> dict[str, Any]:
        """The optimizer's global scalars, stored with the first parameter so that ``state_dict()`` carries them."""
        return self.state[self.param_groups[0]["params"][0]]

    def _scalar(self, value: float | Tensor) -> Tensor:
        """A 0-dim tensor in the parameters' dtype and device: ``Optimizer.load_state_dict`` casts floating state to the
        parameter's dtype, so state kept in any other dtype would not survive a checkpoint bit for bit."""
        p = self.param_groups[0]["params"][0]
        return torch.as_tensor(value, dtype=p.dtype, device=p.device)

    def _grad_terms(self) -> tuple[Tensor, list[tuple[float, float, list[Tensor], list[Tensor], Tensor]]]:
        """``(Σ_g Δt_g ⟨g_g, g̃_g⟩, groups)`` with ``g̃ = g / (1 + Δt λ)`` (``λ = 0`` where a method has none).

        Each entry of ``groups`` is ``(Δt_g, c_g, params, grads, ‖g_g‖²)`` with ``c_g = Δt_g / (1 + Δt_g λ_g)`` the step that
        multiplies ``g_g``. Under DDP the gradients are already averaged over ranks, so this is the same on every rank.
        """
        dt_s = self._scalar(0.0)
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            g2 = torch.stack(torch._foreach_norm(grads)).to(dt_s.dtype).square().sum()
            dt = group["lr"]
            c = dt / (1.0 + dt * group.get("lam", 0.0))
            dt_s = dt_s + c * g2
            groups.append((dt, c, params, grads, g2))
        return dt_s, groups

    @staticmethod
    def _apply(groups, factor: Tensor) -> None:
        """``w_g ← w_g − factor · c_g · g_g`` for every group."""
        for _, c, params, grads, _ in groups:
            coef = (factor * c).to(params[0].dtype)
            for p, g in zip(params, grads):
                p.addcmul_(g, coef, value=-1.0)

    @staticmethod
    def _moved(groups, factor: Tensor) -> Tensor:
        """``Σ_g ‖wⁿ⁺¹_g − wⁿ_g‖² / Δt_g`` of the step just applied with ``factor``."""
        return sum((factor * c).square() * g2 / dt for dt, c, _, _, g2 in groups)

    def energy_stats(self) -> dict[str, Tensor]:
        """The scalars of the last step, for logging (``energy/…`` and ``optim/…``), as device tensors."""
        return dict(self.stats)


def relax_log(log_r_old: Tensor, log_r_tilde: Tensor, log_r_hat: Tensor, moved: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """The relaxation of Ma, Mao & Shen (2024, Alg. 4), in logarithms so that it holds for ExpSAV's ``r = C·exp(L)``.

    ``rⁿ⁺¹ = ξ r̃ + (1 − ξ) r̂`` with the smallest ``ξ ∈ [0, 1]`` such that ``(rⁿ⁺¹)² ≤ r̃² + η D``, that is
    ``a ξ² + b ξ + c ≤ 0`` with ``a = (r̃ − r̂)²``, ``b = 2 r̂ (r̃ − r̂)``, ``c = r̂² − r̃² − η D``:
    ``ξ = max{0, (−b − √(b² − 4ac)) / (2a)}`` clipped to ``[0, 1]``.

    Ma et al. take ``D = ‖wⁿ⁺¹ − wⁿ‖² / Δt``. For SAV the vanilla step guarantees ``‖wⁿ⁺¹ − wⁿ‖²/Δt ≤ (rⁿ)² − r̃²``, so
    ``D = min(‖Δw‖²/Δt, (rⁿ)² − r̃²)`` is the same number there, and it keeps ``rⁿ⁺¹ ≤ rⁿ`` for ExpSAV too, where that bound
    does not follow from the scheme. Every quantity is scaled by ``exp(−2M)``, ``M = max(log rⁿ, log r̃, log r̂)``, which leaves
    ``ξ`` unchanged and never overflows. Returns ``(log rⁿ⁺¹, ξ)``.
    """
    big = torch.maximum(torch.maximum(log_r_old, log_r_tilde), log_r_hat)
    r_old, r_tilde, r_hat = (torch.exp(v - big) for v in (log_r_old, log_r_tilde, log_r_hat))
    dissipation = torch.minimum(moved * torch.exp(-2.0 * big), (r_old - r_tilde) * (r_old + r_tilde))
    a = (r_tilde - r_hat).square()
    b = 2.0 * r_hat * (r_tilde - r_hat)
    c = r_hat.square() - r_tilde.square() - eta * dissipation.clamp_min(0.0)
    disc = (b.square() - 4.0 * a * c).clamp_min(0.0)
    root = (-b - disc.sqrt()) / (2.0 * a)
    xi = torch.where(a > 0, root, torch.zeros_like(root)).nan_to_num(0.0).clamp(0.0, 1.0)
    # log(ξ r̃ + (1 − ξ) r̂) without forming r̃ or r̂, which may under- or overflow
    log_new = torch.logaddexp(torch.log(xi) + log_r_tilde, torch.log1p(-xi) + log_r_hat)
    # the bound gives rⁿ⁺¹ ≤ rⁿ exactly; the minimum only absorbs rounding in the last bit
    return torch.minimum(log_new, log_r_old), xi


class AuxiliaryVariableOptimizer(EnergyOptimizer):
    """The common step of SAV, ExpSAV and IEQAdaptive, written in the logarithm ``ℓ`` of the auxiliary variable.

    Each method keeps one positive scalar ``r`` (``‖q‖`` for IEQAdaptive) whose recursion has the form
    ``rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / κⁿ)``, so that, with ``softplus(x) = log(1 + eˣ)``,

    ``ℓⁿ⁺¹ = ℓⁿ − softplus(log(Δt Sⁿ) − log κⁿ)``,

    which neither overflows nor loses ``r`` to underflow however large the loss. A subclass says what ``κⁿ`` is
    (:meth:`_log_kappa`) and which value ``r̂ = r(L)`` the loss stands for (:meth:`_log_r_hat`). The variants:

    - ``seed`` (carried ``r``, ``wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹/rⁿ) g̃``); ``restart``: the same after ``rⁿ ← r̂(L(wⁿ))``;
    - ``vanilla``: carried ``r``, ``wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹/r̂(L(wⁿ))) g̃``;
    - ``relax``: the vanilla step, then ``rⁿ⁺¹`` relaxed toward ``r̂(L(wⁿ⁺¹))`` by :func:`relax_log` (one more closure call).

    ``r⁰ = r̂(L(w⁰))`` on the first mini-batch: the optimizer sees one batch at a time, and a full-data ``r⁰`` would cost
    a pass over the training set (the public implementation did that; the difference is mini-batch noise in ``r⁰``).
    """

    variants: tuple[str, ...] = ("seed", "restart", "vanilla", "relax")
    #: the state key of ``ℓ`` and how the logged auxiliary variable is named
    aux_key = "log_r"

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        check_positive("lr", defaults["lr"])
        check_choice("variant", defaults["variant"], self.variants)
        super().__init__(params, defaults)

    # -- what a subclass defines -------------------------------------------------------------------------------------------
    def _log_r_hat(self, loss: Tensor) -> Tensor:
        """``log r̂(L)``, the value of the auxiliary variable that the loss ``L`` stands for."""
        raise NotImplementedError

    def _log_kappa(self, loss: Tensor, log_r: Tensor) -> Tensor:
        """``log κⁿ`` in ``rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / κⁿ)``."""
        raise NotImplementedError

    def _check_first_loss(self, loss: Tensor) -> None:
        """Called once, before the first step, with the first loss (a host sync, once)."""

    def _record(self, log_r: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """The method's own logged scalars: the auxiliary variable and the modified energy."""
        raise NotImplementedError

    @property
    def _resets(self) -> bool:
        return self.defaults["variant"] == "restart"

    # -- the step ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Take one step. ``closure`` zeroes the gradients, computes the mean mini-batch loss, back-propagates and returns
        the loss; it is required. Returns the closure's loss."""
        variant = self.defaults["variant"]
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=type(self).__name__))
        with torch.enable_grad():
            orig_loss = closure()
        loss = self._reduce_loss(orig_loss)
        state = self.global_state
        first = self.aux_key not in state
        if first:
            self._check_first_loss(loss)
            state["step"] = self._scalar(0.0)
            state["violations"] = self._scalar(0.0)
        log_hat = self._log_r_hat(loss)
        dt_s, groups = self._grad_terms()
        if first or self._resets:
            log_r = log_hat
            rose = torch.zeros((), dtype=torch.bool, device=log_hat.device) if first else log_hat > state[self.aux_key]
        else:
            log_r = state[self.aux_key]
            rose = torch.zeros((), dtype=torch.bool, device=log_hat.device)

        shrink = torch.nn.functional.softplus(torch.log(dt_s) - self._log_kappa(loss, log_r))
        log_new = log_r - shrink
        factor = torch.exp(-shrink) if variant in ("seed", "restart") else torch.exp(log_new - log_hat)
        self._apply(groups, factor)
        if variant == "relax":
            moved = self._moved(groups, factor)
            with torch.enable_grad():
                loss_next = self._reduce_loss(closure())
            log_new, xi = relax_log(log_r, log_new, self._log_r_hat(loss_next), moved, self.defaults["eta"])
            self.stats["optim/xi"] = xi
        rose = rose | (log_new > log_r)

        state[self.aux_key] = log_new
        state["step"] += 1
        state["violations"] += rose.to(state["violations"].dtype)
        group = self.param_groups[0]
        self.stats.update(self._record(log_new, loss))
        self.stats["energy/true"] = loss
        self.stats["energy/violations"] = state["violations"]
        self.stats["optim/effective_lr"] = factor * (group["lr"] / (1.0 + group["lr"] * group.get("lam", 0.0)))
        return orig_loss

    def _reduce_loss(self, loss: Any) -> Tensor:
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise GFStepError(
                f"{type(self).__name__}.step(closure): the closure must return the mean mini-batch loss as a one-element "
                f"tensor; it returned {type(loss).__name__}"
            )
        return global_mean_(loss.detach().reshape(()).to(self._scalar(0.0).dtype).clone())
