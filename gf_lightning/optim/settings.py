"""Validation of the optimizers' settings: each check names the setting, what it was given and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import GFConfigError


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_positive(name: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise GFConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise GFConfigError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 1:
        raise GFConfigError(f"{name} must be in (0, 1]; got {value!r}")
    return float(value)


def check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GFConfigError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def check_momentum(name: str, value: Any) -> float:
    """``momentum ∈ [0, 1)``: at 1 the buffer would never forget, and above it grows without bound."""
    if not _is_number(value) or not 0 <= value < 1:
        raise GFConfigError(f"{name} must be a finite number in [0, 1); got {value!r}")
    return float(value)


def check_unit(name: str, value: Any) -> float:
    """A number in ``[0, 1]`` (``dampening``)."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise GFConfigError(f"{name} must be a finite number in [0, 1]; got {value!r}")
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GFConfigError(f"{name} must be true or false; got {value!r}")
    return value


def check_betas(name: str, value: Any) -> tuple[float, float]:
    """``(β1, β2)``: two finite numbers in ``[0, 1)``, as ``torch.optim.Adam`` takes them."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)
    if not ok:
        raise GFConfigError(f"{name} must be two numbers in [0, 1); got {value!r}")
    return float(value[0]), float(value[1])


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise GFConfigError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def sav_defaults(lr: float, C: float, lam: float, variant: str, eta: float, particles: int) -> dict[str, Any]:
    """The validated settings that SAV and ExpSAV share (their defaults differ, so each keeps its own signature)."""
    return dict(
        lr=check_positive("lr", lr),
        C=check_positive("C", C),
        lam=check_nonnegative("lam", lam),
        variant=variant,
        eta=check_fraction("eta", eta),
        particles=check_count("particles", particles),
    )


def check_group(
    group: dict[str, Any], per_group: dict[str, Any], shared: Sequence[str], reference: dict[str, Any]
) -> None:
    """A parameter group's own settings: those in ``per_group`` (name → check) are validated; those in ``shared`` belong
    to the whole optimizer (its auxiliary variable is one scalar) and must equal ``reference``'s, else the step would
    ignore them."""
    for key, check in per_group.items():
        if key in group:
            check(key, group[key])
    for key in shared:
        if key in group and group[key] != reference[key]:
            raise GFConfigError(
                f"{key} is a setting of the whole optimizer, not of a parameter group: a group has "
                f"{key}={group[key]!r} "
                f"while the optimizer has {key}={reference[key]!r}; per-group values are allowed for "
                f"{', '.join(per_group) or 'none'}"
            )
