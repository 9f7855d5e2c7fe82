"""IEQ with the full Jacobian, the invariant energy quadratization step of SPEC §2: the optimizer (settings, state,
move, adaptive rule, stats). The solves: :mod:`.ieq_solve`; ``"auto"``'s choice: :mod:`.ieq_choice`; the ranks'
exchange: :mod:`.ieq_distributed`; the paths, the measured numbers behind the defaults, the DDP protocol: docs/ieq.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFConfigError, GFStepError
from .distributed import gather_rows, global_sum_, rank, world_size
from .ieq_choice import Choice, choose_solver, next_estimate
from .ieq_distributed import keep_share, reduce_block
from .ieq_solve import Solution, SolverSettings, check_closed_form, solve_system
from .jacobian import Group, JacobianOperator, JacobianRows, SubsetRows, draw_rows, operator_vjp
from .settings import check_choice, check_count, check_flag, check_fraction, check_positive


class IEQ(EnergyOptimizer):
    r"""IEQ, full Jacobian (the seed's method A): an unconditionally energy-stable step with a linear solve per batch.

    .. code-block:: text

        input: Δt_g (lr of group g), D = diag(Δt_g); w⁰
        for n = 0, 1, …
            qⁿ   = f(X_B; wⁿ) − Y_B ∈ R^N,  N = B·k        (one-hot Y for classification; recomputed every batch)
            J    = ∂qⁿ/∂w ∈ R^{N×n}
            qⁿ⁺¹ = (I + J D Jᵀ)⁻¹ qⁿ                       (Cholesky in residual or parameter space, or CG from 0)
            wⁿ⁺¹ = wⁿ − D Jᵀ qⁿ⁺¹

    ``I + J D Jᵀ`` is symmetric with eigenvalues ``≥ 1``, so ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` for every ``Δt > 0``; so does every
    iterate of CG from zero with a symmetric preconditioner, whatever the iteration count (:mod:`.krylov`). The energy
    ``½‖q‖²`` is summed over the batch (the seed's scheme): for small ``Δt`` a step is a gradient step on the mean
    squared error with step ``Δt·B/2``. The guarantee is per step, for the batch (and the rows) the step solved.

    The closure zeroes the gradients, runs the forward and **returns the residual** ``q`` with its autograd graph (no
    ``backward``); ``step`` leaves ``p.grad = Jᵀqⁿ⁺¹`` and returns ``qⁿ`` detached. ``J`` in closed form, optional
    (one ``Δt`` only): ``gram_fn()`` returns ``J Jᵀ``; ``jacobian_fn()`` a :class:`~.jacobian.JacobianOperator` (e.g.
    :meth:`TwoLayerNet.jacobian_operator`) or dense rows, :class:`~.jacobian.JacobianRows` (e.g.
    :meth:`Objective.jacobian`). Without them ``J`` comes from the residual's graph, for any module. The paths and
    ``"auto"``'s choice, ``adaptive_lr``, ``row_fraction``, DDP, the logged stats and the state: docs/ieq.md.

    Args:
        params: parameters or parameter groups; a group's ``lr`` is its time step; the rest is the whole optimizer's.
        lr: the time step ``Δt`` (> 0); seed default 0.1.
        solver: ``"auto"``, ``"cholesky"`` (dense, residual space), ``"parameter"`` (dense, parameter space) or
            ``"cg"`` (matrix-free).
        max_dense: largest system (``N`` or ``P``) ``"auto"`` may form (≥ 1); a dense ``solver`` above it is an error.
        max_jacobian_bytes: most bytes of ``J`` the dense paths hold at once (≥ 1); beyond it ``J`` comes in blocks.
        cg_tol: relative residual at which CG stops, in ``(0, 1)``; never below ``10 ε`` of the residual's dtype.
        cg_max_iter: most CG iterations per step (≥ 1).
        distributed: under DDP, ``"global"`` (the exact step of the global batch) or ``"block"`` (per-rank blocks).
        preconditioner: ``"auto"`` (the operator's own, none on the generic path), ``"nystrom"`` or ``"none"``.
        precond_rank: the Nyström preconditioner's rank (≥ 1).
        row_fraction: the fraction of the residual's rows solved each step, in ``(0, 1]``.
        adaptive_lr: Levenberg–Marquardt's accept/reject rule on ``Δt``.
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
        self, params: Iterable, lr: float = 0.1, solver: str = "auto", max_dense: int = 4096, cg_tol: float = 1e-6,
        cg_max_iter: int = 200, distributed: str = "global", preconditioner: str = "auto", precond_rank: int = 32,
        max_jacobian_bytes: int = 2**29, row_fraction: float = 1.0, adaptive_lr: bool = False, lr_grow: float = 2.0,
        lr_shrink: float = 0.25, max_retries: int = 10,
    ) -> None:
        if check_positive("cg_tol", cg_tol) >= 1:  # CG's first residual, ‖qⁿ‖ itself, would already meet it
            raise GFConfigError("cg_tol must be a number in (0, 1): at >= 1 conjugate gradients stop before their "
                                f"first iteration and the weights never move; got {cg_tol!r}")
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

    # -- the step ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        gram_fn: Callable[[], Tensor] | None = None,
        jacobian_fn: Callable[[], JacobianOperator | JacobianRows] | None = None,
    ) -> Tensor:
        """Take one step. ``closure`` returns the residual ``q = f(X_B) − Y_B`` with its graph (required);
        ``gram_fn``, if given, returns ``J Jᵀ`` in closed form, and ``jacobian_fn`` the closed-form Jacobian operator or
        dense rows of ``J``. Returns ``qⁿ`` detached."""
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
        self._last = replace(solve, jtq=None, dt_scale=scale)  # the record stats are computed from
        return q.detach()

    def _subset(self, q: Tensor, rows: JacobianRows | None, closed: bool) -> tuple[Tensor, Any, Tensor]:
        """``row_fraction`` of ``q``'s rows, drawn from the step count: the sub-residual (with its graph), its rows of
        ``J`` and their index."""
        if closed:
            raise GFConfigError(f"{type(self).__name__}: row_fraction={self.setting('row_fraction')!r} needs the "
                                "generic path (the closed form gram_fn / jacobian_fn covers every row); allowed: 1.0 "
                                "with them")
        index = draw_rows(q.numel(), self.setting("row_fraction"), int(self.global_state["step"])).to(q.device)
        with torch.enable_grad():  # (the step runs under no_grad; the sub-residual keeps q's graph)
            sub = q.reshape(-1)[index]
        return sub, None if rows is None else SubsetRows(rows, index), index

    def _adaptive(self, closure: Callable[[], Tensor], q: Tensor, index: Tensor | None, groups: list[Group],
                  gram_fn: Any, op: JacobianOperator | None, rows: JacobianRows | None, cache: dict[str, Any],
                  scale: float) -> tuple[Solution, float]:
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
        return replace(solve, q_new=torch.zeros_like(solve.q_new), norm_after=solve.norm_before, jtq=None), scale

    def _residual(self, closure: Callable[[], Tensor] | None) -> Tensor:
        name = type(self).__name__
        if closure is None:
            raise GFStepError(NO_CLOSURE.format(cls=name))
        with torch.enable_grad():
            q = closure()
        if not isinstance(q, Tensor):
            raise GFStepError(
                f"{name}.step(closure): the closure must return the residual q = f(X_B) - Y_B as a tensor with its "
                f"autograd graph (and not call backward); it returned {type(q).__name__}"
            )
        if not q.requires_grad:
            raise GFStepError(
                f"{name}.step(closure): the residual the closure returned has no autograd graph to the parameters; "
                "compute it with gradients enabled and do not detach it"
            )
        return q

    def _move(self, q: Tensor, groups: list[Group], q_new: Tensor, op: JacobianOperator | None = None,
              jtq: Tensor | None = None) -> None:
        """``w_g ← w_g − Δt_g J_gᵀ qⁿ⁺¹``, leaving ``p.grad = Jᵀ qⁿ⁺¹``: from the dense solve, else (in one process) the
        operator's ``vjp``, else one backward pass (``torch.autograd.grad``: ``.grad`` alone, so DDP averages nothing);
        under DDP the ranks' shares are then summed."""
        params = [p for _, ps in groups for p in ps]
        grads = operator_vjp(op, params, q_new) if op is not None and world_size() == 1 else None
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

    # -- the solve -----------------------------------------------------------------------------------------------------
    def _solve(self, q: Tensor, groups: list[Group], gram_fn: Callable[[], Tensor] | None, op: JacobianOperator | None,
               rows: JacobianRows | None = None, cache: dict[str, Any] | None = None, factor: float = 1.0) -> Solution:
        """Solve ``(I + λ J D Jᵀ) qⁿ⁺¹ = qⁿ`` (:func:`.ieq_solve.solve_system`) and record the norms of the whole
        (global) batch. Under DDP, ``"global"``: every rank gathers ``qⁿ`` and solves the global system (a closed form
        of the global batch required), keeping its own share; ``"block"``: each rank solves its own block
        (:mod:`.ieq_distributed`)."""
        name = type(self).__name__
        q_flat = q.detach().reshape(-1).to(torch.promote_types(q.dtype, torch.float32))  # no Cholesky in 16 bits
        global_solve = world_size() > 1 and self.setting("distributed") == "global"
        if global_solve and gram_fn is None and op is None:
            raise GFConfigError(
                f"{name} with distributed='global' under DDP needs gram_fn (J Jᵀ) or jacobian_fn (the Jacobian "
                "operator) of the global batch (the closed form from gathered inputs); the generic path has no "
                "cross-rank Jacobian: use distributed='block' for a per-rank block solve (a different algorithm)"
            )
        gathered = gather_rows(q_flat) if global_solve else None
        rhs = gathered.rows if global_solve else q_flat
        check_closed_form(name, groups, gram_fn, op, rhs.numel())
        solver = self.setting("solver")
        if solver == "auto":
            choice = Choice(self.setting("max_dense"), self.setting("preconditioner"), self.setting("precond_rank"),
                            self.setting("cg_max_iter"), self._cg_estimate, self._cg_short)
            n_params = sum(p.numel() for _, ps in groups for p in ps)
            solver = choose_solver(choice, rhs.numel(), n_params, gram_fn is not None or op is not None, op)
        tol = max(self.setting("cg_tol"), 10.0 * torch.finfo(q_flat.dtype).eps)  # no finer than the dtype resolves
        settings = SolverSettings(
            self.setting("solver"), self.setting("max_dense"), self.setting("max_jacobian_bytes"),
            self.setting("adaptive_lr"), self.setting("preconditioner"), self.setting("precond_rank"), tol,
            self.setting("cg_max_iter"), int(self.global_state.get("step", 0)))
        sol = solve_system(name, q, rhs, groups, gram_fn, op, rows, {} if cache is None else cache, factor, solver,
                           settings)
        if global_solve or world_size() == 1:  # the whole (global) system, solved here (on every rank, one path)
            sol = keep_share(sol, rhs, gathered, self._scalar_dtype)
        else:  # block: the norms of the global batch, a failure on any rank, the slowest rank's CG
            sol = reduce_block(sol, q_flat, self._scalar_dtype, paths_may_differ=self.setting("solver") != "cholesky")
        if sol.cg and sol.cg_iters is not None:
            self._note_cg_iters(sol.cg_iters, converged=sol.cg_residual is not None and sol.cg_residual <= tol)
        self._warn_if_short(sol, tol)
        return sol

    def _note_cg_iters(self, iters: int, converged: bool = True) -> None:
        """Fold a solve's iterations into ``"auto"``'s running estimate (``cg_iters_mean``); note a solve that stopped
        short of its tolerance (``cg_stopped_short``: ``"auto"`` takes Cholesky from then on)."""
        estimate = next_estimate(self._cg_estimate, iters)
        self._cg_estimate = estimate
        state = self.global_state
        if "cg_iters_mean" in state:
            state["cg_iters_mean"].fill_(estimate)
        else:
            state["cg_iters_mean"] = self._scalar(estimate)
        if not converged and not self._cg_short:
            self._cg_short = True
            state["cg_stopped_short"] = self._scalar(1.0)

    def _warn_if_short(self, solve: Solution, tol: float) -> None:
        """Warn once, on rank zero, when a CG solve (the slowest rank's, in block mode) stopped at ``cg_max_iter`` short
        of its tolerance."""
        if solve.cg_residual is None or solve.cg_residual <= tol or self._cg_warned or rank() != 0:
            return
        self._cg_warned = True
        warnings.warn(
            f"{type(self).__name__}: conjugate gradients stopped at cg_max_iter={solve.cg_iters} with relative "
            f"residual {solve.cg_residual:.3g} (cg_tol={tol:.3g}); the step keeps ‖qⁿ⁺¹‖ ≤ ‖qⁿ‖ but is not the exact "
            "IEQ step — raise cg_max_iter (this warning is shown once; optim/cg_residual logs every step)",
            RuntimeWarning, stacklevel=4)

    # -- stats ---------------------------------------------------------------------------------------------------------
    def _stats_of(self, record: Solution) -> dict[str, Tensor]:
        state = self.global_state
        entries = max(record.entries, 1.0) if isinstance(record.entries, float) else record.entries.clamp(min=1.0)
        out = {
            # the scheme's energy ½‖q‖² per entry, ×2: the mean squared residual, in the loss's units (regression: MSE)
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
