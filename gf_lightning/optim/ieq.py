"""IEQ with the full Jacobian: the invariant energy quadratization step of SPEC §2, solved exactly."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFConfigError, GFStepError
from .distributed import gather_rows, global_max_, global_sum_, rank, world_size
from .jacobian import Group, conjugate_gradients, gram_dense, jdjt_operator
from .settings import check_choice, check_count, check_positive


@dataclass
class Solution:
    """``qⁿ⁺¹`` for one right-hand side, as the dense or the CG path found it."""

    q_new: Tensor  #: flat; zero where the factorisation failed (no move)
    failed: Tensor  #: 0-dim bool: the Cholesky factorisation failed
    cg_iters: int | None = None  #: CG only
    cg_residual: float | None = None  #: CG only: ``‖qⁿ − (I + J D Jᵀ) qⁿ⁺¹‖ / ‖qⁿ‖``


@dataclass
class Solve:
    """The step's solve: this rank's share of ``qⁿ⁺¹`` and the norms of the whole (global) batch."""

    q_new: Tensor  #: this rank's share of ``qⁿ⁺¹``, flat
    entries: Tensor  #: ``N``, the entries of the whole (global) batch's residual, 0-dim, in the state dtype
    norm_before: Tensor  #: ``‖qⁿ‖``, 0-dim, in the state dtype
    norm_after: Tensor  #: ``‖qⁿ⁺¹‖`` — ``‖qⁿ‖`` for a skipped step, whose weights did not move
    failed: Tensor  #: 0-dim: the factorisation failed (on some rank)
    cg_iters: int | None
    cg_residual: float | None


@dataclass(frozen=True)
class IEQStep:
    """The record of one step, from which ``stats`` is computed when asked."""

    entries: Tensor
    norm_before: Tensor
    norm_after: Tensor
    cg_iters: int | None
    cg_residual: float | None


class IEQ(EnergyOptimizer):
    r"""IEQ, full Jacobian (the seed's method A): an unconditionally energy-stable step with a linear solve per batch.

    .. code-block:: text

        input: Δt (lr); w⁰
        for n = 0, 1, …
            qⁿ   = f(X_B; wⁿ) − Y_B ∈ R^N,  N = B·k        (one-hot Y for classification; recomputed every batch)
            J    = ∂qⁿ/∂w ∈ R^{N×n}
            qⁿ⁺¹ = (I + Δt J Jᵀ)⁻¹ qⁿ                      (Cholesky, or conjugate gradients)
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
    calls it under ``torch.enable_grad()``, solves, then runs one backward pass with ``grad_tensors = qⁿ⁺¹``, which leaves
    ``p.grad = Jᵀ qⁿ⁺¹`` in every parameter (the step clears ``p.grad`` first), and moves ``p ← p − Δt_g p.grad``. It returns
    ``qⁿ`` detached.

    Which path is taken (``N = q.numel()``):

    - **closed form** (``gram_fn`` given; ``solver="cholesky"``, or ``"auto"`` with ``N ≤ max_dense``): ``gram_fn()``
      returns ``J Jᵀ`` (``N × N``, rows in ``q.reshape(-1)`` order; :meth:`TwoLayerNet.jacobian_gram` for
      ``q = net(x) − y``, which leaves out the columns of frozen parameters), which the step overwrites with
      ``I + Δt J Jᵀ`` and its Cholesky factor (return a fresh tensor). ``J`` must be the Jacobian in exactly the
      optimizer's parameters that require grad: those are the ones the step moves.
      One ``Δt`` only: groups with different ``lr`` are an error. Cost ``O(B²k²m + B²d)`` for the Gram plus ``O((Bk)³/3)``
      for the Cholesky, on top of one forward and one backward.
    - **dense generic** (no ``gram_fn``; ``solver="cholesky"``, or ``"auto"`` with ``N ≤ max_dense``): ``J D Jᵀ`` from the
      residual's graph, then Cholesky. When ``J`` fits in :data:`MAX_JACOBIAN_BYTES` its rows come from batched backward
      passes (``N`` backward, plus an ``O(N²n)`` product); else each block of columns ``J D Jᵀ E`` comes from a batched
      backward (``DJᵀE``) and a batched double backward (``J·``) (``2N`` backward, memory ``O(block·n)``). Either is
      ``O(N·backward)``: exact, for any ``nn.Module``, and far slower than the closed form at the MNIST shape.
    - **CG** (``solver="cg"``, or ``"auto"`` with ``N > max_dense``): matrix-free conjugate gradients from ``x⁰ = 0`` on
      ``(I + J D Jᵀ) x = qⁿ``, each product one backward (``Jᵀv``) and one double backward (``J·``): ``O(iters·2 backward)``,
      never an ``N × N`` matrix. It stops at ``‖r‖ ≤ max(cg_tol, 10 ε)·‖qⁿ‖`` (``ε`` the residual's machine epsilon) or after
      ``cg_max_iter`` iterations, with one host sync per iteration for that test. CG iterates from zero grow in norm toward
      the solution (Steihaug 1983, Thm 2.1), so an early stop still has ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` — but it is not the IEQ step:
      a stop at the cap warns once (on rank zero) with the residual reached, logged as ``optim/cg_residual``. ``gram_fn`` is
      not used on this path.

    The solve runs in the residual's dtype (float32 for a 16-bit residual: there is no 16-bit Cholesky). With float32 and a
    very large ``Δt·‖J‖²`` (``≳ 1/ε``) the Cholesky factorisation can fail; the step is then skipped — no move, so the
    energy stays ``½‖qⁿ‖²`` and is logged so — and counted in ``optim/solve_failures``, with no host sync.

    Logged (``self.stats``, 0-dim device tensors, of the whole global batch under DDP in either mode): the energy
    ``½‖q‖²`` per entry of the residual, doubled — the mean squared residual, in the units of the loss (the MSE for
    regression), as the other methods log theirs: ``energy/true`` ``‖qⁿ‖²/N`` and ``energy/modified`` ``‖qⁿ⁺¹‖²/N``;
    ``energy/violations`` (steps with ``‖qⁿ⁺¹‖ > ‖qⁿ‖`` beyond rounding, ``(1 + 8ε√N)``; never expected),
    ``optim/effective_lr`` (group 0's ``lr``), ``optim/solve_failures`` once there is one, and ``optim/cg_iters`` and
    ``optim/cg_residual`` on the CG path (the slowest rank's, in block mode). State (``global_state``): ``step``, ``violations``,
    ``solve_failures``.

    Under ``torch.distributed`` (DDP) with ``distributed="global"`` (the default) every rank gathers the global residual
    and solves the global batch's system, exactly the one-process step: ``gram_fn`` must then return ``J Jᵀ`` of the global
    batch, in rank-major order (the LightningModule gives ``net.jacobian_gram`` the inputs gathered from every rank). The
    ranks' residuals may differ in length (an epoch's last batch); their lengths are gathered first, one host sync a
    step. Each rank then applies its own ``J_rᵀ qⁿ⁺¹_r`` and the shares are summed (one all-reduce), so the replicas take
    one step.
    ``distributed="block"`` solves each rank's own system instead — a block-diagonal approximation of ``J Jᵀ``, a
    different algorithm, cheaper by the cross-rank blocks; it works with every path, the generic ones included.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr`` (its time step); the other settings
            are the whole optimizer's.
        lr: the time step ``Δt`` (> 0); seed default 0.1.
        solver: ``"auto"``, ``"cholesky"`` (dense, always) or ``"cg"`` (matrix-free, always).
        max_dense: largest ``N`` for which ``"auto"`` forms the ``N × N`` system (≥ 1); ``"cholesky"`` above it is an error.
        cg_tol: relative residual at which CG stops (> 0).
        cg_max_iter: most CG iterations per step (≥ 1).
        distributed: under DDP, ``"global"`` (the exact step of the global batch) or ``"block"`` (per-rank blocks).
    """

    solvers = ("auto", "cholesky", "cg")
    distributed_modes = ("global", "block")
    #: what the closure returns: the residual ``q``, not a loss (the LightningModule reads this)
    closure_returns = "residual"
    per_group_settings = {"lr": check_positive}
    shared_settings = ("solver", "max_dense", "cg_tol", "cg_max_iter", "distributed")
    _carried = ("_last", "_cg_warned")

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        solver: str = "auto",
        max_dense: int = 4096,
        cg_tol: float = 1e-10,
        cg_max_iter: int = 200,
        distributed: str = "global",
    ) -> None:
        defaults = dict(
            lr=check_positive("lr", lr),
            solver=check_choice("solver", solver, self.solvers),
            max_dense=check_count("max_dense", max_dense),
            cg_tol=check_positive("cg_tol", cg_tol),
            cg_max_iter=check_count("cg_max_iter", cg_max_iter),
            distributed=check_choice("distributed", distributed, self.distributed_modes),
        )
        self._cg_warned = False
        super().__init__(params, defaults)

    # -- the step --------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor] | None = None, gram_fn: Callable[[], Tensor] | None = None
    ) -> Tensor:
        """Take one step. ``closure`` returns the residual ``q = f(X_B) − Y_B`` with its graph (required); ``gram_fn``, if
        given, returns ``J Jᵀ`` in closed form. Returns ``qⁿ`` detached."""
        q = self._residual(closure)
        groups = [(g["lr"], [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        groups = [(dt, ps) for dt, ps in groups if ps]
        if not groups:
            raise GFStepError(f"{type(self).__name__}.step: no parameter of the optimizer requires grad")
        solve = self._solve(q, groups, gram_fn)
        self._move(q, groups, solve.q_new)

        state = self.global_state
        for key in ("step", "violations", "solve_failures"):
            state.setdefault(key, self._scalar(0.0))
        slack = 1.0 + 8.0 * torch.finfo(solve.q_new.dtype).eps * solve.entries.sqrt()
        state["step"] += 1
        state["violations"].add_(solve.norm_after > solve.norm_before * slack)
        state["solve_failures"].add_(solve.failed)
        self._last = IEQStep(solve.entries, solve.norm_before, solve.norm_after, solve.cg_iters, solve.cg_residual)
        return q.detach()

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

    def _move(self, q: Tensor, groups: list[Group], q_new: Tensor) -> None:
        """``w_g ← w_g − Δt_g J_gᵀ qⁿ⁺¹``: one backward pass gives this rank's ``J_rᵀ qⁿ⁺¹_r`` (``torch.autograd.grad``,
        which leaves ``.grad`` alone and so never triggers DDP's gradient averaging); the ranks' shares are then summed.
        ``p.grad`` is left holding ``Jᵀ qⁿ⁺¹``."""
        params = [p for _, ps in groups for p in ps]
        grads = torch.autograd.grad(q, params, grad_outputs=q_new.to(q.dtype).view_as(q), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if world_size() > 1:
            flat = global_sum_(torch.cat([g.reshape(-1) for g in grads]))
            grads = [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]
        for p, g in zip(params, grads):
            p.grad = g
        for dt, ps in groups:
            torch._foreach_add_(ps, [p.grad for p in ps], alpha=-dt)

    # -- the solve ---------------------------------------------------------------------------------------------------------------
    def _solve(self, q: Tensor, groups: list[Group], gram_fn: Callable[[], Tensor] | None) -> Solve:
        """Solve ``(I + J D Jᵀ) qⁿ⁺¹ = qⁿ``: the only place that needs all of ``q`` and ``J``.

        Under DDP with ``distributed="global"`` every rank gathers the global ``qⁿ`` and solves the global system, whose
        ``J Jᵀ`` ``gram_fn`` must return (from the gathered inputs); with ``"block"`` each rank solves its own block and
        the norms are summed over ranks."""
        name = type(self).__name__
        q_flat = q.detach().reshape(-1).to(torch.promote_types(q.dtype, torch.float32))  # no Cholesky in 16 bits
        global_solve = world_size() > 1 and self.setting("distributed") == "global"
        if global_solve and gram_fn is None:
            raise GFConfigError(
                f"{name} with distributed='global' under DDP needs gram_fn returning J Jᵀ of the global batch (the "
                "closed form from gathered inputs); the generic path has no cross-rank Jacobian: use "
                "distributed='block' for a per-rank block solve (a different algorithm)"
            )
        gathered = gather_rows(q_flat) if global_solve else None
        rhs = gathered.rows if global_solve else q_flat
        sol = self._solve_system(q, rhs, groups, gram_fn)
        sd = self._scalar_dtype
        failed, iters, residual = sol.failed, sol.cg_iters, sol.cg_residual
        if global_solve:  # every rank solved the same global system
            q_new = sol.q_new[gathered.offset : gathered.offset + gathered.count]
            before, after = (torch.linalg.vector_norm(v, dtype=sd) for v in (rhs, sol.q_new))
            entries = torch.tensor(float(rhs.numel()), dtype=sd, device=rhs.device)
        else:  # one process, or block: the norms of the global batch, a failure on any rank, the slowest rank's CG
            q_new = sol.q_new
            size = torch.tensor(float(q_flat.numel()), dtype=sd, device=q_flat.device)
            sums = global_sum_(torch.stack([q_flat.square().sum(dtype=sd), q_new.square().sum(dtype=sd), failed.to(sd), size]))
            before, after, failed, entries = sums[0].sqrt(), sums[1].sqrt(), sums[2] > 0, sums[3]
            if iters is not None and world_size() > 1:
                worst = global_max_(torch.tensor([float(iters), residual], dtype=torch.float64))
                iters, residual = int(worst[0]), float(worst[1])
        solve = Solve(q_new, entries, before, torch.where(failed, before, after), failed, iters, residual)
        self._warn_if_short(solve, self._cg_tol(q_flat))
        return solve

    def _solve_system(
        self, q: Tensor, rhs: Tensor, groups: list[Group], gram_fn: Callable[[], Tensor] | None
    ) -> Solution:
        """``(I + J D Jᵀ)⁻¹ rhs`` by the path the settings and the size choose."""
        name = type(self).__name__
        solver, max_dense = self.setting("solver"), self.setting("max_dense")
        n_rows = rhs.numel()
        if gram_fn is not None and len({dt for dt, _ in groups}) > 1:
            raise GFConfigError(
                f"{name}: the closed-form Gram (gram_fn) assumes one time step, but the parameter groups have lr = "
                f"{[dt for dt, _ in groups]}; give every group the same lr, or call step() without gram_fn"
            )
        no_failure = torch.zeros((), dtype=torch.bool, device=q.device)
        if solver == "cg" or (solver == "auto" and n_rows > max_dense):
            if n_rows != q.numel():
                raise GFConfigError(f"{name}: solver='cg' has no global form under DDP; use distributed='block'")
            result = conjugate_gradients(jdjt_operator(q, groups, rhs.dtype), rhs, self._cg_tol(rhs), self.setting("cg_max_iter"))
            return Solution(result.x, no_failure, result.iters, result.residual)
        if n_rows > max_dense:
            raise GFConfigError(
                f"{name}: solver='cholesky' would form a {n_rows} x {n_rows} system, above max_dense={max_dense}; raise "
                f"max_dense or use solver='auto' or 'cg'"
            )
        if gram_fn is not None:
            system = gram_fn()
            if not isinstance(system, Tensor) or system.shape != (n_rows, n_rows):
                shape = tuple(system.shape) if isinstance(system, Tensor) else type(system).__name__
                raise GFStepError(f"{name}.step: gram_fn must return J Jᵀ of shape ({n_rows}, {n_rows}); got {shape}")
            system = system.to(rhs.dtype).mul_(groups[0][0])
        else:
            system = gram_dense(q, groups, rhs.dtype)
        system.diagonal().add_(1.0)
        # factor in place; the transpose is the same symmetric matrix in the column-major layout LAPACK works in, which
        # spares cholesky_ex and cholesky_solve a copy of the N × N matrix each
        factor = system.mT
        info = torch.empty((), dtype=torch.int32, device=system.device)
        torch.linalg.cholesky_ex(factor, out=(factor, info))
        q_new = torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
        failed = info != 0
        return Solution(q_new.masked_fill_(failed, 0.0), failed)

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
        out = {
            # the scheme's energy ½‖q‖² per entry, ×2: the mean squared residual, in the loss's units (the MSE for regression)
            "energy/true": record.norm_before.square() / record.entries.clamp(min=1.0),
            "energy/modified": record.norm_after.square() / record.entries.clamp(min=1.0),
            "energy/violations": state["violations"].clone(),
            "optim/effective_lr": self._scalar(self.param_groups[0]["lr"]),
        }
        if state["solve_failures"] > 0:  # (a host sync, when the stats are read)
            out["optim/solve_failures"] = state["solve_failures"].clone()
        if record.cg_iters is not None:
            out["optim/cg_iters"] = self._scalar(float(record.cg_iters))
            out["optim/cg_residual"] = self._scalar(record.cg_residual)
        return out
