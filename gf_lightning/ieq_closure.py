"""What IEQ's step takes: the residual's closure, and the Gram matrix or Jacobian of a network that has one.

:class:`~gf_lightning.optim.IEQ` (full) steps on the residual ``q`` rather than the loss: its closure returns ``q``, and
``opt.step(closure=…, gram_fn=…, jacobian_fn=…)`` takes, where the network and objective give them in closed form, the
Gram matrix ``J Jᵀ`` of ``q``'s Jacobian (a :class:`~gf_lightning.components.TwoLayerNet`'s ``jacobian_gram``) and a
Jacobian operator, or the dense rows of ``J`` for the exact solves (an objective's ``jacobian``, by ``torch.func``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .components.objectives import Objective
from .optim.distributed import gather_rows


@dataclass
class ResidualStep:
    """The arguments of one IEQ step, and the network's first output once the step has run (:attr:`out`)."""

    closure: Callable[[], Tensor]
    gram_fn: Callable[[], Tensor] | None = None
    jacobian_fn: Callable[[], Any] | None = None
    outputs: dict[str, Tensor] = field(default_factory=dict)

    @property
    def out(self) -> Tensor:
        """The network's output at the step's starting weights (an adaptive step calls the closure again at trial
        weights)."""
        return self.outputs["out"]

    def step(self, opt) -> None:
        opt.step(closure=self.closure, gram_fn=self.gram_fn, jacobian_fn=self.jacobian_fn)


def residual_step(opt, net: nn.Module, objective: Objective, x: Tensor, y: Tensor, scale: float = 1.0,
                  gather: bool = False) -> ResidualStep:
    """IEQ's step on the mini-batch ``(x, y)`` with ``opt`` (the module's optimizer). ``scale``: the gradient's scale,
    the width ``m`` in particle time, where ``√m q`` is the residual whose flow runs ``m`` times faster. ``gather``: the
    optimizer solves over the global batch of every rank (``distributed="global"``), so the closed-form Gram matrix is
    taken over the global batch's inputs, rank-major, as the optimizer gathers ``q``."""
    q_scale = objective.residual_scale(y) * math.sqrt(scale) if scale != 1.0 else objective.residual_scale(y)
    outputs: dict[str, Tensor] = {}

    def closure() -> Tensor:
        opt.zero_grad()
        out = objective.predict(net, x)
        outputs.setdefault("out", out)
        return objective.residual(out, y, q_scale)

    gram, operator = getattr(net, "jacobian_gram", None), getattr(net, "jacobian_operator", None)
    if gram is not None and type(objective).predict is Objective.predict:  # q is an affine map of net(x)
        inputs = gather_rows(x).rows if gather else x

        def gram_fn() -> Tensor:
            g = gram(inputs)
            return g if isinstance(q_scale, float) and q_scale == 1.0 else g * q_scale**2

        jacobian_fn = (lambda: operator(inputs, scale=q_scale)) if operator is not None else None
        return ResidualStep(closure, gram_fn, jacobian_fn, outputs)
    if gram is None and hasattr(objective, "jacobian"):  # dense rows of J for the exact solves (torch.func)
        return ResidualStep(closure, None, lambda: objective.jacobian(net, x, y, q_scale), outputs)
    return ResidualStep(closure, None, None, outputs)
