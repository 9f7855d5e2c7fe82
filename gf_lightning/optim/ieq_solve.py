"""IEQ's exact step from dense rows of ``J``, in the smaller space, as pure functions (no process group, no state).

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

from dataclasses import dataclass

import torch
from torch import Tensor

from .jacobian import JacobianRows, row_blocks

SPACES = ("residual", "parameter")


@dataclass
class Solution:
    """``qⁿ⁺¹`` for one right-hand side, as the dense or the CG path found it (the one record of a solve)."""

    q_new: Tensor  #: flat; zero where the solve failed (no move)
    failed: Tensor  #: 0-dim bool: the Cholesky factorisation failed, or CG's iterate was not finite
    solver: str = "cholesky"  #: ``"cholesky"`` (residual space), ``"parameter"`` or ``"cg"``
    cg_iters: int | None = None  #: CG only
    cg_residual: float | None = None  #: CG only: ``‖qⁿ − (I + J D Jᵀ) qⁿ⁺¹‖ / ‖qⁿ‖``
    rescaled: Tensor | None = None  #: CG only, 0-dim bool: the final check scaled the iterate back to ``‖qⁿ‖``
    jtq: Tensor | None = None  #: ``Jᵀqⁿ⁺¹`` over the rows' columns (flat, ``P``) when the solve has it: no backward


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
