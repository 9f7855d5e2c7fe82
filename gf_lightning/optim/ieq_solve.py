"""IEQ's solves as pure functions (no process group, no optimizer state): the step's system by the path chosen
(:func:`solve_system`: Cholesky of ``J D Jᵀ`` from a closed form or the residual's graph, CG, or the exact step from
dense rows of ``J`` in the smaller space), and the one record of a solve (:class:`Solution`).

With ``J_s = J D^½`` (``D = diag(Δt_g)``, one entry per column) and ``λ`` the adaptive step's factor (1 for a fixed
step), the residual-space and the parameter-space forms of the step are the same ``qⁿ⁺¹`` by the push-through identity
``(I + λ J_s J_sᵀ)⁻¹ = I − λ J_s (I + λ J_sᵀ J_s)⁻¹ J_sᵀ``:

.. code-block:: text

    residual space (N × N):   (I + λ J_s J_sᵀ) x = qⁿ,                 qⁿ⁺¹ = x,              Jᵀqⁿ⁺¹ = Jᵀ x
    parameter space (P × P):  (I + λ J_sᵀ J_s) z = J_sᵀ qⁿ,            qⁿ⁺¹ = qⁿ − λ J_s z,   Jᵀqⁿ⁺¹ = D^{-½} z

(the last since ``J_sᵀ (I + λ J_s J_sᵀ)⁻¹ = (I + λ J_sᵀ J_s)⁻¹ J_sᵀ``). The move is ``w ← w − λ D Jᵀqⁿ⁺¹`` in both, so
the energy law ``‖qⁿ⁺¹‖² + λ‖D^½Jᵀqⁿ⁺¹‖² = ⟨qⁿ, qⁿ⁺¹⟩`` and ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` hold in both. Cost in multiply-adds: the
residual form ``N²P + N³/3``, the parameter form ``NP² + P³/3``; the one big product (``J_s J_sᵀ`` or ``J_sᵀ J_s``) is
the physical limit of either. The Gram is built once per step at ``λ = 1``; a retry at another ``λ`` only refactors it.

``J`` is read in row blocks of at most ``max_bytes``. When all of ``J`` fits it is held; else the parameter form
sums ``J_bᵀ J_b`` block by block and reads the blocks again for ``J_s z``, and the residual form builds ``J_s J_sᵀ``
from pairs of blocks (each block read once per block before it). Memory: the system (``min(N, P)²``) plus ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import jacobian as jacobian_module
from .base import GFConfigError, GFStepError
from .jacobian import GraphRows, Group, JacobianOperator, JacobianRows, gram_dense, jdjt_operator, row_blocks
from .krylov import conjugate_gradients, keep_guarantee, nystrom_preconditioner

SPACES = ("residual", "parameter")


@dataclass
class Solution:
    """One step's solve, the one record of it: ``qⁿ⁺¹`` as the dense or the CG path found it (this rank's share under
    DDP); then, filled by the step, the norms of the whole (global) batch and the step's factor, from which ``stats`` is
    computed."""

    q_new: Tensor  #: flat; zero where the solve failed (no move)
    failed: Tensor  #: 0-dim bool: the Cholesky factorisation failed, or CG's iterate was not finite (on some rank)
    #: ``"cholesky"`` (residual space), ``"parameter"`` or ``"cg"`` (block mode: ``"cg"`` when CG solved on some rank)
    solver: str = "cholesky"
    cg_iters: int | None = None  #: CG only (the slowest rank's, in block mode)
    cg_residual: float | None = None  #: CG only: ``‖qⁿ − (I + J D Jᵀ) qⁿ⁺¹‖ / ‖qⁿ‖``
    rescaled: Tensor | None = None  #: CG only, 0-dim bool: the final check scaled the iterate back to ``‖qⁿ‖``
    jtq: Tensor | None = None  #: ``Jᵀqⁿ⁺¹`` over the rows' columns (flat, ``P``) when the solve has it: no backward
    entries: float | Tensor = 0.0  #: ``N``, the whole (global) batch's entries (a 0-dim tensor in block mode)
    norm_before: Tensor | None = None  #: ``‖qⁿ‖``, 0-dim, in the state dtype
    norm_after: Tensor | None = None  #: ``‖qⁿ⁺¹‖``; ``‖qⁿ‖`` for a skipped step, whose weights did not move
    dt_scale: float = 1.0  #: the adaptive step's factor on every ``Δt_g`` (1 for a fixed step)

    @property
    def cg(self) -> bool:
        return self.solver == "cg"


@dataclass(frozen=True)
class SpaceCosts:
    """Multiply-adds of an exact step in each space (the Gram, its factorisation, the products with ``J``)."""

    residual: float
    parameter: float

    @property
    def cheaper(self) -> str:
        return "parameter" if self.parameter < self.residual else "residual"


def space_costs(n_rows: int, n_params: int) -> SpaceCosts:
    N, P = float(n_rows), float(n_params)
    return SpaceCosts(residual=N * N * P + N**3 / 3.0 + N * P, parameter=N * P * P + P**3 / 3.0 + 2.0 * N * P)


@dataclass
class DenseSystem:
    """One step's Gram at ``λ = 1`` and what turns a solve of it into ``qⁿ⁺¹`` and ``Jᵀqⁿ⁺¹``."""

    space: str  #: ``"residual"`` or ``"parameter"``
    gram: Tensor  #: ``J_s J_sᵀ`` (``N × N``) or ``J_sᵀ J_s`` (``P × P``)
    q: Tensor  #: ``qⁿ`` at the rows solved, flat
    half: Tensor  #: ``D^½`` per column (0 for a column no group moves)
    rhs: Tensor | None  #: parameter space: ``J_sᵀ qⁿ``
    jac: Tensor | None  #: ``J_s`` when it fits in ``max_bytes``, else ``None`` (read again in blocks)
    rows: JacobianRows
    index: Tensor  #: the rows of ``J`` solved
    max_bytes: int


def _scaled_block(rows: JacobianRows, index: Tensor, half: Tensor, dtype: torch.dtype) -> Tensor:
    return rows.block(index).to(dtype).mul_(half)


def build_system(rows: JacobianRows, q: Tensor, index: Tensor, half: Tensor, space: str, max_bytes: int) -> DenseSystem:
    """The Gram of ``J_s = J[index] D^½`` in ``space``, reading ``J`` in blocks of at most ``max_bytes``."""
    dtype, n, n_params = q.dtype, len(index), half.numel()
    itemsize = torch.finfo(dtype).bits // 8
    held = n * n_params * itemsize <= max_bytes
    blocks = [index] if held else list(row_blocks(index, n_params, itemsize, max_bytes))
    jac = _scaled_block(rows, index, half, dtype) if held else None
    rhs = None
    if space == "parameter":
        if held:
            gram, rhs = jac.T @ jac, jac.T @ q
        else:
            gram = torch.zeros(n_params, n_params, dtype=dtype, device=q.device)
            rhs = torch.zeros(n_params, dtype=dtype, device=q.device)
            start = 0
            for b in blocks:
                jb = _scaled_block(rows, b, half, dtype)
                gram.addmm_(jb.T, jb)
                rhs.addmv_(jb.T, q[start : start + len(b)])
                start += len(b)
    elif held:
        gram = jac @ jac.T
    else:
        gram = torch.empty(n, n, dtype=dtype, device=q.device)
        starts = [0]
        for b in blocks:
            starts.append(starts[-1] + len(b))
        for i, bi in enumerate(blocks):
            ji = _scaled_block(rows, bi, half, dtype)
            for j, bj in enumerate(blocks[: i + 1]):
                jj = ji if j == i else _scaled_block(rows, bj, half, dtype)
                block = ji @ jj.T
                gram[starts[i] : starts[i + 1], starts[j] : starts[j + 1]] = block
                gram[starts[j] : starts[j + 1], starts[i] : starts[i + 1]] = block.T
    return DenseSystem(space, gram, q, half, rhs, jac, rows, index, max_bytes)


def _cholesky_solve(matrix: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """``matrix⁻¹ rhs`` for a symmetric positive definite ``matrix`` (overwritten by its factor); ``(x, failed)``."""
    factor = matrix.mT  # the same symmetric matrix in LAPACK's column-major layout: no copy
    info = torch.empty((), dtype=torch.int32, device=matrix.device)
    torch.linalg.cholesky_ex(factor, out=(factor, info))
    x = torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    failed = info != 0
    return x.masked_fill_(failed, 0.0), failed


def _times_jac(system: DenseSystem, z: Tensor) -> Tensor:
    """``J_s z`` (``N``)."""
    if system.jac is not None:
        return system.jac @ z
    itemsize = torch.finfo(z.dtype).bits // 8
    parts = [_scaled_block(system.rows, b, system.half, z.dtype) @ z
             for b in row_blocks(system.index, z.numel(), itemsize, system.max_bytes)]
    return torch.cat(parts)


def _times_jac_t(system: DenseSystem, x: Tensor) -> Tensor:
    """``J_sᵀ x`` (``P``)."""
    if system.jac is not None:
        return system.jac.T @ x
    out = torch.zeros(system.half.numel(), dtype=x.dtype, device=x.device)
    itemsize, start = torch.finfo(x.dtype).bits // 8, 0
    for b in row_blocks(system.index, system.half.numel(), itemsize, system.max_bytes):
        out.addmv_(_scaled_block(system.rows, b, system.half, x.dtype).T, x[start : start + len(b)])
        start += len(b)
    return out


def solve_dense(system: DenseSystem, factor: float = 1.0) -> Solution:
    """The exact step at ``λ = factor`` (the module's docstring): ``qⁿ⁺¹`` and ``Jᵀqⁿ⁺¹``; the Gram is left intact."""
    matrix = system.gram.mul(factor)
    matrix.diagonal().add_(1.0)
    inv_half = torch.where(system.half > 0, system.half.reciprocal(), torch.zeros_like(system.half))
    if system.space == "parameter":
        z, failed = _cholesky_solve(matrix, system.rhs)
        q_new = torch.where(failed, torch.zeros_like(system.q), system.q - factor * _times_jac(system, z))
        return Solution(q_new, failed, "parameter", jtq=z * inv_half)
    x, failed = _cholesky_solve(matrix, system.q)
    return Solution(x, failed, "cholesky", jtq=_times_jac_t(system, x) * inv_half)


# -- the system of one step, by the path chosen ------------------------------------------------------------------------
@dataclass(frozen=True)
class SolverSettings:
    """What a solve reads of the optimizer's settings (``IEQ``'s Args), and of the step: CG's tolerance in the
    residual's dtype and the Nyström test matrix's seed (the step count)."""

    solver: str  #: the setting (``"auto"`` included), for messages
    max_dense: int
    max_jacobian_bytes: int
    adaptive_lr: bool  #: retries will refactor the Gram: build it from dense rows once
    preconditioner: str
    precond_rank: int
    cg_tol: float  #: ``max(cg_tol, 10 ε)``
    cg_max_iter: int
    seed: int


def check_closed_form(name: str, groups: list[Group], gram_fn: Callable[[], Tensor] | None,
                      op: JacobianOperator | None, n_rows: int) -> None:
    """Refuse a closed form (``gram_fn`` or the operator) with several time steps, and an operator of another ``N``."""
    if (gram_fn is not None or op is not None) and len({dt for dt, _ in groups}) > 1:
        given = "gram_fn" if gram_fn is not None else "jacobian_fn"
        raise GFConfigError(
            f"{name}: the closed form ({given}) assumes one time step, but the parameter groups have lr = "
            f"{[dt for dt, _ in groups]}; give every group the same lr, or call step() without gram_fn and jacobian_fn"
        )
    if op is not None and op.rows != n_rows:
        raise GFStepError(f"{name}.step: jacobian_fn must return the operator of J with {n_rows} rows; got {op.rows}")


def solve_system(name: str, q: Tensor, rhs: Tensor, groups: list[Group], gram_fn: Callable[[], Tensor] | None,
                 op: JacobianOperator | None, rows: JacobianRows | None, cache: dict[str, Any], factor: float,
                 solver: str, settings: SolverSettings) -> Solution:
    """``(I + λ J D Jᵀ)⁻¹ rhs`` (``λ = factor``) by ``solver``, the path chosen: dense rows (parameter space, or
    residual space when rows are given or retries will reuse the Gram; built once per step in ``cache``), CG, or
    Cholesky of ``J D Jᵀ`` from the closed form or the residual's graph. ``name`` is the optimizer's, for messages."""
    n_rows = rhs.numel()
    generic = gram_fn is None and op is None
    if solver == "parameter" or (solver == "cholesky" and generic and (rows is not None or settings.adaptive_lr)):
        if n_rows != q.numel():
            raise GFConfigError(f"{name}: solver={solver!r} from dense rows has no global form under DDP; use "
                                "distributed='block'")
        size = sum(p.numel() for _, ps in groups for p in ps) if solver == "parameter" else n_rows
        if size > settings.max_dense:
            raise GFConfigError(
                f"{name}: solver={settings.solver!r} would form a {size} x {size} system, above max_dense="
                f"{settings.max_dense}; raise max_dense or use solver='auto' or 'cg'")
        return _dense_rows(q, rhs, groups, rows, solver, cache, factor, settings.max_jacobian_bytes)
    groups = [(dt * factor, ps) for dt, ps in groups]
    if solver == "cg":
        if op is None and n_rows != q.numel():
            raise GFConfigError(
                f"{name}: solver='cg' without jacobian_fn has no global form under DDP; give jacobian_fn (the "
                "Jacobian operator of the global batch) or use distributed='block'"
            )
        return solve_krylov(q, rhs, groups, op, settings)
    if n_rows > settings.max_dense:
        raise GFConfigError(
            f"{name}: solver='cholesky' would form a {n_rows} x {n_rows} system, above max_dense="
            f"{settings.max_dense}; raise max_dense or use solver='auto' or 'cg'"
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
        bound = min(jacobian_module.MAX_JACOBIAN_BYTES, settings.max_jacobian_bytes)
        system = gram_dense(q, groups, rhs.dtype, bound)
    system.diagonal().add_(1.0)
    # factor in place (the transpose: the same symmetric matrix in LAPACK's column-major layout, no copy)
    q_new, failed = _cholesky_solve(system, rhs)
    return Solution(q_new, failed)


def _dense_rows(q: Tensor, rhs: Tensor, groups: list[Group], rows: JacobianRows | None, solver: str,
                cache: dict[str, Any], factor: float, max_bytes: int) -> Solution:
    """The exact step from dense rows of ``J`` (the module's docstring), the Gram built once per step (``cache``);
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
        cache["system"] = build_system(rows, rhs, index, half, space, max_bytes)
        cache["order"] = order
    sol = solve_dense(cache["system"], factor)
    sol.jtq = sol.jtq[cache["order"]]
    return sol


def solve_krylov(q: Tensor, rhs: Tensor, groups: list[Group], op: JacobianOperator | None,
                 settings: SolverSettings) -> Solution:
    """Preconditioned CG from zero on ``(I + J D Jᵀ) x = rhs`` (the operator's products and structured preconditioner,
    or products through ``q``'s graph), then the final check that keeps ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` through rounding."""
    kind, n_rows = settings.preconditioner, rhs.numel()
    precond = None
    if op is not None:  # closed form: one Δt (checked by check_closed_form)
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
        precond = nystrom_preconditioner(matmat, n_rows, settings.precond_rank, rhs, seed=settings.seed)
    result = conjugate_gradients(matvec, rhs, settings.cg_tol, settings.cg_max_iter, precond)
    x, rescaled, failed = keep_guarantee(result.x, rhs)
    return Solution(x, failed, "cg", result.iters, result.residual, rescaled)
