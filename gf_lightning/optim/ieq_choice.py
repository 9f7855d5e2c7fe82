"""``solver="auto"``: which path solves IEQ's step, from multiply-add counts (docs/ieq.md), as a pure function.

Counts rather than wall-clock times keep the choice, and so the run, reproducible and independent of the machine's load.
The CG iteration count it expects is a running mean of this run's CG solves, which the optimizer keeps in its state.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ieq_solve import space_costs
from .jacobian import JacobianOperator
from .krylov import nystrom_costs

#: the CG iterations assumed before any CG solve has been measured
PRIOR_CG_ITERS = 20
#: what one CG iteration costs beyond its multiply-adds (~20 small kernels and the host sync of its stopping test: ~60
#: µs at ~30 G multiply-adds/s on one CPU thread), in multiply-adds
CG_ITER_OVERHEAD = 2e6
#: weight of the newest CG iteration count in the running estimate
CG_ITERS_WEIGHT = 0.25


@dataclass(frozen=True)
class Choice:
    """What ``"auto"`` decides with, beside the system: the settings and what the run has measured of CG."""

    max_dense: int
    preconditioner: str  #: ``"auto"``, ``"nystrom"`` or ``"none"``
    precond_rank: int
    cg_max_iter: int
    cg_estimate: float | None  #: the running mean of CG's iterations; ``None`` before the first CG solve
    cg_short: bool  #: a CG solve stopped at ``cg_max_iter`` short of its tolerance


def choose_solver(choice: Choice, n_rows: int, n_params: int, closed: bool, op: JacobianOperator | None) -> str:
    """``"cholesky"``, ``"parameter"`` or ``"cg"`` for a system of ``n_rows`` rows in ``n_params`` parameters;
    ``closed``: ``J`` comes in closed form (``gram_fn`` or the operator ``op``). No host sync.

    Without a closed form: the cheaper dense space of those that fit ``max_dense``, else CG. With one: CG above
    ``max_dense``; below it Cholesky, unless the operator's counts favour CG (its set-up plus the expected iterations
    times a product and :data:`CG_ITER_OVERHEAD`, against the dense solve) and no CG solve has stopped short."""
    if not closed:
        fits = [s for s, size in (("residual", n_rows), ("parameter", n_params)) if size <= choice.max_dense]
        if not fits:
            return "cg"
        space = space_costs(n_rows, n_params).cheaper if len(fits) == 2 else fits[0]
        return "parameter" if space == "parameter" else "cholesky"
    if n_rows > choice.max_dense:
        return "cg"
    if op is None:
        return "cholesky"
    costs = op.costs(preconditioned=choice.preconditioner == "auto")
    setup, per_iter = costs.setup, costs.per_iter
    if choice.preconditioner == "nystrom":
        extra_setup, extra_iter = nystrom_costs(n_rows, choice.precond_rank, costs.per_iter)
        setup, per_iter = setup + extra_setup, per_iter + extra_iter
    if choice.cg_short:  # a solve stopped short of its tolerance: CG does not reach the step here
        return "cholesky"
    estimate = choice.cg_estimate
    iters = min(PRIOR_CG_ITERS, choice.cg_max_iter) if estimate is None else estimate
    return "cg" if setup + iters * (per_iter + CG_ITER_OVERHEAD) < costs.dense else "cholesky"


def next_estimate(estimate: float | None, iters: int) -> float:
    """The running mean of CG's iterations after a solve of ``iters``."""
    return float(iters) if estimate is None else (1.0 - CG_ITERS_WEIGHT) * estimate + CG_ITERS_WEIGHT * iters
