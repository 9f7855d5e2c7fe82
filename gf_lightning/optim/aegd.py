"""AEGD and AEGDM: gradient descent with one energy variable per coordinate (Liu & Tian), without and with momentum.

Both write the loss as ``f = g² − c`` with ``g = √(f + c)`` and carry, for every coordinate ``i`` of every parameter, an
energy ``rᵢ`` that starts at ``g(θ⁰)`` and is only ever divided by a number ``≥ 1``: it never rises, whatever the step
size (their "unconditional energy stability"). The two methods share everything but the move, so they share this file:
:class:`AdaptiveEnergyOptimizer` holds the closure, the loss, the energies, the counters and ``stats``; :class:`AEGD`
and :class:`AEGDM` say how a group moves.

Checked against the authors' public code (read, not copied): ``txping/AEGD`` ``aegd.py`` (commit ``0e2fc98``) and
``txping/AEGDM`` ``aegdm.py`` (commit ``aa4ce13``). What each class follows and where it departs is in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFStepError
from .distributed import global_mean_, world_size
from .settings import check_flag, check_momentum, check_nonnegative, check_positive, check_unit


def _maxima(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor's largest entry, 0-dim: one fused op where torch has ``_foreach_max``, else one op a tensor."""
    fused = getattr(torch, "_foreach_max", None)
    return list(fused(tensors)) if fused is not None else [t.max() for t in tensors]


# -- the record of a step ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class EnergyGroup:
    """One parameter group as the step left it: its step size and the energies of the parameters it moved."""

    lr: float  #: ``η`` of the group at the step
    energies: list[Tensor]  #: ``rⁿ⁺¹`` of each parameter that had a gradient (the state tensors themselves)


@dataclass(slots=True)
class EnergyStep:
    """The record of one step, from which ``stats`` is computed when asked."""

    loss: Tensor  #: ``f(θⁿ)``, the mean over ranks, 0-dim, in the global-state dtype
    root: Tensor  #: ``√(f(θⁿ) + c)``, 0-dim, in the global-state dtype
    groups: list[EnergyGroup]


class AdaptiveEnergyOptimizer(EnergyOptimizer):
    """What AEGD and AEGDM share: ``v = ∇f / (2√(f + c))``, the energies ``r ← r / (1 + 2η v²)``, the counters,
    ``stats``.

    A step: run the closure (under ``torch.enable_grad()``), average its loss over ranks under DDP (DDP averages the
    gradients and nothing else: without this every rank would scale its ``v`` by its own shard's loss and the replicas
    would drift apart), refuse ``f + c ≤ 0`` (the step's one host sync, before anything changes), then for each group
    :meth:`_move` its parameters that have a gradient with ``torch._foreach_*`` ops. ``√(f + c)`` is formed once, on the
    loss's device, in the global-state dtype (float64; float32 on MPS), and enters each group in its parameters' dtype.

    State: per parameter ``r`` (``self.state[p]["r"]``, the dtype and device of ``p``), created at the first step at
    which ``p`` has a gradient as ``√(f + c)`` of that step's mini-batch — for the parameters present from the start,
    ``r⁰ = √(f(θ⁰) + c)``, as the authors do. Global (``global_state``, float64 0-dim on the parameters' device):
    ``step``; ``violations``, the steps in which some coordinate's divisor ``1 + 2η v²`` fell below 1, the only way an
    ``r`` can rise. It cannot for ``η ≥ 0`` (in floating point either: ``1 + x ≥ 1`` for ``x ≥ 0``, and a division by a
    number ``≥ 1`` rounds to at most the dividend), so this is a check; a scheduler that makes ``lr`` negative trips it.

    ``stats`` (0-dim tensors; computed when asked, from the energies the last step left):

    - ``energy/true``: ``f(θⁿ)``, the loss the step started from (the mean over ranks);
    - ``energy/modified``: ``mean_i (rᵢⁿ⁺¹)² − c`` over the coordinates the step moved. Every ``rᵢ²`` starts at ``f +
      c``, so this is in the loss's units, starts just under the first loss, and never rises while the set of
      coordinates stays the same (it is one mean over them: two small sums when asked, none in the step);
    - ``energy/violations``: the count above, which stays 0;
    - ``optim/effective_lr``: ``mean_i ηᵢ rᵢⁿ⁺¹ / √(f(θⁿ) + c)``. AEGD moves ``θᵢ ← θᵢ − ηᵢ (rᵢⁿ⁺¹/√(f + c)) ∂ᵢf``, so
      this is the mean over coordinates of the step size on the raw gradient, the number to set beside SGD's ``lr``:
      just under ``lr`` at the first step, it falls as the energy is spent and rises as the loss falls below the ``f +
      c`` that the energy remembers. (AEGDM applies the same factor to its momentum buffer, which sums past ``v``'s.)
    """

    per_group_settings: dict[str, Callable[[str, Any], Any]] = {"lr": check_positive, "weight_decay": check_nonnegative}
    #: ``c`` enters the one ``√(f + c)`` of the step and the modified energy, so it is the whole optimizer's
    shared_settings = ("c",)

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        defaults = dict(defaults, c=check_positive("c", defaults["c"]))
        for key, check in self.per_group_settings.items():
            defaults[key] = check(key, defaults[key])
        super().__init__(params, defaults)

    # -- what a subclass defines ---------------------------------------------------------------------------------------
    def _move(
        self, group: dict[str, Any], params: list[Tensor], v: list[Tensor], energies: list[Tensor], two_lr: float
    ) -> Tensor:
        """Update ``energies`` and move ``params`` for one group, from ``v = g / (2√(f + c))`` (a fresh list, free to
        overwrite). Returns the group's smallest divisor ``1 + 2η v²`` (0-dim) for the violation check."""
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------------------------------------
    def _mean_loss(self, returned: Any) -> Tensor:
        """The closure's loss as a 0-dim tensor in the global-state dtype, averaged over ranks."""
        loss = self._loss_value(returned).to(self._scalar_dtype, copy=True)
        return global_mean_(loss) if world_size() > 1 else loss

    def _divided(self, energies: list[Tensor], v: list[Tensor], two_lr: float) -> Tensor:
        """``r ← r / (1 + 2η v²)`` in place; the smallest divisor ``1 + 2η v²`` of the group (0-dim)."""
        divisor = torch._foreach_mul(v, v)
        torch._foreach_mul_(divisor, two_lr)
        torch._foreach_add_(divisor, 1.0)
        torch._foreach_div_(energies, divisor)
        torch._foreach_neg_(divisor)  # min d = −max(−d): a fused max is 7× cheaper than a fused −∞-norm here
        return torch.stack(_maxima(divisor)).max().neg()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one step. ``closure`` zeroes the gradients, computes the mean mini-batch loss, back-propagates and
        returns the loss (a tensor or a number); it is required. Returns what the closure returned."""
        name = type(self).__name__
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=name))
        with torch.enable_grad():
            returned = closure()
        loss = self._mean_loss(returned)
        c = self.setting("c")
        shifted = loss + c
        if not bool((shifted > 0) & (shifted < math.inf)):  # the step's one host sync; nothing has changed yet
            f = loss.item()
            what = f"choose c > {-f:.6g}" if math.isfinite(f) else "the loss must be a finite number"
            raise GFStepError(f"{name} needs f + c > 0: the loss is f = {f:.6g} and c = {c:g}; {what}")
        root = shifted.sqrt()
        scale = root.mul(2.0).reciprocal()  # 1 / (2√(f + c))

        state = self.global_state
        if "step" not in state:
            state["step"] = self._scalar(0.0)
            state["violations"] = self._scalar(0.0)
        groups, floors = [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and p.numel()]  # (an empty one has no norms)
            if not params:
                continue
            energies = []
            for p in params:
                if p.grad.is_sparse:
                    raise GFStepError(
                        f"{name} does not support sparse gradients (a parameter of shape {tuple(p.shape)})"
                    )
                entry = self.state[p]
                if "r" not in entry:  # r⁰ = √(f + c) at the first step the parameter has a gradient
                    entry["r"] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(root)
                energies.append(entry["r"])
            dtype = params[0].dtype
            v = torch._foreach_mul([p.grad for p in params], scale.to(dtype))
            two_lr = min(2.0 * group["lr"], torch.finfo(dtype).max)  # lr near the float limit: no inf·0 = NaN
            floors.append(self._move(group, params, v, energies, two_lr).to(self._scalar_dtype))
            groups.append(EnergyGroup(group["lr"], energies))
        if floors:
            state["violations"].add_(torch.stack(floors).min() < 1.0)
        state["step"].add_(1.0)
        self._last = EnergyStep(loss, root, groups)
        return returned

    # -- stats ---------------------------------------------------------------------------------------------------------
    def _stats_of(self, record: EnergyStep) -> dict[str, Tensor]:
        sd = self._scalar_dtype
        energies = [r for g in record.groups for r in g.energies]
        count = sum(r.numel() for r in energies)
        if count:
            squares = torch.stack(torch._foreach_norm(energies, 2, dtype=sd)).square().sum()
            # r ≥ 0, so its 1-norm is its sum: Σ_g η_g Σ_{i∈g} rᵢ
            weighted = sum(torch.stack(torch._foreach_norm(g.energies, 1, dtype=sd)).sum() * g.lr
                           for g in record.groups if g.energies)
            modified = squares / count - self.setting("c")
            effective = weighted / (count * record.root)
        else:  # no coordinate had a gradient
            modified = effective = self._scalar(float("nan"))
        return {
            "energy/true": record.loss.clone(),
            "energy/modified": modified,
            "energy/violations": self.global_state["violations"].clone(),
            "optim/effective_lr": effective,
        }


class AEGD(AdaptiveEnergyOptimizer):
    r"""AEGD: adaptive gradient descent with energy (Liu & Tian, arXiv 2010.05109), one energy per coordinate.

    .. code-block:: text

        input: η (lr), c, weight_decay λ, decoupled_weight_decay; θ⁰; rᵢ⁰ = √(f(θ⁰) + c) for every coordinate i
        for n = 0, 1, …
            v     = ∇f(θⁿ) / (2√(f(θⁿ) + c))               (the gradient of g = √(f + c))
            coupled λ:    v ← v + λ θⁿ
            decoupled λ:  θⁿ ← (1 − ηλ) θⁿ
            rⁿ⁺¹  = rⁿ / (1 + 2η v²)                        (elementwise)
            θⁿ⁺¹  = θⁿ − 2η rⁿ⁺¹ v                          (elementwise)

    Energy law (per coordinate, without weight decay): ``rᵢⁿ − rᵢⁿ⁺¹ = (θᵢⁿ⁺¹ − θᵢⁿ)² / (2η rᵢⁿ⁺¹) ≥ 0``, for every
    ``η``. Written on the raw gradient the move is ``θᵢ ← θᵢ − η (rᵢⁿ⁺¹/√(f + c)) ∂ᵢf``: gradient descent whose
    per-coordinate step ``η rᵢ/√(f + c)`` starts near ``η``, shrinks as that coordinate's energy is spent and grows as
    the loss falls (``optim/effective_lr`` is its mean). A step that asks too much of a coordinate spends its energy
    instead of overshooting: as ``η → ∞`` the move tends to ``rᵢ/vᵢ`` and ``rᵢ`` to 0. The flip side is the method's
    known weakness: an energy spent early stays spent, and that coordinate then freezes.

    Followed (``txping/AEGD``, ``aegd.py``): the update above, ``r⁰ = √(f + c)`` from the first mini-batch's loss (per
    parameter, at its first step with a gradient), the defaults ``lr = 0.1``, ``c = 1``, and both weight decays — the
    coupled one added to ``v`` *before* the energy update (so ``λθ`` spends energy too), the decoupled one (their
    ``aegdw=True``) scaling ``θ`` by ``1 − ηλ`` before the move. Departures: ``c > 0`` and ``lr > 0`` are required (they
    allow any ``c`` with ``f + c > 0``, and ``lr = 0``); ``c`` is the whole optimizer's (theirs is per group: here ``√(f
    + c)`` is formed once, and the modified energy has one ``c``); ``f + c`` is checked once, before anything moves
    (theirs group by group, after the earlier groups moved), and a non-finite loss is refused too; ``√(f + c)`` is
    formed in float64 and rounded to the parameters' dtype (theirs in the loss's dtype: the last bit of a float32 step
    may differ); under DDP the loss is averaged over ranks (theirs is single-process). Sparse gradients are refused, as
    theirs are.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr``, ``weight_decay`` and
            ``decoupled_weight_decay``; ``c`` is the whole optimizer's.
        lr: the base step ``η`` (> 0); the authors' default 0.1 (their CIFAR runs: 0.1–0.4). c: the shift with ``f + c >
        0`` (> 0; default 1). A step whose loss has ``f + c ≤ 0`` is refused. weight_decay: ``λ ≥ 0`` (default 0).
        decoupled_weight_decay: ``θ ← (1 − ηλ) θ`` instead of adding ``λθ`` to ``v`` (the authors' AEGDW; default
        false).
    """

    per_group_settings = {**AdaptiveEnergyOptimizer.per_group_settings, "decoupled_weight_decay": check_flag}

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        c: float = 1.0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, c=c, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay)
        )

    def _move(
        self, group: dict[str, Any], params: list[Tensor], v: list[Tensor], energies: list[Tensor], two_lr: float
    ) -> Tensor:
        decay = group["weight_decay"]
        if decay:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * decay)
            else:
                torch._foreach_add_(v, params, alpha=decay)
        floor = self._divided(energies, v, two_lr)
        torch._foreach_addcmul_(params, energies, v, value=-two_lr)
        return floor


class AEGDM(AdaptiveEnergyOptimizer):
    r"""AEGDM: AEGD with momentum (Liu & Tian, arXiv 2203.12191), one energy per coordinate.

    .. code-block:: text

        input: η (lr), c, β (momentum), dampening δ, weight_decay λ; θ⁰; rᵢ⁰ = √(f(θ⁰) + c); m⁰ = 0
        for n = 0, 1, …
            v     = ∇f(θⁿ) / (2√(f(θⁿ) + c))
            rⁿ⁺¹  = rⁿ / (1 + 2η v²)                        (the energy sees the current v, not the momentum)
            λ:    v ← v + λ θⁿ                              (after the energy update)
            mⁿ⁺¹  = β mⁿ + (1 − δ) v                        (β = 0: no buffer, mⁿ⁺¹ = v)
            θⁿ⁺¹  = θⁿ − 2η rⁿ⁺¹ mⁿ⁺¹

    The energy update is AEGD's, so ``rᵢ`` never rises for any ``η``; the move is the energy-scaled momentum. There is
    no bias correction, and with ``δ = 0`` (the default) ``m`` is a sum, not an average: it settles near ``v / (1 −
    β)``, which is why the authors' step sizes are about ten times AEGD's smaller. ``δ = β`` gives the exponential
    average ``β m + (1 − β) v``.

    Followed (``txping/AEGDM``, ``aegdm.py``): the update above, in that order — the momentum buffer accumulates ``v``
    (not the step), starts at zero (so the first move is ``2η r¹ (1 − δ) v⁰``; torch's SGD starts its buffer at the
    first gradient instead), the coupled weight decay enters the buffer after the energy update — and the defaults ``lr
    = 0.01``, ``c = 1``, ``momentum = 0.9``, ``dampening = 0`` (their README's CIFAR runs use 0.005–0.03). The paper's
    text was not re-derived here: this class follows the code. Departures: as :class:`AEGD`'s (``c, lr > 0``; one ``c``;
    the check of ``f + c`` before anything moves; ``√(f + c)`` in float64; the loss averaged over ranks under DDP); and
    the buffer is created when a group first steps with ``momentum > 0`` (theirs always), which changes nothing but
    memory.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr``, ``momentum``, ``dampening`` and
            ``weight_decay``; ``c`` is the whole optimizer's.
        lr: the base step ``η`` (> 0); the authors' default 0.01.
        c: the shift with ``f + c > 0`` (> 0; default 1).
        momentum: ``β ∈ [0, 1)`` (default 0.9).
        dampening: ``δ ∈ [0, 1]`` (default 0).
        weight_decay: ``λ ≥ 0`` (default 0).
    """

    per_group_settings = {
        **AdaptiveEnergyOptimizer.per_group_settings,
        "momentum": check_momentum,
        "dampening": check_unit,
    }

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        c: float = 1.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, c=c, momentum=momentum, dampening=dampening, weight_decay=weight_decay))

    def _move(
        self, group: dict[str, Any], params: list[Tensor], v: list[Tensor], energies: list[Tensor], two_lr: float
    ) -> Tensor:
        floor = self._divided(energies, v, two_lr)
        if group["weight_decay"]:
            torch._foreach_add_(v, params, alpha=group["weight_decay"])
        direction, beta = v, group["momentum"]
        if beta:
            direction = []
            for p in params:
                entry = self.state[p]
                if "m" not in entry:
                    entry["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                direction.append(entry["m"])
            torch._foreach_mul_(direction, beta)
            torch._foreach_add_(direction, v, alpha=1.0 - group["dampening"])
        torch._foreach_addcmul_(params, energies, direction, value=-two_lr)
        return floor
