"""A run's outcome, one definition for every study (the sweeps, the paper's figures, the seed reproduction).

From the training loss per epoch (each point the mean over the epoch's batches; one step per epoch in full batch) and
the training loss at the initial weights ``L₀``:

- ``diverged``: the loss or a held-out metric went non-finite (the CLI's guard stopped the run, or a NaN/Inf was
  logged);
- ``unstable``: it stayed finite, but at some epoch its loss rose above ``UNSTABLE_RISE`` × ``L₀`` — whatever it ended
  at (a blow-up that collapsed to a constant predictor, or one it recovered from, is not a run that trained);
- ``frozen``: it never rose that far, and its last epoch's loss is above ``(1 − FROZEN_DROP)`` × ``L₀`` (it did not
  learn);
- ``trained``: neither: its loss fell by more than ``FROZEN_DROP`` and never rose far above the start.

``worse`` (a trained run whose held-out metric ends worse than the untrained network's) is a property of a sweep's cell,
read against the held-out metric at the initial weights (:mod:`.sweep.cells`).

The reproduction's reports also flag a run that got *stuck*, another thing than *frozen* above (which reads the loss
against its start): its effective step *collapsed* (:func:`step_collapsed`: the step that multiplies the gradient fell
below ``STEP_COLLAPSE`` × the nominal one, an energy method's auxiliary variable gone to 0), or its loss *stalled*
(:func:`stalled`: it moved by at most ``STALL_REL`` of itself in each of the last ``STALL_EPOCHS`` epochs). Their
reports call these "frozen" and "stalled" in words, as they always have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: unstable: the training loss rose above UNSTABLE_RISE × its value at the initial weights at some epoch
UNSTABLE_RISE = 10.0
#: frozen: the last epoch's training loss is above (1 − FROZEN_DROP) × its value at the initial weights
FROZEN_DROP = 0.01
#: the outcomes in the order a cell of several seeds reports the first one present (the worst first)
SEVERITY = ("diverged", "unstable", "frozen", "trained")

RULE = (
    f"*diverged*: the loss or a held-out metric went non-finite; *unstable*: finite, but the training loss (epoch "
    f"mean) rose above {UNSTABLE_RISE:g} × its value at the initial weights at some epoch, whatever it ended at; "
    f"*frozen*: it never did, and the last epoch's training loss is above {1 - FROZEN_DROP:g} × the initial one (it "
    f"did not learn); *trained*: none of these"
)


@dataclass(frozen=True)
class Outcome:
    """How a run ended, and why in words."""

    status: str  #: one of :data:`SEVERITY`
    message: str = ""


def judge(train_loss: Sequence[float], initial: float, finals: Sequence[float] = ()) -> Outcome:
    """The outcome of a run that finished (exit 0) from its per-epoch training loss, the training loss at its initial
    weights (NaN where unknown: then only *diverged* and *trained* can be told apart from the curve) and its final
    held-out values."""
    if any(not math.isfinite(v) for v in [*train_loss, *finals]):
        return Outcome("diverged", "a non-finite loss or metric was logged")
    if not math.isfinite(initial) or initial <= 0 or not train_loss:
        return Outcome("trained")
    peak = max(train_loss)
    if peak > UNSTABLE_RISE * initial:
        epoch = train_loss.index(peak) + 1
        return Outcome(
            "unstable",
            f"training loss rose to {peak / initial:.3g} × the initial {initial:.4g} (epoch {epoch}) "
            f"and ended at {train_loss[-1] / initial:.3g} ×",
        )
    if train_loss[-1] > (1 - FROZEN_DROP) * initial:
        return Outcome(
            "frozen",
            f"training loss {train_loss[-1]:.4g} after {len(train_loss)} epochs vs {initial:.4g} at "
            f"the initial weights (fell by less than {FROZEN_DROP:.0%})",
        )
    return Outcome("trained")


#: collapsed: the effective step is below STEP_COLLAPSE × the nominal one, Δt / (1 + Δt λ)
STEP_COLLAPSE = 1e-6
#: stalled: the training loss moved by at most STALL_REL (relative) in each of the last STALL_EPOCHS epochs
STALL_EPOCHS, STALL_REL = 5, 1e-6


def step_collapsed(effective_lr: float, nominal_lr: float) -> bool:
    """Whether the effective step ``effective_lr`` is below :data:`STEP_COLLAPSE` × ``nominal_lr`` (False for NaN)."""
    return effective_lr < STEP_COLLAPSE * nominal_lr


def stalled(train_loss: Sequence[float]) -> bool:
    """Whether the per-epoch training loss moved by at most :data:`STALL_REL` of itself in each of the last
    :data:`STALL_EPOCHS` epochs (needs more than that many epochs)."""
    loss = list(train_loss)
    return len(loss) > STALL_EPOCHS and all(
        abs(b - a) <= STALL_REL * abs(a) for a, b in zip(loss[-STALL_EPOCHS - 1 :], loss[-STALL_EPOCHS:])
    )
