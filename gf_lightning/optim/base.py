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


def sav_defaults(lr: float, C: float, lam: float, variant: str, eta: float) -> dict[str, Any]:
    """The validated settings that SAV and ExpSAV share (their defaults differ, so each keeps its own signature)."""
    check_positive("C", C)
    check_nonnegative("lam", lam)
    check_fraction("eta", eta)
    return dict(lr=lr, C=float(C), lam=float(lam), variant=variant, eta=float(eta))


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
    """Base of the energy-stable methods: global state, per-group step sizes, the scalars a step reports.

    Global scalars (the auxiliary variable, counters) are float64 0-dim tensors: on the parameters' device for IEQ (float32 on
    MPS, which has no float64), on the host for the scalar-auxiliary-variable methods, whose arithmetic runs there.
    ``Optimizer.load_state_dict`` would cast them to the parameters' dtype and device, so :meth:`load_state_dict` puts them
    back as they were saved: a checkpoint round trip is exact whatever the parameters' dtype.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._stats: dict[str, Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # validate per-group overrides as strictly as the defaults
        for key in ("lr", "lam"):
            if key in param_group:
                (check_positive if key == "lr" else check_nonnegative)(key, param_group[key])
        super().add_param_group(param_group)

    # -- state -------------------------------------------------------------------------------------------------------------
    @property
    def global_state(self) -> dict[str, Any]:
        """The optimizer's global scalars, stored with the first parameter so that ``state_dict()`` carries them."""
        return self.state[self.param_groups[0]["params"][0]]

    @property
    def _scalar_dtype(self) -> torch.dtype:
        return torch.float32 if self.param_groups[0]["params"][0].device.type == "mps" else torch.float64

    def _scalar(self, value: float | Tensor) -> Tensor:
        """A 0-dim tensor of the global-state dtype on the parameters' device."""
        return torch.as_tensor(value, dtype=self._scalar_dtype, device=self.param_groups[0]["params"][0].device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        first = state_dict["param_groups"][0]["params"][0]
        saved = {k: v for k, v in state_dict["state"].get(first, {}).items() if isinstance(v, Tensor) and v.dim() == 0}
        super().load_state_dict(state_dict)
        device = self._scalar(0.0).device
        for key, value in saved.items():  # undo the cast to the parameters' dtype and device
            self.global_state[key] = value.to(device=device, copy=True)

    @property
    def stats(self) -> dict[str, Tensor]:
        """The scalars of the last step, for logging (``energy/…`` and ``optim/…``), as 0-dim device tensors."""
        return self._stats


def softplus(x: float) -> float:
    """``log(1 + eˣ)`` for a float, without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def exp0(x: float) -> float:
    """``eˣ`` for a float, ``inf`` past the float range instead of an OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def log0(x: float) -> float:
    """``log x`` with ``log 0 = −∞`` (and NaN through)."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def relax_log(log_r_old: float, log_r_tilde: float, log_r_hat: float, moved: float, eta: float) -> tuple[float, float]:
    """The relaxation of Ma, Mao & Shen (2024, Alg. 4), in logarithms so that it holds for ExpSAV's ``r = C·exp(L)``.

    ``rⁿ⁺¹ = ξ r̃ + (1 − ξ) r̂`` with the smallest ``ξ ∈ [0, 1]`` such that ``(rⁿ⁺¹)² ≤ r̃² + η D``, that is
    ``a ξ² + b ξ + c ≤ 0`` with ``a = (r̃ − r̂)²``, ``b = 2 r̂ (r̃ − r̂)``, ``c = r̂² − r̃² − η D``:
    ``ξ = max{0, (−b − √(b² − 4ac)) / (2a)}`` clipped to ``[0, 1]``.

    Ma et al. take ``D = ‖wⁿ⁺¹ − wⁿ‖² / Δt``. For SAV the vanilla step guarantees ``‖wⁿ⁺¹ − wⁿ‖²/Δt ≤ (rⁿ)² − r̃²``, so
    ``D = min(‖Δw‖²/Δt, (rⁿ)² − r̃²)`` is the same number there, and it keeps ``rⁿ⁺¹ ≤ rⁿ`` for ExpSAV too, where that bound
    does not follow from the scheme. Every quantity is scaled by ``exp(−2M)``, ``M = max(log rⁿ, log r̃, log r̂)``, which leaves
    ``ξ`` unchanged and never overflows. Returns ``(log rⁿ⁺¹, ξ)``.
    """
    big = max(log_r_old, log_r_tilde, log_r_hat)
    r_old, r_tilde, r_hat = (math.exp(v - big) for v in (log_r_old, log_r_tilde, log_r_hat))
    dissipation = max(0.0, min(moved * exp0(-2.0 * big), (r_old - r_tilde) * (r_old + r_tilde)))
    a = (r_tilde - r_hat) ** 2
    b = 2.0 * r_hat * (r_tilde - r_hat)
    c = r_hat**2 - r_tilde**2 - eta * dissipation
    xi = 0.0
    if a > 0:
        xi = (-b - math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
        xi = min(max(xi, 0.0), 1.0) if math.isfinite(xi) else 0.0
    # log(ξ r̃ + (1 − ξ) r̂) without forming r̃ or r̂, which may under- or overflow
    terms = [(w, v) for w, v in ((xi, log_r_tilde), (1.0 - xi, log_r_hat)) if w > 0]
    top = max(v for _, v in terms)
    log_new = top + math.log(sum(w * math.exp(v - top) for w, v in terms))
    # the bound gives rⁿ⁺¹ ≤ rⁿ exactly; the minimum only absorbs rounding in the last bit
    return min(log_new, log_r_old), xi


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

    The scalar arithmetic runs on the host in float64: a step reads two numbers back from the device (``L`` and ``‖g‖²``,
    in one transfer), and the update is then one fused ``_foreach_add_`` per parameter group. For these small networks that is
    cheaper than two dozen one-element kernels, on a CPU and on a GPU alike. The global state (``log_r`` or ``log_q``,
    ``step``, ``violations``) is kept as float64 0-dim CPU tensors.
    """

    variants: tuple[str, ...] = ("seed", "restart", "vanilla", "relax")
    #: the state key of ``ℓ``
    aux_key = "log_r"

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        check_positive("lr", defaults["lr"])
        check_choice("variant", defaults["variant"], self.variants)
        super().__init__(params, defaults)
        self._last: tuple[float, float, float, float | None] | None = None

    def _scalar(self, value: float | Tensor) -> Tensor:
        return torch.tensor(float(value), dtype=torch.float64)

    # -- what a subclass defines -------------------------------------------------------------------------------------------
    def _log_r_hat(self, loss: float) -> float:
        """``log r̂(L)``, the value of the auxiliary variable that the loss ``L`` stands for."""
        raise NotImplementedError

    def _log_kappa(self, loss: float, log_r: float) -> float:
        """``log κⁿ`` in ``rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / κⁿ)``."""
        raise NotImplementedError

    def _record(self, log_r: float, loss: float) -> dict[str, float]:
        """The method's own logged scalars: the auxiliary variable and the modified energy."""
        raise NotImplementedError

    @property
    def _resets(self) -> bool:
        return self.defaults["variant"] == "restart"

    # -- the step ------------------------------------------------------------------------------------------------------------
    def _evaluate(self, closure: Callable[[], Tensor]) -> tuple[Tensor, float, list]:
        """Run the closure; return its loss, the loss as a float averaged over ranks, and the gradient groups
        ``[Δt_g, c_g, params, grads, ‖g_g‖²]``. The loss and the gradient norms come back from the device in one transfer."""
        with torch.enable_grad():
            orig_loss = closure()
        loss = self._reduce_loss(orig_loss)
        groups, norms = [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                grads = [p.grad for p in params]
                dt = group["lr"]
                groups.append([dt, dt / (1.0 + dt * group.get("lam", 0.0)), params, grads, len(grads)])
                norms += torch._foreach_norm(grads)
        values = torch.stack([loss, *norms]) if all(n.dtype == loss.dtype for n in norms) else None
        if values is None or values.dtype not in (torch.float32, torch.float64):  # keep a bfloat16 loss's digits
            values = torch.stack([loss.to(torch.float64), *(n.to(torch.float64) for n in norms)])
        values = values.tolist()
        start = 1
        for entry in groups:
            count = entry[4]
            entry[4] = math.fsum(v * v for v in values[start : start + count])
            start += count
        return orig_loss, values[0], groups

    def _reduce_loss(self, loss: Any) -> Tensor:
        """The closure's loss as a detached 0-dim tensor of the state dtype, averaged over ranks."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise GFStepError(
                f"{type(self).__name__}.step(closure): the closure must return the mean mini-batch loss as a one-element "
                f"tensor; it returned {type(loss).__name__}"
            )
        value = loss.detach()
        if value.dim():
            value = value.reshape(())
        if world_size() > 1:
            value = global_mean_(value.to(self._scalar_dtype, copy=True))
        return value

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Take one step. ``closure`` zeroes the gradients, computes the mean mini-batch loss, back-propagates and returns
        the loss; it is required. Returns the closure's loss."""
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=type(self).__name__))
        orig_loss, loss, groups = self._evaluate(closure)
        variant = self.defaults["variant"]
        state = self.global_state
        log_hat = self._log_r_hat(loss)
        if self.aux_key not in state:  # r⁰ = r̂(L(w⁰))
            state.update({self.aux_key: self._scalar(log_hat), "step": self._scalar(0), "violations": self._scalar(0)})
        log_r = state[self.aux_key].item()
        if self._resets:
            # the only place the modified energy can rise: a restart above the value the last step left
            if log_hat > log_r:
                state["violations"] += 1
            log_r = log_hat

        dt_s = sum(c * g2 for _, c, _, _, g2 in groups)
        shrink = softplus(log0(dt_s) - self._log_kappa(loss, log_r))
        log_new = log_r - shrink
        factor = math.exp(-shrink) if variant in ("seed", "restart") else exp0(log_new - log_hat)
        for _, c, params, grads, _ in groups:
            alpha = -factor * c
            if abs(alpha) > torch.finfo(params[0].dtype).max:  # what the parameters' dtype would round it to
                alpha = math.copysign(math.inf, alpha)
            torch._foreach_add_(params, grads, alpha=alpha)
        xi = None
        if variant == "relax":
            moved = sum((factor * c) ** 2 * g2 / dt for dt, c, _, _, g2 in groups)
            with torch.enable_grad():
                loss_next = self._reduce_loss(closure()).item()
            log_new, xi = relax_log(log_r, log_new, self._log_r_hat(loss_next), moved, self.defaults["eta"])

        state[self.aux_key].fill_(log_new)
        state["step"] += 1
        self._last = (log_new, loss, factor, xi)
        return orig_loss

    @property
    def stats(self) -> dict[str, Tensor]:
        """The last step's scalars as 0-dim tensors, computed when asked (a logging step), not on every step."""
        if self._last is None:
            return {}
        log_r, loss, factor, xi = self._last
        group = self.param_groups[0]
        out = self._record(log_r, loss)
        out["energy/true"] = loss
        out["energy/violations"] = self.global_state["violations"].item()
        out["optim/effective_lr"] = factor * group["lr"] / (1.0 + group["lr"] * group.get("lam", 0.0))
        if xi is not None:
            out["optim/xi"] = xi
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
