"""IEQ with the full Jacobian: the invariant energy quadratization step of SPEC §2, solved exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .base import NO_CLOSURE, EnergyOptimizer, GFConfigError, GFStepError, check_choice, check_positive, world_size

#: the dense generic path materialises ``J`` (``N × n``) when it takes at most this many bytes, else it builds ``J D Jᵀ``
#: column block by column block with Jacobian-vector products and never holds ``J``
MAX_JACOBIAN_BYTES = 64 * 2**20
#: bytes of batched gradients (``rows × n``) that one block of the dense generic path may hold
BLOCK_BYTES = 64 * 2**20


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
      ``q = net(x) − y``), which the step overwrites with ``I + Δt J Jᵀ`` and its Cholesky factor (return a fresh tensor).
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
      the solution (Steihaug 1983, Thm 2.1), so an early stop still has ``‖qⁿ⁺¹‖ ≤ ‖qⁿ‖``. ``gram_fn`` is not used on this path.

    The solve runs in the residual's dtype (float32 for a 16-bit residual: there is no 16-bit Cholesky). With float32 and a
    very large ``Δt·‖J‖²`` (``≳ 1/ε``) the Cholesky factorisation can fail; the step is then skipped (``qⁿ⁺¹ = 0``, no move)
    and counted in ``"optim/solve_failures"``, with no host sync.

    Logged (``self.stats``, 0-dim device tensors): ``energy/q_norm_before`` ``‖qⁿ‖``, ``energy/q_norm`` ``‖qⁿ⁺¹‖``,
    ``energy/true`` ``½‖qⁿ‖²``, ``energy/modified`` ``½‖qⁿ⁺¹‖²``, ``energy/violations`` (steps with ``‖qⁿ⁺¹‖ > ‖qⁿ‖`` beyond
    rounding, ``(1 + 8ε√N)``; never expected), ``optim/effective_lr`` (group 0's ``lr``), ``optim/solve_failures``, and
    ``optim/cg_iters`` on the CG path. State (``global_state``): ``step``, ``violations``, ``solve_failures``.

    Under ``torch.distributed`` (DDP) with ``distributed="global"`` (the default) every rank gathers the global residual
    and solves the global batch's system, exactly the one-process step: ``gram_fn`` must then return ``J Jᵀ`` of the global
    batch, in rank-major order (the LightningModule gives ``net.jacobian_gram`` the inputs gathered from every rank). Each
    rank then applies its own ``J_rᵀ qⁿ⁺¹_r`` and the shares are summed (one all-reduce), so the replicas take one step.
    ``distributed="block"`` solves each rank's own system instead — a block-diagonal approximation of ``J Jᵀ``, a
    different algorithm, cheaper by the cross-rank blocks; it works with every path, the generic ones included.

    Args:
        params: parameters or parameter groups; each group's ``lr`` is its own time step.
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
        check_positive("lr", lr)
        check_choice("solver", solver, self.solvers)
        check_choice("distributed", distributed, self.distributed_modes)
        _check_count("max_dense", max_dense)
        check_positive("cg_tol", cg_tol)
        _check_count("cg_max_iter", cg_max_iter)
        defaults = dict(
            lr=lr, solver=solver, max_dense=max_dense, cg_tol=float(cg_tol), cg_max_iter=cg_max_iter, distributed=distributed
        )
        super().__init__(params, defaults)

    # -- the step --------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor] | None = None, gram_fn: Callable[[], Tensor] | None = None
    ) -> Tensor:
        """Take one step. ``closure`` returns the residual ``q = f(X_B) − Y_B`` with its graph (required); ``gram_fn``, if
        given, returns ``J Jᵀ`` in closed form. Returns ``qⁿ`` detached."""
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
        groups = [(g["lr"], [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        groups = [(dt, ps) for dt, ps in groups if ps]
        if not groups:
            raise GFStepError(f"{name}.step: no parameter of the optimizer requires grad")

        world = world_size()
        q_all, q_new_all, q_new, failed, cg_iters = self._solve(q, groups, gram_fn, world)

        # wⁿ⁺¹ = wⁿ − Δt_g J_gᵀ qⁿ⁺¹: one backward pass gives this rank's J_rᵀ qⁿ⁺¹_r (torch.autograd.grad, which leaves
        # .grad alone and so never triggers DDP's gradient averaging); the ranks' shares are then summed
        params = [p for _, ps in groups for p in ps]
        grads = torch.autograd.grad(q, params, grad_outputs=q_new.to(q.dtype).view_as(q), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if world > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            grads = [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]
        for p, g in zip(params, grads):
            p.grad = g
        for dt, ps in groups:
            torch._foreach_add_(ps, [p.grad for p in ps], alpha=-dt)

        state = self.global_state
        if "step" not in state:
            for key in ("step", "violations", "solve_failures"):
                state[key] = self._scalar(0.0)
        sd = state["step"].dtype
        q_flat = q.detach().reshape(-1)
        before = torch.linalg.vector_norm(q_flat, dtype=sd)
        after = torch.linalg.vector_norm(q_new, dtype=sd)
        slack = 1.0 + 8.0 * torch.finfo(q_new.dtype).eps * q_flat.numel() ** 0.5
        state["step"] += 1
        state["violations"].add_(after > before * slack)
        state["solve_failures"].add_(failed)
        self.stats.update(
            {
                "energy/q_norm_before": before,
                "energy/q_norm": after,
                "energy/true": 0.5 * before.square(),
                "energy/modified": 0.5 * after.square(),
                "energy/violations": state["violations"],
                "optim/solve_failures": state["solve_failures"],
                "optim/effective_lr": self._scalar(self.param_groups[0]["lr"]),
            }
        )
        if cg_iters is None:
            self.stats.pop("optim/cg_iters", None)
        else:
            self.stats["optim/cg_iters"] = self._scalar(float(cg_iters))
        return q.detach()

    # -- the solve ---------------------------------------------------------------------------------------------------------------
    def _solve(
        self, q: Tensor, groups: list[tuple[float, list[Tensor]]], gram_fn: Callable[[], Tensor] | None, world: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int | None]:
        """Solve ``(I + J D Jᵀ) qⁿ⁺¹ = qⁿ``. Returns ``qⁿ`` and ``qⁿ⁺¹`` of the whole (global) batch, this rank's share of
        ``qⁿ⁺¹`` (flat, in ``q``'s dtype, float32 at least), whether the factorisation failed (a bool tensor), and the CG
        iteration count (``None`` on the dense paths). The only place that needs all of ``q`` and ``J``.

        Under DDP with ``distributed="global"`` every rank gathers the global ``qⁿ`` and solves the global system, whose
        ``J Jᵀ`` ``gram_fn`` must return (from the gathered inputs); with ``"block"`` each rank solves its own block."""
        name = type(self).__name__
        q_flat = q.detach().reshape(-1).to(torch.promote_types(q.dtype, torch.float32))  # no Cholesky in 16 bits
        if world > 1 and self.defaults["distributed"] == "global":
            if gram_fn is None:
                raise GFConfigError(
                    f"{name} with distributed='global' under DDP needs gram_fn returning J Jᵀ of the global batch (the "
                    "closed form from gathered inputs); the generic path has no cross-rank Jacobian: use "
                    "distributed='block' for a per-rank block solve (a different algorithm)"
                )
            gathered = q_flat.new_empty(world * q_flat.numel())
            dist.all_gather_into_tensor(gathered, q_flat)
            q_all, q_new_all, failed, iters = self._solve_system(q, gathered, groups, gram_fn)
            n, rank = q_flat.numel(), dist.get_rank()
            return q_all, q_new_all, q_new_all[rank * n : (rank + 1) * n], failed, iters
        q_all, q_new, failed, iters = self._solve_system(q, q_flat, groups, gram_fn)
        if world > 1:  # block: report the global norms
            norms = torch.stack([q_flat.square().sum(), q_new.square().sum()]).double()
            dist.all_reduce(norms, op=dist.ReduceOp.SUM)
            return norms[0].sqrt().reshape(1), norms[1].sqrt().reshape(1), q_new, failed, iters
        return q_all, q_new, q_new, failed, iters

    def _solve_system(
        self, q: Tensor, q_flat: Tensor, groups: list[tuple[float, list[Tensor]]], gram_fn: Callable[[], Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor, int | None]:
        """``(qⁿ, qⁿ⁺¹, failed, cg_iters)`` for the system whose right-hand side is ``q_flat``."""
        name = type(self).__name__
        solver, max_dense = self.defaults["solver"], self.defaults["max_dense"]
        n_rows = q_flat.numel()
        if gram_fn is not None and len({dt for dt, _ in groups}) > 1:
            raise GFConfigError(
                f"{name}: the closed-form Gram (gram_fn) assumes one time step, but the parameter groups have lr = "
                f"{[dt for dt, _ in groups]}; give every group the same lr, or call step() without gram_fn"
            )
        if solver == "cg" or (solver == "auto" and n_rows > max_dense):
            if n_rows != q.numel():
                raise GFConfigError(f"{name}: solver='cg' has no global form under DDP; use distributed='block'")
            q_new, iters = self._cg(q, q_flat, groups)
            return q_flat, q_new, torch.zeros((), dtype=torch.bool, device=q.device), iters
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
            system = system.to(q_flat.dtype).mul_(groups[0][0])
        else:
            system = _gram_dense(q, groups, q_flat.dtype)
        system.diagonal().add_(1.0)
        # factor in place; the transpose is the same symmetric matrix in the column-major layout LAPACK works in, which
        # spares cholesky_ex and cholesky_solve a copy of the N × N matrix each
        factor = system.mT
        info = torch.empty((), dtype=torch.int32, device=system.device)
        torch.linalg.cholesky_ex(factor, out=(factor, info))
        q_new = torch.cholesky_solve(q_flat.unsqueeze(1), factor).squeeze(1)
        failed = info != 0
        return q_flat, q_new.masked_fill_(failed, 0.0), failed, None

    def _cg(self, q: Tensor, q_flat: Tensor, groups: list[tuple[float, list[Tensor]]]) -> tuple[Tensor, int]:
        """Conjugate gradients from ``x⁰ = 0`` on ``(I + J D Jᵀ) x = q``, matrix-free."""
        matvec = _jdjt_operator(q, groups, q_flat.dtype)
        tol = max(self.defaults["cg_tol"], 10.0 * torch.finfo(q_flat.dtype).eps) * float(torch.linalg.vector_norm(q_flat))
        x = torch.zeros_like(q_flat)
        r = q_flat.clone()
        p = r.clone()
        rs = torch.dot(r, r)
        iters = 0
        while iters < self.defaults["cg_max_iter"] and float(rs) ** 0.5 > tol:
            ap = p + matvec(p)
            alpha = rs / torch.dot(p, ap)
            x.add_(alpha * p)
            r.sub_(alpha * ap)
            rs_new = torch.dot(r, r)
            p = r + (rs_new / rs) * p
            rs = rs_new
            iters += 1
        return x, iters


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GFConfigError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _unit_rows(start: int, rows: int, n_rows: int, like: Tensor) -> Tensor:
    """Rows ``start … start+rows−1`` of the ``n_rows × n_rows`` identity, shaped ``(rows, *like.shape)``."""
    e = torch.zeros(rows, n_rows, dtype=like.dtype, device=like.device)
    idx = torch.arange(rows, device=like.device)
    e[idx, idx + start] = 1.0
    return e.view(rows, *like.shape)


def _vjp(q: Tensor, params: list[Tensor], v: Tensor, batched: bool = False) -> tuple[Tensor | None, ...]:
    """``Jᵀv`` per parameter (``None`` where a parameter does not reach ``q``); ``batched``: ``v`` has a leading batch axis."""
    return torch.autograd.grad(q, params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)


def _gram_dense(q: Tensor, groups: list[tuple[float, list[Tensor]]], dtype: torch.dtype) -> Tensor:
    """``J D Jᵀ`` (``N × N``, in ``dtype``) from ``q``'s graph, exactly, for any module."""
    params = [p for _, ps in groups for p in ps]
    scales = [dt for dt, ps in groups for _ in ps]
    n_rows, n_params = q.numel(), sum(p.numel() for p in params)
    itemsize = torch.finfo(dtype).bits // 8
    block = max(1, min(n_rows, BLOCK_BYTES // (itemsize * max(n_params, n_rows))))
    if n_rows * n_params * itemsize <= MAX_JACOBIAN_BYTES:
        # rows of J D^½ from batched backward passes, then one product
        jac = torch.zeros(n_rows, n_params, dtype=dtype, device=q.device)
        for start in range(0, n_rows, block):
            rows = min(block, n_rows - start)
            grads = _vjp(q, params, _unit_rows(start, rows, n_rows, q), batched=True)
            col = 0
            for g, p, dt in zip(grads, params, scales):
                if g is not None:
                    jac[start : start + rows, col : col + p.numel()] = g.reshape(rows, -1) * dt**0.5
                col += p.numel()
        return jac @ jac.T
    # columns J (D Jᵀ E) block by block: never hold J
    jdjt = _jdjt_operator(q, groups, dtype, batched=True)
    gram = torch.empty(n_rows, n_rows, dtype=dtype, device=q.device)
    for start in range(0, n_rows, block):
        rows = min(block, n_rows - start)
        gram[start : start + rows] = jdjt(_unit_rows(start, rows, n_rows, q).view(rows, -1)).view(rows, n_rows)
    return gram


def _jdjt_operator(
    q: Tensor, groups: list[tuple[float, list[Tensor]]], dtype: torch.dtype, batched: bool = False
) -> Callable[[Tensor], Tensor]:
    """``v ↦ J D Jᵀ v`` for flat ``v`` (``(rows, N)`` when ``batched``), the result in ``dtype``: ``Jᵀv`` by a backward
    pass, ``J·`` by the double-backward trick (``Jw = ∂⟨Jᵀu, w⟩/∂u``, exact since ``Jᵀu`` is linear in ``u``)."""
    params = [p for _, ps in groups for p in ps]
    scales = [dt for dt, ps in groups for _ in ps]
    with torch.enable_grad():
        u = torch.zeros_like(q, requires_grad=True)
        jtu = torch.autograd.grad(q, params, u, create_graph=True, allow_unused=True)
    linked = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]

    def apply(v: Tensor) -> Tensor:
        lead = (v.shape[0],) if batched else ()
        jtv = _vjp(q, params, v.to(q.dtype).view(*lead, *q.shape), batched=batched)
        outs = [jtu[i] for i in linked if jtv[i] is not None]
        if not outs:
            return torch.zeros_like(v, dtype=dtype)
        ws = [jtv[i] * scales[i] for i in linked if jtv[i] is not None]
        (jw,) = torch.autograd.grad(outs, u, ws, retain_graph=True, is_grads_batched=batched)
        return jw.reshape(v.shape).to(dtype)

    return apply
