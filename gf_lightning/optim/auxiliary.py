"""The step that SAV, ExpSAV and IEQAdaptive share, written in the logarithm ``ℓ`` of their scalar auxiliary
variable."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFStepError
from .distributed import global_mean_, world_size
from .logspace import NEG_INF, exp0, log0, logsumexp, relax, softplus
from .settings import check_choice, check_count, check_nonnegative, check_positive

#: rounding allowance of ``ℓ``, relative to ``1 + |ℓ|``: a relaxed ``ℓⁿ⁺¹`` above ``ℓⁿ`` by less is rounding (and is
#: clipped), by more a violation (and is counted, and kept)
ROUNDING = 8.0 * 2.0**-52


def _increment(counter: Tensor) -> None:
    """``counter += 1`` for a 0-dim CPU counter, without the wrapped-scalar tensor that ``+=`` builds (a third of the
    step's own host time)."""
    counter.fill_(counter.item() + 1)


@dataclass(slots=True)
class GradientGroup:
    """One parameter group at ``wⁿ``: its parameters with a gradient, and its step sizes and gradient norm in logs."""

    params: list[Tensor]
    grads: list[Tensor]
    log_dt: float  #: ``log Δt_g`` (``−∞`` for a group with ``lr = 0``, which takes no step)
    log_c: float  #: ``log(Δt_g / (1 + Δt_g λ_g))``, the step of ``g̃ = g / (1 + Δt λ)`` in units of ``g``
    log_g2: float  #: ``log ‖g_g‖²`` in the optimizer's inner product (:meth:`AuxiliaryVariableOptimizer._log_sq_norm`)


@dataclass(slots=True)
class Evaluation:
    """The closure at ``wⁿ``: what it returned, the loss as a float (the mean over ranks), and the gradient groups."""

    returned: Any
    loss: float
    groups: list[GradientGroup]


@dataclass(slots=True)
class AuxiliaryStep:
    """The record of one step, from which ``stats`` is computed when asked."""

    loss: float  #: ``L(wⁿ)``
    log_aux: float  #: ``ℓⁿ⁺¹``
    log_factor: float  #: ``log φ`` of ``wⁿ⁺¹ = wⁿ − φ Δt g̃``
    log_c: float  #: ``log(Δt / (1 + Δt λ))`` of the first group
    xi: float | None  #: the relaxation's ``ξ`` (``relax`` only)


class AuxiliaryVariableOptimizer(EnergyOptimizer):
    """The common step of SAV, ExpSAV and IEQAdaptive, in ``ℓ = log r`` (``log ‖q‖`` for IEQAdaptive).

    Each method keeps one positive scalar ``r`` whose recursion is ``rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / κⁿ)``, so that

    ``ℓⁿ⁺¹ = ℓⁿ − softplus(log(Δt Sⁿ) − log κⁿ)``,   ``softplus(x) = log(1 + eˣ)``,

    which neither overflows nor loses ``r`` to underflow however large the loss or the step. A subclass says what ``κⁿ``
    is (:meth:`_log_kappa`) and which value ``r̂ = r(L)`` the loss stands for (:meth:`_log_r_hat`). The variants:

    - ``seed`` (carried ``r``, ``wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹/rⁿ) g̃``); ``restart``: the same after ``rⁿ ← r̂(L(wⁿ))``;
    - ``vanilla``: carried ``r``, ``wⁿ⁺¹ = wⁿ − Δt (rⁿ⁺¹/r̂(L(wⁿ))) g̃``;
    - ``relax``: the vanilla step, then ``rⁿ⁺¹`` relaxed toward ``r̂(L(wⁿ⁺¹))`` by :func:`~.logspace.relax` (one more
      closure call).

    ``r⁰ = r̂(L(w⁰))`` on the first mini-batch: the optimizer sees one batch at a time, and a full-data ``r⁰`` would
    cost a pass over the training set (the public implementation did that; the difference is mini-batch noise in
    ``r⁰``).

    Inner products and norms of the gradient (``Sⁿ``, the relaxation's ``‖Δw‖²``) are the optimizer's
    (:meth:`_log_sq_norm`): Euclidean, or with ``particles = m`` the particle average ``(1/m) Σ_k u_k·v_k`` of the
    paper's particle time.

    Every product of step sizes, norms and factors is formed in logarithms too (``log Δt Sⁿ = logsumexp_g(log c_g + log
    ‖g_g‖²)``), so no setting overflows: ``lr = 1e308`` takes the ``Δt → ∞`` limit of the scheme. A step with ``Δt Sⁿ =
    0`` (a zero gradient, or every group at ``lr = 0``) changes nothing. A group whose factor exceeds its dtype's range
    moves by the largest finite factor (ExpSAV's vanilla form can ask for ``e^{1000}``).

    Counters (float64 0-dim CPU tensors in ``global_state``): ``step``; ``violations``, the steps whose ``r`` rose above
    the value the step started from by more than rounding — the scheme guarantees it never does; and ``restart_rises``,
    the restarts (``restart``, and SAV's ``seed``) that set ``r`` above the value the last step left, which those
    variants allow. The scalar arithmetic runs on the host in float64: a step reads the loss and the gradient norms back
    from the device in one transfer, then moves each group with one fused ``_foreach_add_``.
    """

    variants: tuple[str, ...] = ("seed", "restart", "vanilla", "relax")
    #: the state key of ``ℓ``
    aux_key = "log_r"
    per_group_settings = {"lr": check_positive, "lam": check_nonnegative}
    shared_settings = ("C", "variant", "eta", "particles")

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        check_positive("lr", defaults["lr"])
        check_choice("variant", defaults["variant"], self.variants)
        defaults["particles"] = check_count("particles", defaults.get("particles", 1))
        super().__init__(params, defaults)

    def _scalar(self, value: float | Tensor) -> Tensor:
        return torch.tensor(float(value), dtype=torch.float64)

    def _log_sq_norm(self, norms: list[float]) -> float:
        """``log ‖u‖²`` of a velocity whose tensors have the norms ``norms``, in the optimizer's inner product: the
        particle average ``⟨u, v⟩ = (1/m) Σ_k u_k·v_k`` with ``m = particles`` (1: the Euclidean one). Every inner
        product and norm of the step (``Sⁿ``, Alg. 5's ``v``, the relaxation's ``‖Δw‖²``) is formed from these."""
        particles = self.param_groups[0].get("particles", 1)  # (a checkpoint of an earlier version has none)
        return 2.0 * log0(math.hypot(*norms)) - math.log(particles)

    # -- what a subclass defines ---------------------------------------------------------------------------------------
    def _log_r_hat(self, loss: float) -> float:
        """``log r̂(L)``, the value of the auxiliary variable that the loss ``L`` stands for."""
        raise NotImplementedError

    def _log_kappa(self, loss: float, log_r: float) -> float:
        """``log κⁿ`` in ``rⁿ⁺¹ = rⁿ / (1 + Δt Sⁿ / κⁿ)``."""
        raise NotImplementedError

    def _record(self, log_r: float, loss: float) -> dict[str, float]:
        """The method's modified energy, ``energy/modified``, from its auxiliary variable."""
        raise NotImplementedError

    @property
    def _restarts(self) -> bool:
        return self.setting("variant") == "restart"

    # -- the step ------------------------------------------------------------------------------------------------------
    def _evaluate(self, closure: Callable[[], Any]) -> Evaluation:
        """Run the closure at ``wⁿ``; the loss and the gradient norms come back from the device in one transfer."""
        with torch.enable_grad():
            returned = closure()
        loss = self._mean_loss(returned)
        groups, norms = [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                dt, lam = group["lr"], group["lam"] if "lam" in self.per_group_settings else 0.0
                log_dt = log0(dt)
                log_c = log_dt - softplus(log_dt + log0(lam))  # log(Δt / (1 + Δt λ)) without forming Δt λ
                groups.append(GradientGroup(params, [p.grad for p in params], log_dt, log_c, NEG_INF))
                norms += torch._foreach_norm(groups[-1].grads)
        scalars = [loss, *norms]
        if len({t.dtype for t in scalars}) > 1 or loss.dtype not in (torch.float32, torch.float64):
            scalars = [t.to(torch.float64) for t in scalars]  # keep a bfloat16 loss's digits
        values = torch.stack(scalars).tolist()
        start = 1
        for entry in groups:
            count = len(entry.grads)
            entry.log_g2 = self._log_sq_norm(values[start : start + count])
            start += count
        return Evaluation(returned, values[0], groups)

    def _mean_loss(self, returned: Any) -> Tensor:
        """The closure's loss as a 0-dim tensor, averaged over ranks (DDP averages the gradients, not the loss)."""
        loss = self._loss_value(returned)
        return global_mean_(loss.to(self._scalar_dtype, copy=True)) if world_size() > 1 else loss

    def _move(self, groups: list[GradientGroup], log_factor: float) -> None:
        """``w_g ← w_g − φ c_g g_g`` for every group that has a step and a gradient."""
        for entry in groups:
            if entry.log_c == NEG_INF or entry.log_g2 == NEG_INF:
                continue
            alpha = exp0(log_factor + entry.log_c)
            alpha = min(alpha, torch.finfo(entry.params[0].dtype).max)  # what the parameters' dtype can hold
            torch._foreach_add_(entry.params, entry.grads, alpha=-alpha)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step. ``closure`` zeroes the gradients, computes the mean mini-batch loss, back-propagates and
        returns the loss (a tensor or a number); it is required. Returns what the closure returned."""
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=type(self).__name__))
        ev = self._evaluate(closure)
        settings = self.param_groups[0]
        variant = settings["variant"]
        state = self.global_state
        log_hat = self._log_r_hat(ev.loss)
        if self.aux_key not in state:  # r⁰ = r̂(L(w⁰))
            state.update({self.aux_key: self._scalar(log_hat), "step": self._scalar(0)})
        for key in ("violations", "restart_rises"):  # (a checkpoint of an earlier version has no restart_rises)
            if key not in state:
                state[key] = self._scalar(0)
        log_r = state[self.aux_key].item()
        if self._restarts:
            if log_hat > log_r:  # a restart above the value the last step left: allowed, counted under its own name
                _increment(state["restart_rises"])
            log_r = log_hat

        log_dt_s = logsumexp(e.log_c + e.log_g2 for e in ev.groups)
        shrink = 0.0 if log_dt_s == NEG_INF else softplus(log_dt_s - self._log_kappa(ev.loss, log_r))
        log_new = log_r - shrink
        log_factor = -shrink if variant in ("seed", "restart") else log_new - log_hat
        if log_dt_s != NEG_INF:
            self._move(ev.groups, log_factor)
        xi = None
        if variant == "relax":  # ‖Δw‖²/Δt = Σ_g (φ c_g)² ‖g_g‖² / Δt_g, then r̂ at wⁿ⁺¹ from one more closure call
            log_moved = logsumexp(
                2.0 * (log_factor + e.log_c) + e.log_g2 - e.log_dt for e in ev.groups if e.log_dt > NEG_INF
            )
            with torch.enable_grad():
                loss_next = self._mean_loss(closure()).item()
            relaxed = relax(log_r, log_new, self._log_r_hat(loss_next), log_moved, settings["eta"])
            log_new, xi = relaxed.log_r, relaxed.xi
        if log_new > log_r:  # only the relaxation can get here: beyond rounding it is a violation, and is kept
            if log_new - log_r > ROUNDING * (1.0 + abs(log_r)):
                _increment(state["violations"])
            else:
                log_new = log_r

        state[self.aux_key].fill_(log_new)
        _increment(state["step"])
        self._last = AuxiliaryStep(ev.loss, log_new, log_factor, ev.groups[0].log_c if ev.groups else NEG_INF, xi)
        return ev.returned

    def _stats_of(self, record: AuxiliaryStep) -> dict[str, Tensor]:
        out = self._record(record.log_aux, record.loss)
        out["energy/true"] = record.loss
        out["energy/violations"] = self.global_state["violations"].item()
        if self._restarts:
            out["energy/restart_rises"] = self.global_state["restart_rises"].item()
        out["optim/effective_lr"] = exp0(record.log_factor + record.log_c)
        if record.xi is not None:
            out["optim/xi"] = record.xi
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
