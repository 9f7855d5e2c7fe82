"""IEQ's Krylov solve: preconditioned conjugate gradients on ``(I + J D Jᵀ) x = qⁿ`` whose every iterate keeps
``‖x‖ ≤ ‖qⁿ‖``, and a randomised Nyström preconditioner for any module. (A closed-form operator brings its own
preconditioner: :class:`~gf_lightning.optim.jacobian.JacobianOperator`; the two-layer net's is
:class:`~gf_lightning.components.jacobians.TwoLayerJacobian`.)

Why a truncated solve keeps IEQ's guarantee
-------------------------------------------
Write ``A = I + G`` with ``G = J D Jᵀ ⪰ 0``, ``x* = A⁻¹ q`` the exact step, and let ``M`` be any symmetric positive
definite preconditioner. Preconditioned CG from ``x⁰ = 0`` gives the ``A``-orthogonal projection of ``x*`` onto the
Krylov space ``K_k = span{M⁻¹q, (M⁻¹A) M⁻¹q, …}``: ``xᵏ`` minimises ``‖x − x*‖_A`` over ``K_k`` (e.g. Saad, *Iterative
Methods for Sparse Linear Systems*, §9.2), so the error is ``A``-orthogonal to ``xᵏ`` and

.. code-block:: text

    xᵏᵀ A xᵏ = xᵏᵀ A x* = qᵀ xᵏ,   i.e.   ‖xᵏ‖² + ‖D^½ Jᵀ xᵏ‖² = ⟨qⁿ, xᵏ⟩,

which is exactly the discrete energy law of the exact step: with ``qⁿ⁺¹ = xᵏ`` and ``Δw = −D Jᵀ qⁿ⁺¹``,
``‖qⁿ⁺¹‖² − ‖qⁿ‖² + ‖qⁿ⁺¹ − qⁿ‖² = −2 ‖D^½ Jᵀ qⁿ⁺¹‖²``. Hence, since ``A ⪰ I``,

.. code-block:: text

    ‖xᵏ‖² ≤ ‖xᵏ‖²_A ≤ ‖x*‖²_A = qᵀ A⁻¹ q ≤ ‖q‖²

(Pythagoras in the ``A``-inner product for the middle step): at any iteration count, any ``Δt`` and with *any* SPD
preconditioner, ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖`` — even ``≤ ‖qⁿ‖_{A⁻¹}``. (Steihaug's theorem, that the iterates grow monotonically in
the ``M``-norm, is the classical route for ``M = I``; for ``M ≠ I`` the 2-norm need not grow monotonically, but it stays
below ``‖qⁿ‖_{A⁻¹}``, which is what the energy needs.) What the argument does need: ``x⁰ = 0`` (from another start CG
minimises over an affine space, not a subspace, and the projection bound is lost; a warm start would have to enter as an
extra direction of a deflated CG), a symmetric ``M``, and a ``G`` that is the ``J D Jᵀ`` of the step's own move.

In floating point the Galerkin orthogonality, and with it the bound, hold up to rounding (it drifts over many iterations
of an ill-conditioned solve), so the solve checks ``‖x‖ ≤ ‖q‖`` at the end (no host sync) and, should rounding have
pushed ``x`` out, scales it back onto that sphere (``IEQ`` counts it in ``optim/cg_safeguards``; it has not happened in
the tests' random cases). A non-finite ``x`` (an overflowing preconditioner) is replaced by 0, a skipped step, as a
failed Cholesky is.

The preconditioners here are both ``M = I + J D^½ Π D^½ Jᵀ`` for an orthogonal projection ``Π`` of parameter space, so
besides being SPD they satisfy ``I ⪯ M ⪯ A``: ``M⁻¹A`` has its eigenvalues in ``[1, 1 + ‖(I − Π) D^½ Jᵀ‖²]``.

- **structured** (the two-layer net's, :class:`~gf_lightning.components.jacobians.TwoLayerJacobian`, the default
  where the closed form is given): ``Π`` keeps every output-layer direction and the hidden-layer directions ``W = μ̂
  βᵀ`` along one input direction ``μ̂`` (the batch's mean ``x̃``, bias included), i.e. ``M = I + Δt c [σσᵀ ⊗ I_k + (s
  sᵀ) ∘ (U Uᵀ)]`` with ``s = X̃ μ̂`` — exactly the output layer's Gram (the ``k``-fold repeated top eigenvalues of
  MNIST's ``J Jᵀ``) plus the hidden layer's Gram along the data's mean. It is applied through an explicit ``B × B`` (or
  ``m × m``) inverse and an ``m × m`` Woodbury correction, never an ``N × N`` matrix. At the MNIST shape and ``Δt =
  0.1`` (MNIST images, float64, after 5 epochs of IEQ) it takes CG to a relative residual of 1e-6 in 17 iterations
  instead of 67 (1e-4: 12 against 48; ``Δt = 1``: 41 against 192); the per-sample ``k × k`` blocks (block Jacobi) take
  79, a rank-50 Nyström 39, a rank-100 one 31.
- **Nyström** (any module, opt-in): ``Π`` projects onto ``span(D^½ Jᵀ Ω)`` for a Gaussian ``Ω`` of ``ℓ`` columns: the
  randomised Nyström approximation ``Ĝ = GΩ (ΩᵀGΩ)⁺ ΩᵀG`` of Frangella, Tropp & Udell (2023), ``M = I + Ĝ``. Its ``ℓ``
  products cost more than the iterations they save on MNIST's slowly decaying spectrum (a batched product through
  autograd costs what ``ℓ`` single ones do), hence opt-in.

No warm start: the system's rows are another batch every step, so the last solution is no guess for this one, and
``x⁰ ≠ 0`` would void the bound above. The preconditioner is rebuilt from each batch and carries nothing over either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: a preconditioner as CG uses it: ``r ↦ M⁻¹ r`` for flat ``r``
Preconditioner = Callable[[Tensor], Tensor]


@dataclass
class CGResult:
    """What conjugate gradients returned: the iterate, its iteration count and the relative residual it reached."""

    x: Tensor
    iters: int
    residual: float  #: ``‖b − A x‖ / ‖b‖`` (the recursively updated residual)
    converged: bool  #: whether it reached its tolerance (else it stopped at the iteration cap, or at a breakdown)


def conjugate_gradients(
    matvec: Callable[[Tensor], Tensor], b: Tensor, tol: float, max_iter: int, precond: Preconditioner | None = None
) -> CGResult:
    """(Preconditioned) CG from ``x⁰ = 0`` on ``(I + G) x = b`` for a symmetric positive semi-definite ``G``
    (``matvec``), with ``precond`` applying ``M⁻¹`` for a symmetric positive definite ``M`` (or none): every iterate
    then has ``‖x‖² + xᵀGx = bᵀx`` and so ``‖x‖ ≤ ‖b‖`` (the module's docstring). Stops at ``‖r‖ ≤ tol·‖b‖`` or after
    ``max_iter`` iterations. The scalars (``pᵀAp``, ``rᵀz``, ``rᵀr``) are read on the host, two syncs per iteration: the
    stopping test needs one anyway, and host arithmetic spares a dozen tiny kernels an iteration, which at these sizes
    cost more than the syncs. A breakdown (``pᵀAp ≤ 0`` or not finite, only through rounding) stops it where it is."""
    b_norm = float(torch.linalg.vector_norm(b))
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precond is None else precond(r)
    p = z.clone()
    if precond is None:
        rz = rr = float(torch.dot(r, r))
    else:
        rz, rr = torch.stack([torch.dot(r, z), torch.dot(r, r)]).tolist()
    stop = tol * b_norm
    iters = 0
    while iters < max_iter and math.sqrt(rr) > stop:
        ap = matvec(p).add_(p)
        pap = float(torch.dot(p, ap))
        if not (pap > 0 and math.isfinite(pap)):
            break
        alpha = rz / pap
        x.add_(p, alpha=alpha)
        r.add_(ap, alpha=-alpha)
        if precond is None:
            rz_new = rr = float(torch.dot(r, r))
            z = r
        else:
            z = precond(r)
            rz_new, rr = torch.stack([torch.dot(r, z), torch.dot(r, r)]).tolist()
        iters += 1
        if not rz_new > 0:  # r = 0 (or a preconditioner that is not positive definite)
            break
        p = torch.add(z, p, alpha=rz_new / rz)
        rz = rz_new
    residual = math.sqrt(max(rr, 0.0)) / b_norm if b_norm > 0 else 0.0
    return CGResult(x, iters, residual, residual <= tol)


def keep_guarantee(x: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The final check of a Krylov solve, without a host sync: ``x`` scaled back to ``‖b‖`` if rounding left it longer,
    and 0 if it is not finite. Returns ``(x, rescaled, failed)``, the last two 0-dim bool tensors."""
    norm_x, norm_b = torch.linalg.vector_norm(x), torch.linalg.vector_norm(b)
    failed = ~torch.isfinite(norm_x)
    rescaled = ~failed & (norm_x > norm_b)
    factor = torch.where(rescaled, norm_b / norm_x.clamp(min=torch.finfo(x.dtype).tiny), torch.ones_like(norm_x))
    x = torch.where(failed, torch.zeros_like(x), x * factor)
    return x, rescaled, failed


# -- costs, for solver="auto" ------------------------------------------------------------------------------------------
def nystrom_costs(n_rows: int, rank: int, matvec: float) -> tuple[float, float]:
    """``(setup, per iteration)`` of a rank-``rank`` Nyström preconditioner: ``rank`` products, a QR, a Cholesky and an
    SVD of ``n_rows × rank`` matrices; two ``n_rows × rank`` products an application."""
    return rank * matvec + 4.0 * n_rows * rank**2 + rank**3, 2.0 * n_rows * rank


# -- a randomised Nyström preconditioner, for any module ---------------------------------------------------------------
def nystrom_preconditioner(
    matmat: Callable[[Tensor], Tensor], n_rows: int, rank: int, like: Tensor, seed: int
) -> Preconditioner | None:
    """``r ↦ M⁻¹ r`` for ``M = I + Ĝ``, ``Ĝ = U Λ Uᵀ`` the rank-``rank`` randomised Nyström approximation of the
    positive semi-definite ``G`` that ``matmat`` applies (``V ↦ G V`` for ``V`` of shape ``(n_rows, rank)``), in the
    stable form of Tropp, Yurtsever, Udell & Cevher (2017, Alg. 3): a shift ``ν`` of the order of rounding keeps the
    small Cholesky positive definite and is taken off again. ``Ĝ ⪯ G`` (up to ``ν``), so ``I ⪯ M ⪯ I + G``. The test
    matrix is drawn from its own generator seeded with ``seed`` (the global RNG is not touched); ``None`` when the
    Cholesky fails anyway."""
    rank = min(rank, n_rows)
    if rank < 1:
        return None
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    omega = torch.randn(n_rows, rank, generator=gen, dtype=like.dtype, device=like.device)
    omega, _ = torch.linalg.qr(omega)
    y = matmat(omega)
    nu = torch.finfo(like.dtype).eps * math.sqrt(n_rows) * torch.linalg.matrix_norm(y)
    y = y + nu * omega
    core = omega.T @ y
    factor, info = torch.linalg.cholesky_ex(0.5 * (core + core.T))
    if int(info) != 0:
        return None
    b = torch.linalg.solve_triangular(factor, y.T, upper=False).T  # y factor⁻ᵀ: Ĝ_ν = b bᵀ
    u, sv, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (sv.square() - nu).clamp(min=0.0)
    shrink = lam / (1.0 + lam)  # M⁻¹ = I − U diag(λ / (1 + λ)) Uᵀ

    def apply(r: Tensor) -> Tensor:
        return r - u @ (shrink * (u.T @ r))

    return apply
