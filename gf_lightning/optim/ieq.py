"""IEQ with the full Jacobian: the invariant energy quadratization step of SPEC §2, by a Cholesky or a Krylov solve."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFConfigError, GFStepError
from .distributed import gather_rows, global_max_, global_sum_, rank, world_size
from . import jacobian as jacobian_module
from .ieq_solve import Solution, build_system, solve_dense, space_costs
from .jacobian import GraphRows, Group, JacobianRows, SubsetRows, gram_dense, jdjt_operator
from .krylov import conjugate_gradients, keep_guarantee, nystrom_costs, nystrom_preconditioner
from .settings import check_choice, check_count, check_flag, check_fraction, check_positive

#: ``solver="auto"``: the CG iterations assumed before any CG solve has been measured
PRIOR_CG_ITERS = 20
#: ``solver="auto"``: what one CG iteration costs beyond its multiply-adds (~20 small kernels and the host sync of its
#: stopping test: ~60 µs at ~30 G multiply-adds/s on one CPU thread), in multiply-adds
CG_ITER_OVERHEAD = 2e6
#: ``solver="auto"``: weight of the newest CG iteration count in the running estimate
CG_ITERS_WEIGHT = 0.25


@dataclass
class Solve:
    """The step's solve: this rank's share of ``qⁿ⁺¹`` and the norms of the whole (global) batch."""

    q_new: Tensor  #: this rank's share of ``qⁿ⁺¹``, flat
    entries: float | Tensor  #: ``N``, the entries of the whole (global) batch's residual (a 0-dim tensor in block mode)
    norm_before: Tensor  #: ``‖qⁿ‖``, 0-dim, in the state dtype
    norm_after: Tensor  #: ``‖qⁿ⁺¹‖`` — ``‖qⁿ‖`` for a skipped step, whose weights did not move
    failed: Tensor  #: 0-dim: the solve failed (on some rank)
    rescaled: Tensor | None  #: 0-dim: the CG safeguard scaled the iterate back (on some rank); ``None``: no CG
    cg: bool  #: CG solved (on some rank, in block mode)
    cg_iters: int | None
    cg_residual: float | None
    solver: str = "cholesky"  #: the path: ``"cholesky"`` (residual space), ``"parameter"`` or ``"cg"``
    jtq: Tensor | None = None  #: ``Jᵀqⁿ⁺¹`` in the groups' parameter order, when the solve has it


@dataclass(frozen=True)
class IEQStep:
    """The record of one step, from which ``stats`` is computed when asked."""

    entries: float | Tensor
    norm_before: Tensor
    norm_after: Tensor
    cg: bool
    cg_iters: int | None
    cg_residual: float | None
    solver: str = "cholesky"
    dt_scale: float = 1.0  #: the adaptive step's factor on every ``Δt_g`` in this step (1 for a fixed step)


class IEQ(EnergyOptimizer):
    r"""IEQ, full Jacobian (the seed's method A): an unconditionally energy-stable step with a linear solve per batch.

    .. code-block:: text

        input: Δt (lr); w⁰
        for n = 0, 1, …
            qⁿ   = f(X_B; wⁿ) − Y_B ∈ R^N,  N = B·k        (one-hot Y for classification; recomputed every batch)
            J    = ∂qⁿ/∂w ∈ R^{N×n}
            qⁿ⁺¹ = (I + Δt J Jᵀ)⁻¹ qⁿ                      (Cholesky, or preconditioned conjugate gradients)
            wⁿ⁺¹ = wⁿ − Δt Jᵀ qⁿ⁺¹

    ``I + Δt J Jᵀ`` is symmetric with eigenvalues ``≥ 1``, so ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` for every ``Δt > 0``. The energy is
    ``½‖q‖²`` **summed** over the batch, not the mean: that is the seed's scheme, kept here. Since ``Jᵀq`` is ``B/2`` times the
    gradient of the mean squared error ``(1/B) Σ_b ‖f(x_b) − y_b‖²``, for small ``Δt`` a step is a gradient step on that MSE
    with step ``Δt·B/2`` (on ``torch.nn.functional.mse_loss``, the mean over all ``B·k`` entries: ``Δt·B·k/2``); choose
    ``lr`` with that in mind.

    Per-group step sizes: a group's ``lr`` is its ``Δt_g``, and with ``D = diag(Δt_g)`` the step solves
    ``(I + J D Jᵀ) qⁿ⁺¹ = qⁿ`` and moves ``w_g ← w_g − Δt_g J_gᵀ qⁿ⁺¹``, which keeps ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖``.

    Closure protocol: ``closure()`` zeroes the gradients, runs the forward and **returns the residual**
    ``q = f(X_B) − Y_B`` (any shape, with its autograd graph to the parameters); it does not call ``backward``. The step
    calls it under ``torch.enable_grad()``, solves, then runs one backward pass with ``grad_tensors = qⁿ⁺¹`` (in one process
    with ``jacobian_fn``: the operator's closed-form ``Jᵀ qⁿ⁺¹`` instead), which leaves ``p.grad = Jᵀ qⁿ⁺¹`` in every
    parameter (the step clears ``p.grad`` first), and moves ``p ← p − Δt_g p.grad``. It returns ``qⁿ`` detached. Two
    optional arguments give ``J`` in closed form (``J`` must be the Jacobian of ``q`` in exactly the
    optimizer's parameters that require grad, rows in ``q.reshape(-1)`` order; one ``Δt`` only: groups with different
    ``lr`` are an error with either):

    - ``gram_fn()`` returns ``J Jᵀ`` (``N × N``; :meth:`TwoLayerNet.jacobian_gram` for ``q = net(x) − y``), which the
      Cholesky path overwrites with ``I + Δt J Jᵀ`` and its factor (return a fresh tensor);
    - ``jacobian_fn()`` returns an operator (:meth:`TwoLayerNet.jacobian_operator`, a
      :class:`~gf_lightning.optim.krylov.TwoLayerJacobian`: ``rows``, ``gram(v)`` = ``J Jᵀ v``, ``preconditioner(Δt)``,
      ``costs()``, and optionally ``dense()`` = ``J Jᵀ`` and ``vjp(v)`` = ``Jᵀ v`` by parameter) for the CG path, for
      ``"auto"``'s choice, and — with ``dense()`` — for the Cholesky path in place of ``gram_fn``. It is built lazily:
      nothing is computed until the solve asks, from the weights as they are before the move.

    The paths (``N = q.numel()``):

    - **closed form** (``gram_fn`` or ``jacobian_fn``; ``solver="cholesky"``, or ``"auto"``'s choice): ``J Jᵀ`` from the
      operator's ``dense()`` if given, else from ``gram_fn``, then Cholesky. Cost ``O(B²k²m + B²d)`` for the Gram plus
      ``O((Bk)³/3)`` for the factorisation (at MNIST's shape, 2560 rows: ~130 ms on one thread, 65× an SGD step).
    - **dense generic** (no ``gram_fn``; ``solver="cholesky"``, or ``"auto"`` with ``N ≤ max_dense`` and no
      ``jacobian_fn``): ``J D Jᵀ`` from the residual's graph, then Cholesky. When ``J`` fits in :data:`MAX_JACOBIAN_BYTES`
      its rows come from batched backward passes (``N`` backward, plus an ``O(N²n)`` product); else each block of columns
      ``J D Jᵀ E`` comes from a batched backward (``DJᵀE``) and a batched double backward (``J·``) (``2N`` backward, memory
      ``O(block·n)``). Exact, for any ``nn.Module``, and far slower than the closed form at the MNIST shape.
    - **CG** (``solver="cg"``, or ``"auto"``'s choice): preconditioned conjugate gradients from ``x⁰ = 0`` on
      ``(I + J D Jᵀ) x = qⁿ``, never an ``N × N`` matrix. With ``jacobian_fn`` each product is the closed form
      (``O(B²m + Bmk)`` for the two-layer net, after an ``O(B²d)`` kernel) and the preconditioner is the operator's
      structured one; without it each product is one backward (``Jᵀv``) and one double backward (``J·``) through the
      residual's graph, unpreconditioned unless ``preconditioner="nystrom"``. It stops at
      ``‖r‖ ≤ max(cg_tol, 10 ε)·‖qⁿ‖`` (``ε`` the residual's machine epsilon) or after ``cg_max_iter`` iterations, with one
      host sync per iteration for that test. **Every iterate keeps** ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖``, whatever the iteration count, the
      ``Δt`` and the (symmetric positive definite) preconditioner: CG from zero returns the ``A``-orthogonal projection of
      the exact step onto its Krylov space, which satisfies the exact step's energy law
      ``‖qⁿ⁺¹‖² + ‖D^½Jᵀqⁿ⁺¹‖² = ⟨qⁿ, qⁿ⁺¹⟩`` and so ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖_{A⁻¹} ≤ ‖qⁿ‖`` (proof in
      :mod:`gf_lightning.optim.krylov`). A final check scales the iterate back should rounding have pushed it past ``‖qⁿ‖``
      (counted in ``optim/cg_safeguards``).
      A solve stopped short is not the exact IEQ step, only a stable one: a stop at the cap warns once (on rank zero) with
      the residual reached, logged as ``optim/cg_residual``. ``gram_fn`` is not used on this path.
    - **parameter space** (no closed form; ``solver="parameter"``, or ``"auto"``'s choice): the same ``qⁿ⁺¹`` by the
      push-through identity, a ``P × P`` Cholesky of ``I + D^½JᵀJD^½`` (:mod:`gf_lightning.optim.ieq_solve`). ``J``
      comes in row blocks of at most ``max_jacobian_bytes`` from ``jacobian_fn`` when it returns dense rows
      (:class:`~gf_lightning.optim.jacobian.JacobianRows`, e.g. :meth:`Objective.jacobian`), else from the residual's
      graph. With dense rows the residual-space Cholesky is built from them too.
    - ``solver="auto"`` without a closed form: the cheaper of the two dense spaces by multiply-adds (``N²P + N³/3``
      against ``NP² + P³/3``) among those of size ``≤ max_dense``; CG when both are larger.
    - ``solver="auto"`` with a closed form: CG when ``N > max_dense`` (never an ``N × N`` matrix); below it, Cholesky
      unless ``jacobian_fn`` is given, in which case the operator's multiply-add counts decide: the dense solve's (the Gram and ``N³/3``) against
      CG's set-up plus the expected iterations times a product's (plus :data:`CG_ITER_OVERHEAD`), the iterations being
      those measured on this run's CG solves (a running mean, kept in the state; :data:`PRIOR_CG_ITERS` before the first).
      Counts rather than wall-clock times keep the choice, and so the run, reproducible and independent of the machine's
      load. At MNIST's shape CG wins by ~20× (it would need ~600 iterations to lose); at exp1's (``N = 64``,
      ``m = 1000``) a CG product costs half the dense solve, and Cholesky is taken. A CG solve that stops at
      ``cg_max_iter`` short of its tolerance (at a large ``Δt``: at MNIST's shape from ``Δt ≈ 10`` on) is noted in the state
      (``cg_stopped_short``), and ``"auto"`` takes Cholesky from then on: a truncated solve keeps the energy
      guarantee, but at ``Δt = 100`` on MNIST it stalled training (9.9 % after 3 epochs of exp4, against 75.4 % by
      Cholesky throughout and 71.4 % by this rule, docs/study.md). The choice is logged every step as
      ``optim/solver`` (0 Cholesky, 1 CG), the iterations as ``optim/cg_iters``.

    ``row_fraction < 1`` solves a random subset of the residual's rows each step (drawn from the step count, without
    replacement; no closed form): the guarantee is then per step, for the rows solved, as with mini-batches.

    ``adaptive_lr`` (Levenberg–Marquardt's rule on ``Δt``): every ``Δt_g`` is multiplied by a factor ``λ`` kept in the
    state (``dt_scale``). A step whose true loss ``‖q(wⁿ⁺¹)‖²`` (at the rows solved) is below ``‖qⁿ‖²`` is accepted and
    ``λ`` grows by ``lr_grow``; else the weights are restored, ``λ`` shrinks by ``lr_shrink`` and the step is solved
    again (the dense paths reuse their Gram), at most ``max_retries`` times — then no move. Every accepted step is an
    exact IEQ step at its ``Δt``, so the energy law holds for it. Rejections are counted in ``optim/rejected_steps``;
    the closure is called once more per try (under ``no_grad``).

    The solve runs in the residual's dtype (float32 for a 16-bit residual: there is no 16-bit Cholesky). With float32 and a
    very large ``Δt·‖J‖²`` (``≳ 1/ε``) the Cholesky factorisation can fail; the step is then skipped — no move, so the
    energy stays ``½‖qⁿ‖²`` and is logged so — and counted in ``optim/solve_failures``, with no host sync. A CG iterate that
    is not finite is skipped and counted the same way.

    Logged (``self.stats``, 0-dim device tensors, of the whole global batch under DDP in either mode): the energy
    ``½‖q‖²`` per entry of the residual, doubled — the mean squared residual, in the units of the loss (the MSE for
    regression), as the other methods log theirs: ``energy/true`` ``‖qⁿ‖²/N`` and ``energy/modified`` ``‖qⁿ⁺¹‖²/N``;
    ``energy/violations`` (steps with ``‖qⁿ⁺¹‖ > ‖qⁿ‖`` beyond rounding, ``(1 + 8ε√N)``; never expected),
    ``optim/effective_lr`` (group 0's ``lr`` times ``λ``), ``optim/solver`` (0 Cholesky, 1 CG, 2 parameter space),
    ``optim/rejected_steps`` with ``adaptive_lr``, ``optim/solve_failures`` and ``optim/cg_safeguards``
    once there is one, and ``optim/cg_iters`` and ``optim/cg_residual`` on the CG path (the slowest rank's, in block mode).
    State (``global_state``): ``step``, ``violations``, ``solve_failures``, ``cg_safeguards``, ``dt_scale`` and
    ``rejected_steps`` with ``adaptive_lr``, ``cg_iters_mean`` once
    CG has run, and ``cg_stopped_short`` once a CG solve stopped at ``cg_max_iter``.

    Under ``torch.distributed`` (DDP) with ``distributed="global"`` (the default) every rank gathers the global residual
    and solves the global batch's system, exactly the one-process step: ``gram_fn`` and ``jacobian_fn`` must then be those
    of the global batch, in rank-major order (the LightningModule gives the net the inputs gathered from every rank), and
    one of them is required. The ranks' residuals may differ in length (an epoch's last batch); their lengths are gathered
    first, one host sync a step. Each rank then applies its own ``J_rᵀ qⁿ⁺¹_r`` and the shares are summed (one all-reduce),
    so the replicas take one step. ``distributed="block"`` solves each rank's own system instead — a block-diagonal
    approximation of ``J Jᵀ``, a different algorithm, cheaper by the cross-rank blocks; it works with every path, the
    generic ones included (with ``solver`` other than ``"cholesky"`` one more small all-reduce and host sync a step gather
    the slowest rank's CG figures).

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` (its time step); the other settings
            are the whole optimizer's.
        lr: the time step ``Δt`` (> 0); seed default 0.1.
        solver: ``"auto"``, ``"cholesky"`` (dense in residual space, always), ``"parameter"`` (dense in parameter space,
            always) or ``"cg"`` (matrix-free, always).
        max_dense: largest system (``N`` or ``P``) ``"auto"`` may form (≥ 1); ``"cholesky"`` or ``"parameter"`` above
            it is an error.
        max_jacobian_bytes: most bytes of ``J`` held at once by the dense paths (≥ 1); beyond it ``J`` is read in
            blocks.
        cg_tol: relative residual at which CG stops (> 0). The default 1e-6 is float32's resolution (the solve never
            asks for less than ``10 ε``, 1.2e-6 in float32): the step is then the Cholesky step to the precision the
            float32 Cholesky itself has (its own error, ~κε, is ~1e-5 at MNIST's shape), at ~5 more iterations than
            1e-4 (17 against 12 at MNIST's shape and Δt = 0.1, +20 % of the step's time). Looser tolerances are stable
            too, but at exp4's Δt the trajectory amplifies the difference: 50 epochs at 1e-4 ended 0.5 points away from
            the Cholesky run, at 1e-5 and 1e-6 within 0.25 (BLAS rounding alone: 0.1). Give 1e-12 for the exact step in
            float64.
        cg_max_iter: most CG iterations per step (≥ 1).
        distributed: under DDP, ``"global"`` (the exact step of the global batch) or ``"block"`` (per-rank blocks).
        preconditioner: ``"auto"`` (the closed-form operator's structured preconditioner where ``jacobian_fn`` is given,
            none on the generic path), ``"nystrom"`` (a randomised Nyström preconditioner of rank ``precond_rank`` on
            either path), or ``"none"``.
        precond_rank: the Nyström preconditioner's rank (≥ 1).
        row_fraction: the fraction of the residual's rows solved each step, in ``(0, 1]``.
        adaptive_lr: Levenberg–Marquardt's accept/reject rule on ``Δt`` (above).
        lr_grow: ``λ``'s factor after an accepted step (≥ 1). lr_shrink: its factor after a rejected one, in ``(0, 1)``.
        max_retries: most rejected tries in one step (≥ 1).
    """

    solvers = ("auto", "cholesky", "parameter", "cg")
    distributed_modes = ("global", "block")
    preconditioners = ("auto", "nystrom", "none")
    #: what the closure returns: the residual ``q``, not a loss (the LightningModule reads this)
    closure_returns = "residual"
    per_group_settings = {"lr": check_positive}
    shared_settings = ("solver", "max_dense", "cg_tol", "cg_max_iter", "distributed", "preconditioner", "precond_rank",
                       "max_jacobian_bytes", "row_fraction", "adaptive_lr", "lr_grow", "lr_shrink", "max_retries")
    _carried = ("_last", "_cg_warned", "_cg_estimate", "_cg_short")

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        solver: str = "auto",
        max_dense: int = 4096,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 200,
        distributed: str = "global",
        preconditioner: str = "auto",
        precond_rank: int = 32,
        max_jacobian_bytes: int = 2**29,
        row_fraction: float = 1.0,
        adaptive_lr: bool = False,
        lr_grow: float = 2.0,
        lr_shrink: float = 0.25,
        max_retries: int = 10,
    ) -> None:
        if check_positive("cg_tol", cg_tol) >= 1:  # CG's first residual, ‖qⁿ‖ itself, would already meet it
            raise GFConfigError(f"cg_tol must be a number in (0, 1): at >= 1 conjugate gradients stop before their first "
                                f"iteration and the weights never move; got {cg_tol!r}")
        defaults = dict(
            lr=check_positive("lr", lr),
            solver=check_choice("solver", solver, self.solvers),
            max_dense=check_count("max_dense", max_dense),
            cg_tol=check_positive("cg_tol", cg_tol),
            cg_max_iter=check_count("cg_max_iter", cg_max_iter),
            distributed=check_choice("distributed", distributed, self.distributed_modes),
            preconditioner=check_choice("preconditioner", preconditioner, self.preconditioners),
            precond_rank=check_count("precond_rank", precond_rank),
            max_jacobian_bytes=check_count("max_jacobian_bytes", max_jacobian_bytes),
            row_fraction=check_fraction("row_fraction", row_fraction),
            adaptive_lr=check_flag("adaptive_lr", adaptive_lr),
            lr_grow=check_positive("lr_grow", lr_grow),
            lr_shrink=check_fraction("lr_shrink", lr_shrink),
            max_retries=check_count("max_retries", max_retries),
        )
        if lr_grow < 1.0 or lr_shrink >= 1.0:
            what = f"lr_grow={lr_grow!r}" if lr_grow < 1.0 else f"lr_shrink={lr_shrink!r}"
            raise GFConfigError(f"{what}: allowed lr_grow >= 1 and lr_shrink in (0, 1)")
        self._cg_warned = False
        self._cg_estimate: float | None = None  # the running mean of CG's iterations, mirrored in global_state
        self._cg_short = False  # a CG solve stopped short of its tolerance ("auto" then takes Cholesky), mirrored too
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        mean = self.global_state.get("cg_iters_mean")
        self._cg_estimate = None if mean is None else float(mean)
        self._cg_short = float(self.global_state.get("cg_stopped_short", 0.0)) > 0

    # -- the step --------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        gram_fn: Callable[[], Tensor] | None = None,
        jacobian_fn: Callable[[], Any] | None = None,
    ) -> Tensor:
        """Take one step. ``closure`` returns the residual ``q = f(X_B) − Y_B`` with its graph (required); ``gram_fn``, if
        given, returns ``J Jᵀ`` in closed form, and ``jacobian_fn`` the closed-form Jacobian operator. Returns ``qⁿ``
        detached."""
        q = self._residual(closure)
        groups = [(g["lr"], [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        groups = [(dt, ps) for dt, ps in groups if ps]
        if not groups:
            raise GFStepError(f"{type(self).__name__}.step: no parameter of the optimizer requires grad")
        op = jacobian_fn() if jacobian_fn is not None else None  # (lazy: computes nothing until asked)
        rows = op if hasattr(op, "block") else None  # dense rows of J, not a closed form
        op = None if rows is not None else op
        state = self.global_state
        for key in ("step", "violations", "solve_failures", "cg_safeguards"):
            if key not in state:
                state[key] = self._scalar(0.0)
        index = None
        if self.setting("row_fraction") < 1.0:
            q, rows, index = self._subset(q, rows, gram_fn is not None or op is not None)
        adaptive = self.setting("adaptive_lr")
        scale = float(state.get("dt_scale", 1.0)) if adaptive else 1.0
        cache: dict[str, Any] = {}
        if not adaptive:
            solve = self._solve(q, groups, gram_fn, op, rows, cache)
            self._move(q, groups, solve.q_new, op, solve.jtq)
        else:
            solve, scale = self._adaptive(closure, q, index, groups, gram_fn, op, rows, cache, scale)

        eps = torch.finfo(solve.q_new.dtype).eps
        entries = solve.entries
        slack = 1.0 + 8.0 * eps * (math.sqrt(entries) if isinstance(entries, float) else entries.sqrt())
        state["step"] += 1
        state["violations"].add_(solve.norm_after > solve.norm_before * slack)
        state["solve_failures"].add_(solve.failed)
        if solve.cg:
            state["cg_safeguards"].add_(solve.rescaled)
        self._last = IEQStep(solve.entries, solve.norm_before, solve.norm_after, solve.cg, solve.cg_iters,
                             solve.cg_residual, solve.solver, scale)
        return q.detach()

    def _subset(self, q: Tensor, rows: JacobianRows | None, closed: bool) -> tuple[Tensor, Any, Tensor]:
        """``row_fraction`` of ``q``'s rows, drawn from the step count: the sub-residual (with its graph), its rows of
        ``J`` and their index."""
        if closed:
            raise GFConfigError(f"{type(self).__name__}: row_fraction={self.setting('row_fraction')!r} needs the "
                                "generic path (the closed form gram_fn / jacobian_fn covers every row); allowed: 1.0 "
                                "with them")
        n = q.numel()
        gen = torch.Generator().manual_seed(int(self.global_state["step"]))
        index = torch.randperm(n, generator=gen)[: max(1, round(self.setting("row_fraction") * n))].sort().values
        index = index.to(q.device)
        with torch.enable_grad():  # (the step runs under no_grad; the sub-residual keeps q's graph)
            sub = q.reshape(-1)[index]
        return sub, None if rows is None else SubsetRows(rows, index), index

    def _adaptive(self, closure: Callable[[], Tensor], q: Tensor, index: Tensor | None, groups: list[Group],
                  gram_fn: Any, op: Any, rows: Any, cache: dict[str, Any], scale: float) -> tuple[Solve, float]:
        """Levenberg–Marquardt's rule (the class's docstring): returns the accepted step's solve and ``λ``."""
        state = self.global_state
        for key, value in (("dt_scale", 1.0), ("rejected_steps", 0.0)):
            if key not in state:
                state[key] = self._scalar(value)
        params = [p for _, ps in groups for p in ps]
        saved = [p.detach().clone() for p in params]
        for _ in range(self.setting("max_retries") + 1):
            solve = self._solve(q, groups, gram_fn, op, rows, cache, scale)
            scaled = [(dt * scale, ps) for dt, ps in groups]
            self._move(q, scaled, solve.q_new, op, solve.jtq)
            with torch.no_grad():
                trial = closure().detach().reshape(-1)
            trial = trial if index is None else trial[index]
            after = trial.square().sum(dtype=self._scalar_dtype)
            before = solve.norm_before.square()
            if world_size() > 1:
                after, before = global_sum_(torch.stack([after, q.detach().square().sum(dtype=self._scalar_dtype)]))
            if bool(torch.isfinite(after)) and bool(after < before):
                state["dt_scale"].fill_(min(scale * self.setting("lr_grow"), 1e12))
                return solve, scale
            torch._foreach_copy_(params, saved)
            state["rejected_steps"] += 1
            scale *= self.setting("lr_shrink")
            if "system" not in cache:  # the next try needs q's graph again (the weights moved under it)
                q = self._residual(closure)
                with torch.enable_grad():
                    q = q if index is None else q.reshape(-1)[index]
        state["dt_scale"].fill_(scale)
        for p in params:
            p.grad = None
        return Solve(torch.zeros_like(solve.q_new), solve.entries, solve.norm_before, solve.norm_before, solve.failed,
                     solve.rescaled, solve.cg, solve.cg_iters, solve.cg_residual, solve.solver), scale

    def _residual(self, closure: Callable[[], Tensor] | None) -> Tensor:
        name = type(self).__name__
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=name))
        with torch.enable_grad():
            q = closure()
        if not isinstance(q, Tensor):
            raise GFStepError(
                f"{name}.step(closure): the closure must return the residual q = f(X_B) - Y_B as a tensor with its autograd "
                f"graph (and not call backward); it returned {type(q).__name__}"
            )
        if not q.requires_grad:
            raise GFStepError(
                f"{name}.step(closure): the residual the closure returned has no autograd graph to the parameters; compute it "
                f"with gradients enabled and do not detach it"
            )
        return q

    def _move(self, q: Tensor, groups: list[Group], q_new: Tensor, op: Any = None, jtq: Tensor | None = None) -> None:
        """``w_g ← w_g − Δt_g J_gᵀ qⁿ⁺¹``: one backward pass gives this rank's ``J_rᵀ qⁿ⁺¹_r`` (``torch.autograd.grad``,
        which leaves ``.grad`` alone and so never triggers DDP's gradient averaging); the ranks' shares are then summed.
        In one process with the closed-form operator, ``Jᵀ qⁿ⁺¹`` comes from it instead (its cached products: the same
        multiply-adds without the autograd engine's overhead, a fifth of the step at exp1's shape). ``p.grad`` is left
        holding ``Jᵀ qⁿ⁺¹``."""
        params = [p for _, ps in groups for p in ps]
        grads = self._closed_form_move(params, q_new, op) if op is not None and world_size() == 1 else None
        if jtq is not None:  # the dense solve's own Jᵀqⁿ⁺¹
            grads = [g.view_as(p).to(p.dtype) for g, p in zip(jtq.split([p.numel() for p in params]), params)]
        if grads is None:
            grads = torch.autograd.grad(q, params, grad_outputs=q_new.to(q.dtype).view_as(q), allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if world_size() > 1:
            flat = global_sum_(torch.cat([g.reshape(-1) for g in grads]))
            grads = [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]
        for p, g in zip(params, grads):
            p.grad = g
        for dt, ps in groups:
            torch._foreach_add_(ps, [p.grad for p in ps], alpha=-dt)

    @staticmethod
    def _closed_form_move(params: list[Tensor], q_new: Tensor, op: Any) -> list[Tensor] | None:
        """``Jᵀ qⁿ⁺¹`` per parameter from the operator (``vjp``), or ``None`` when it does not cover exactly ``params``."""
        vjp = getattr(op, "vjp", None)
        if vjp is None:
            return None
        by_param = vjp(q_new)
        if len(by_param) != len(params) or any(id(p) not in by_param for p in params):
            return None
        return [by_param[id(p)].to(p.dtype) for p in params]

    # -- the solve ---------------------------------------------------------------------------------------------------------------
    def _solve(self, q: Tensor, groups: list[Group], gram_fn: Callable[[], Tensor] | None, op: Any, rows: Any = None,
               cache: dict[str, Any] | None = None, factor: float = 1.0) -> Solve:
        """Solve ``(I + J D Jᵀ) qⁿ⁺¹ = qⁿ``: the only place that needs all of ``q`` and ``J``.

        Under DDP with ``distributed="global"`` every rank gathers the global ``qⁿ`` and solves the global system, whose
        ``J`` ``gram_fn`` or ``jacobian_fn`` must give (from the gathered inputs); with ``"block"`` each rank solves its own
        block and the norms are summed over ranks."""
        name = type(self).__name__
        q_flat = q.detach().reshape(-1).to(torch.promote_types(q.dtype, torch.float32))  # no Cholesky in 16 bits
        global_solve = world_size() > 1 and self.setting("distributed") == "global"
        if global_solve and gram_fn is None and op is None:
            raise GFConfigError(
                f"{name} with distributed='global' under DDP needs gram_fn (J Jᵀ) or jacobian_fn (the Jacobian operator) "
                "of the global batch (the closed form from gathered inputs); the generic path has no cross-rank Jacobian: "
                "use distributed='block' for a per-rank block solve (a different algorithm)"
            )
        gathered = gather_rows(q_flat) if global_solve else None
        rhs = gathered.rows if global_solve else q_flat
        sol = self._solve_system(q, rhs, groups, gram_fn, op, rows, {} if cache is None else cache, factor)
        sd = self._scalar_dtype
        failed, rescaled = sol.failed, sol.rescaled
        cg, iters, residual = sol.solver == "cg", sol.cg_iters, sol.cg_residual
        if global_solve or world_size() == 1:  # the whole (global) system, solved here (on every rank, by the same path)
            q_new = sol.q_new[gathered.offset : gathered.offset + gathered.count] if global_solve else sol.q_new
            before, after = torch.linalg.vector_norm(torch.stack([rhs, sol.q_new]), dim=1, dtype=sd).unbind()
            entries: float | Tensor = float(rhs.numel())
        else:  # block: the norms of the global batch, a failure on any rank, the slowest rank's CG
            q_new = sol.q_new
            size = torch.tensor(float(q_flat.numel()), dtype=sd, device=q_flat.device)
            rescaled = torch.zeros((), dtype=torch.bool, device=q.device) if rescaled is None else rescaled
            sums = global_sum_(torch.stack([q_flat.square().sum(dtype=sd), q_new.square().sum(dtype=sd), failed.to(sd),
                                            rescaled.to(sd), size]))
            before, after, failed, rescaled, entries = sums[0].sqrt(), sums[1].sqrt(), sums[2] > 0, sums[3] > 0, sums[4]
            if self.setting("solver") != "cholesky":
                # ranks may have taken different paths (their N differs on an epoch's last batch): all take part
                local = [float(cg), float(iters or 0), float(residual or 0.0)]
                worst = global_max_(torch.tensor(local, dtype=sd, device=q_flat.device)).tolist()
                cg = worst[0] > 0
                iters, residual = (int(worst[1]), worst[2]) if cg else (None, None)
        if cg and iters is not None:
            self._note_cg_iters(iters, converged=residual is not None and residual <= self._cg_tol(q_flat))
        solve = Solve(q_new, entries, before, torch.where(failed, before, after), failed, rescaled, cg, iters, residual,
                      sol.solver, sol.jtq)
        self._warn_if_short(solve, self._cg_tol(q_flat))
        return solve

    def _solve_system(
        self,
        q: Tensor,
        rhs: Tensor,
        groups: list[Group],
        gram_fn: Callable[[], Tensor] | None,
        op: Any,
        rows: Any,
        cache: dict[str, Any],
        factor: float,
    ) -> Solution:
        """``(I + λ J D Jᵀ)⁻¹ rhs`` (``λ = factor``) by the path the settings and the size choose."""
        name = type(self).__name__
        n_rows = rhs.numel()
        if (gram_fn is not None or op is not None) and len({dt for dt, _ in groups}) > 1:
            given = "gram_fn" if gram_fn is not None else "jacobian_fn"
            raise GFConfigError(
                f"{name}: the closed form ({given}) assumes one time step, but the parameter groups have lr = "
                f"{[dt for dt, _ in groups]}; give every group the same lr, or call step() without gram_fn and jacobian_fn"
            )
        if op is not None and op.rows != n_rows:
            raise GFStepError(f"{name}.step: jacobian_fn must return the operator of J with {n_rows} rows; got {op.rows}")
        solver = self._choose(n_rows, groups, gram_fn, op)
        generic = gram_fn is None and op is None
        # the dense rows: parameter space always; residual space when rows are given (or retries will reuse the Gram)
        reuse = rows is not None or self.setting("adaptive_lr")
        if solver == "parameter" or (solver == "cholesky" and generic and reuse):
            if n_rows != q.numel():
                raise GFConfigError(f"{name}: solver={solver!r} from dense rows has no global form under DDP; use "
                                    "distributed='block'")
            size = sum(p.numel() for _, ps in groups for p in ps) if solver == "parameter" else n_rows
            if size > self.setting("max_dense"):
                raise GFConfigError(
                    f"{name}: solver={self.setting('solver')!r} would form a {size} x {size} system, above max_dense="
                    f"{self.setting('max_dense')}; raise max_dense or use solver='auto' or 'cg'")
            return self._dense_rows(q, rhs, groups, rows, solver, cache, factor)
        groups = [(dt * factor, ps) for dt, ps in groups]
        if solver == "cg":
            if op is None and n_rows != q.numel():
                raise GFConfigError(
                    f"{name}: solver='cg' without jacobian_fn has no global form under DDP; give jacobian_fn (the "
                    "Jacobian operator of the global batch) or use distributed='block'"
                )
            return self._krylov(q, rhs, groups, op)
        if n_rows > self.setting("max_dense"):
            raise GFConfigError(
                f"{name}: solver='cholesky' would form a {n_rows} x {n_rows} system, above max_dense="
                f"{self.setting('max_dense')}; raise max_dense or use solver='auto' or 'cg'"
            )
        if op is not None and hasattr(op, "dense"):  # the operator's own J Jᵀ, from its cached products
            system = op.dense().to(rhs.dtype).mul_(groups[0][0])
        elif gram_fn is not None:
            system = gram_fn()
            if not isinstance(system, Tensor) or system.shape != (n_rows, n_rows):
                shape = tuple(system.shape) if isinstance(system, Tensor) else type(system).__name__
                raise GFStepError(f"{name}.step: gram_fn must return J Jᵀ of shape ({n_rows}, {n_rows}); got {shape}")
            system = system.to(rhs.dtype).mul_(groups[0][0])
        else:
            bound = min(jacobian_module.MAX_JACOBIAN_BYTES, self.setting("max_jacobian_bytes"))
            system = gram_dense(q, groups, rhs.dtype, bound)
        system.diagonal().add_(1.0)
        # factor in place; the transpose is the same symmetric matrix in the column-major layout LAPACK works in, which
        # spares cholesky_ex and cholesky_solve a copy of the N × N matrix each
        chol = system.mT
        info = torch.empty((), dtype=torch.int32, device=system.device)
        torch.linalg.cholesky_ex(chol, out=(chol, info))
        q_new = torch.cholesky_solve(rhs.unsqueeze(1), chol).squeeze(1)
        failed = info != 0
        return Solution(q_new.masked_fill_(failed, 0.0), failed)

    def _dense_rows(self, q: Tensor, rhs: Tensor, groups: list[Group], rows: Any, solver: str, cache: dict[str, Any],
                    factor: float) -> Solution:
        """The exact step from dense rows of ``J`` (:mod:`.ieq_solve`), the Gram built once per step (``cache``);
        ``Jᵀqⁿ⁺¹`` returned in the groups' parameter order."""
        if "system" not in cache:
            params = [p for _, ps in groups for p in ps]
            if rows is None or not {id(p) for p in params} <= {id(p) for p in rows.params}:
                rows = GraphRows(q, params)
            dt_of = {id(p): dt for dt, ps in groups for p in ps}
            half = torch.cat([torch.full((p.numel(),), dt_of.get(id(p), 0.0) ** 0.5, dtype=rhs.dtype, device=rhs.device)
                              for p in rows.params])
            offsets, col = {}, 0
            for p in rows.params:
                offsets[id(p)] = col
                col += p.numel()
            order = torch.cat([torch.arange(offsets[id(p)], offsets[id(p)] + p.numel(), device=rhs.device)
                               for p in params])
            index = torch.arange(rhs.numel(), device=rhs.device)
            space = "parameter" if solver == "parameter" else "residual"
            cache["system"] = build_system(rows, rhs, index, half, space, self.setting("max_jacobian_bytes"))
            cache["order"] = order
        sol = solve_dense(cache["system"], factor)
        sol.jtq = sol.jtq[cache["order"]]
        return sol

    def _choose(self, n_rows: int, groups: list[Group], gram_fn: Callable[[], Tensor] | None, op: Any) -> str:
        """``"cholesky"``, ``"parameter"`` or ``"cg"``: the setting, or ``"auto"``'s choice (the class's docstring). No
        host sync."""
        solver = self.setting("solver")
        if solver != "auto":
            return solver
        max_dense = self.setting("max_dense")
        if gram_fn is None and op is None:  # generic: the cheaper dense space that fits, else CG
            n_params = sum(p.numel() for _, ps in groups for p in ps)
            fits = [s for s, size in (("residual", n_rows), ("parameter", n_params)) if size <= max_dense]
            if not fits:
                return "cg"
            space = space_costs(n_rows, n_params).cheaper if len(fits) == 2 else fits[0]
            return "parameter" if space == "parameter" else "cholesky"
        if n_rows > max_dense:
            return "cg"
        if op is None:
            return "cholesky"
        kind = self.setting("preconditioner")
        costs = op.costs(preconditioned=kind == "auto")
        setup, per_iter = costs.setup, costs.per_iter
        if kind == "nystrom":
            extra_setup, extra_iter = nystrom_costs(n_rows, self.setting("precond_rank"), costs.per_iter)
            setup, per_iter = setup + extra_setup, per_iter + extra_iter
        if self._cg_short:  # a solve stopped short of its tolerance: CG does not reach the step here
            return "cholesky"
        estimate = self._cg_estimate
        iters = min(PRIOR_CG_ITERS, self.setting("cg_max_iter")) if estimate is None else estimate
        return "cg" if setup + iters * (per_iter + CG_ITER_OVERHEAD) < costs.dense else "cholesky"

    def _krylov(self, q: Tensor, rhs: Tensor, groups: list[Group], op: Any) -> Solution:
        """Preconditioned CG from zero, then the final check that keeps ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` through rounding."""
        kind, n_rows = self.setting("preconditioner"), rhs.numel()
        precond = None
        if op is not None:  # closed form: one Δt (checked above)
            dt = groups[0][0]

            def matvec(v: Tensor) -> Tensor:
                return op.gram(v).mul_(dt)

            matmat = matvec
            if kind == "auto":
                precond = op.preconditioner(dt)
        else:
            matvec = jdjt_operator(q, groups, rhs.dtype)
            batched = jdjt_operator(q, groups, rhs.dtype, batched=True) if kind == "nystrom" else None

            def matmat(v: Tensor) -> Tensor:
                return batched(v.T.contiguous()).T

        if kind == "nystrom":
            step = int(self.global_state.get("step", 0))
            precond = nystrom_preconditioner(matmat, n_rows, self.setting("precond_rank"), rhs, seed=step)
        result = conjugate_gradients(matvec, rhs, self._cg_tol(rhs), self.setting("cg_max_iter"), precond)
        x, rescaled, failed = keep_guarantee(result.x, rhs)
        return Solution(x, failed, "cg", result.iters, result.residual, rescaled)

    def _note_cg_iters(self, iters: int, converged: bool = True) -> None:
        """Fold a solve's iteration count into the running estimate ``"auto"`` decides with, and note a solve that stopped
        at ``cg_max_iter`` short of its tolerance: CG does not reach the exact step here within the cap (at a large ``Δt``
        its iterations grow like ``√(Δt·‖J‖²)``), so ``"auto"`` takes the exact Cholesky solve from then on rather than a
        truncated one that is stable but may stall. Both travel in the state (``cg_iters_mean``, ``cg_stopped_short``:
        finite numbers, which the run's non-finite guard checks like every other state)."""
        estimate = float(iters) if self._cg_estimate is None else (
            (1.0 - CG_ITERS_WEIGHT) * self._cg_estimate + CG_ITERS_WEIGHT * iters)
        self._cg_estimate = estimate
        state = self.global_state
        if "cg_iters_mean" in state:
            state["cg_iters_mean"].fill_(estimate)
        else:
            state["cg_iters_mean"] = self._scalar(estimate)
        if not converged and not self._cg_short:
            self._cg_short = True
            state["cg_stopped_short"] = self._scalar(1.0)

    def _cg_tol(self, rhs: Tensor) -> float:
        """CG's relative tolerance: ``cg_tol``, but no finer than the residual's dtype can resolve."""
        return max(self.setting("cg_tol"), 10.0 * torch.finfo(rhs.dtype).eps)

    def _warn_if_short(self, solve: Solve, tol: float) -> None:
        """Warn once, on rank zero, when a CG solve (the slowest rank's, in block mode) stopped at ``cg_max_iter`` short of
        its tolerance."""
        if solve.cg_residual is None or solve.cg_residual <= tol or self._cg_warned or rank() != 0:
            return
        self._cg_warned = True
        warnings.warn(
            f"{type(self).__name__}: conjugate gradients stopped at cg_max_iter={solve.cg_iters} with relative residual "
            f"{solve.cg_residual:.3g} (cg_tol={tol:.3g}); the step keeps ‖qⁿ⁺¹‖ ≤ ‖qⁿ‖ but is not the exact IEQ step — "
            "raise cg_max_iter (this warning is shown once; optim/cg_residual logs every step)",
            RuntimeWarning,
            stacklevel=4,
        )

    # -- stats -------------------------------------------------------------------------------------------------------------------
    def _stats_of(self, record: IEQStep) -> dict[str, Tensor]:
        state = self.global_state
        entries = max(record.entries, 1.0) if isinstance(record.entries, float) else record.entries.clamp(min=1.0)
        out = {
            # the scheme's energy ½‖q‖² per entry, ×2: the mean squared residual, in the loss's units (the MSE for regression)
            "energy/true": record.norm_before.square() / entries,
            "energy/modified": record.norm_after.square() / entries,
            "energy/violations": state["violations"].clone(),
            "optim/effective_lr": self._scalar(self.param_groups[0]["lr"] * record.dt_scale),
            "optim/solver": self._scalar(1.0 if record.cg else 2.0 if record.solver == "parameter" else 0.0),
        }
        if "rejected_steps" in state:
            out["optim/rejected_steps"] = state["rejected_steps"].clone()
        for key in ("solve_failures", "cg_safeguards"):
            if key in state and state[key] > 0:  # (a host sync, when the stats are read)
                out[f"optim/{key}"] = state[key].clone()
        if record.cg_iters is not None:
            out["optim/cg_iters"] = self._scalar(float(record.cg_iters))
            out["optim/cg_residual"] = self._scalar(record.cg_residual)
        return out
