"""What every energy-stable optimizer shares: its global state, its settings, the closure protocol and the ``stats``
contract.

Every optimizer here is a ``torch.optim.Optimizer``. Scalars that are global to the optimizer (the auxiliary variable,
counters) live in ``self.state`` of the first parameter, as ``torch.optim.LBFGS`` keeps its own, so that
``state_dict()`` carries them and ``load_state_dict()`` moves them to the parameters' device.

Settings are read from the parameter groups on every step, never from ``self.defaults``: after ``load_state_dict`` the
step uses the loaded settings, as every torch optimizer does. A setting that enters the one global auxiliary variable
(``C``, ``variant``, …) is the whole optimizer's: a group that gives it another value is refused (:func:`check_group`).

The ``stats`` contract: ``opt.stats`` is a dict ``name → 0-dim tensor`` of the last step's scalars (``energy/…`` and
``optim/…``), empty before the first step, computed from the last step's record only when asked.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import GFConfigError, GFStepError
from .settings import check_group

__all__ = ["EnergyOptimizer", "GFConfigError", "GFStepError", "NO_CLOSURE"]

NO_CLOSURE = (
    "{cls}.step() needs a closure that zeroes the gradients, computes the loss, back-propagates and returns the loss. "
    "Called without one: 16-bit mixed precision with a gradient scaler does this; use precision '32-true', '64-true' "
    "or "
    "'bf16-mixed' with the energy-stable methods."
)


def first_parameter(param_groups: Iterable[dict[str, Any]]) -> Any:
    """The first parameter of the first non-empty group (an empty first group is legal in torch), or ``None``."""
    for group in param_groups:
        if group["params"]:
            return group["params"][0]
    return None


class EnergyOptimizer(torch.optim.Optimizer):
    """Base of the energy-stable methods: global state, settings per group or per optimizer, the last step's record.

    A subclass declares ``per_group_settings`` (name → validator, for settings each group may set) and
    ``shared_settings`` (names of settings of the whole optimizer), stores the record of each step in ``self._last``,
    and turns a record into scalars in :meth:`_stats_of`.

    Global scalars are float64 0-dim tensors (float32 on MPS, which has no float64). ``Optimizer.load_state_dict`` would
    cast them to the parameters' dtype, so :meth:`load_state_dict` puts them back as they were saved: a checkpoint round
    trip is exact whatever the parameters' dtype.
    """

    per_group_settings: dict[str, Callable[[str, Any], Any]] = {}
    shared_settings: tuple[str, ...] = ()
    #: instance attributes that ``copy.deepcopy`` and ``pickle`` must carry besides torch's own three
    _carried = ("_last",)

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        self._last: Any = None
        super().__init__(params, defaults)
        if first_parameter(self.param_groups) is None:
            raise GFConfigError(
                f"{type(self).__name__}: every parameter group is empty; give it at least one parameter"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        reference = self.param_groups[0] if self.param_groups else self.defaults
        check_group(param_group, self.per_group_settings, self.shared_settings, reference)
        super().add_param_group(param_group)

    def setting(self, name: str) -> Any:
        """A setting of the whole optimizer, as the parameter groups hold it now (loaded settings included)."""
        return self.param_groups[0][name]

    # -- state ---------------------------------------------------------------------------------------------------------
    @property
    def global_state(self) -> dict[str, Any]:
        """The optimizer's global scalars, stored with the first parameter so that ``state_dict()`` carries them."""
        return self.state[first_parameter(self.param_groups)]

    @property
    def _device(self) -> torch.device:
        return first_parameter(self.param_groups).device

    @property
    def _scalar_dtype(self) -> torch.dtype:
        return torch.float32 if self._device.type == "mps" else torch.float64

    def _scalar(self, value: float | Tensor) -> Tensor:
        """A 0-dim tensor of the global-state dtype on the parameters' device."""
        return torch.as_tensor(value, dtype=self._scalar_dtype, device=self._device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        first = first_parameter(state_dict["param_groups"])
        saved = {k: v for k, v in state_dict["state"].get(first, {}).items() if isinstance(v, Tensor) and v.dim() == 0}
        super().load_state_dict(state_dict)
        for group in self.param_groups[1:]:  # a state dict of this class agrees with itself; a hand-made one may not
            check_group(group, self.per_group_settings, self.shared_settings, self.param_groups[0])
        device = self._scalar(0.0).device
        for key, value in saved.items():  # undo the cast to the parameters' dtype and device
            self.global_state[key] = value.to(device=device, copy=True)
        self._last = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name, None) for name in self._carried})
        return state

    # -- the closure ---------------------------------------------------------------------------------------------------
    def _loss_value(self, loss: Any) -> Tensor:
        """The closure's loss as a detached 0-dim tensor: a one-element tensor, or a real number (as ``LBFGS`` takes
        ``float(closure())``)."""
        if isinstance(loss, Tensor) and loss.numel() == 1:
            return loss.detach().reshape(())
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            return torch.tensor(float(loss), dtype=torch.float64, device=self._device)
        what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise GFStepError(
            f"{type(self).__name__}.step(closure): the closure must return the mean mini-batch loss as a number or a "
            f"one-element tensor; it returned {what}"
        )

    # -- stats ---------------------------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Tensor]:
        """The last step's scalars (``energy/…``, ``optim/…``) as 0-dim tensors; ``{}`` before the first step."""
        return {} if self._last is None else self._stats_of(self._last)

    def _stats_of(self, record: Any) -> dict[str, Tensor]:
        raise NotImplementedError
