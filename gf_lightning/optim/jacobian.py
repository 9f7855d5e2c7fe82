"""The Jacobian of IEQ's residual as the optimizer sees it: the two protocols a caller may hand
``IEQ.step(jacobian_fn=…)`` — a closed-form operator (:class:`JacobianOperator`) or dense rows (:class:`JacobianRows`) —
and, for any ``nn.Module``, the generic forms from the residual's graph (``Jᵀv`` one backward pass, ``J·`` the
double-backward trick; the Krylov solve itself is in :mod:`.krylov`, the exact solves from rows in :mod:`.ieq_solve`).
``D = diag(Δt_g)`` holds each parameter group's step. The optimizer knows no network: a network offers its own operator
(the two-layer net's is :class:`~gf_lightning.components.jacobians.TwoLayerJacobian`).

Dense rows for the Burgers PINN of ``configs/paper/burgers.yaml`` (12 320 × 4 353, float64, one CPU thread), fastest
first: the objective's own (:class:`~gf_lightning.components.pinn.BurgersRows`: the input derivatives propagated
forward through the MLP, then one batched reverse pass) ~1.7 s; the same forward pass under ``torch.func.vmap`` of
``grad`` 2.6–4.5 s; nested ``torch.func`` (``jacfwd(jacrev)`` for ``u_xx`` inside ``vmap(grad)``) 19 s;
:class:`GraphRows` (batched backward passes through the residual's double-backward graph, each row a backward of the
whole batch) 560 s. :class:`PerSampleRows` is the ``torch.func`` way for ``q = s·(f(x) − target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from .krylov import Preconditioner

#: the dense generic path materialises ``J`` (``N × n``) when it takes at most this many bytes, else it builds ``J D
#: Jᵀ`` column block by column block with Jacobian-vector products and never holds ``J``
MAX_JACOBIAN_BYTES = 64 * 2**20
#: bytes of batched gradients (``rows × n``) that one block of the dense generic path may hold
BLOCK_BYTES = 64 * 2**20

#: a parameter group as the solve sees it: its ``Δt_g`` and its parameters that require grad
Group = tuple[float, list[Tensor]]


# -- a closed-form Jacobian operator, for the CG path and "auto"'s choice ----------------------------------------------
@dataclass(frozen=True)
class Costs:
    """Multiply-adds of the two ways to solve, from the problem's sizes: ``dense`` (form ``J Jᵀ`` in closed form, factor
    it, solve), ``setup`` (what a CG solve does once: the operator's cached products, the preconditioner) and
    ``per_iter`` (one CG iteration: a product with ``J Jᵀ`` and one with ``M⁻¹``)."""

    dense: float
    setup: float
    per_iter: float


class JacobianOperator(Protocol):
    """``J = ∂q/∂w`` in closed form, never as a matrix (``IEQ.step(jacobian_fn=…)`` returns one): ``rows`` is ``N``,
    ``gram(v)`` is ``J Jᵀ v`` for flat ``v`` (``N``) or a block of columns (``N × r``), ``preconditioner(dt)`` applies
    ``M⁻¹`` for a symmetric ``I ⪯ M ⪯ I + Δt J Jᵀ`` (or is ``None``), and ``costs(preconditioned)`` the multiply-adds
    ``solver="auto"`` weighs. ``J`` is in exactly the optimizer's parameters that require grad. Two methods are
    optional, used when present: ``dense()``, ``J Jᵀ`` itself (a fresh ``N × N`` tensor) for the Cholesky path, and
    ``vjp(v)``, ``Jᵀ v`` as a dict from each parameter's ``id`` to its gradient, for the move in one process."""

    rows: int

    def gram(self, v: Tensor) -> Tensor: ...

    def preconditioner(self, dt: float) -> Preconditioner | None: ...

    def costs(self, preconditioned: bool = True) -> Costs: ...


# -- generic: J from the residual's graph ------------------------------------------------------------------------------
def unit_rows(start: int, rows: int, n_rows: int, like: Tensor) -> Tensor:
    """Rows ``start … start+rows−1`` of the ``n_rows × n_rows`` identity, shaped ``(rows, *like.shape)``."""
    e = torch.zeros(rows, n_rows, dtype=like.dtype, device=like.device)
    idx = torch.arange(rows, device=like.device)
    e[idx, idx + start] = 1.0
    return e.view(rows, *like.shape)


def vjp(q: Tensor, params: list[Tensor], v: Tensor, batched: bool = False) -> tuple[Tensor | None, ...]:
    """``Jᵀv`` per parameter (``None`` where a parameter does not reach ``q``); ``batched``: ``v`` has a leading batch
    axis."""
    return torch.autograd.grad(q, params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)


def gram_dense(q: Tensor, groups: list[Group], dtype: torch.dtype, max_bytes: int | None = None) -> Tensor:
    """``J D Jᵀ`` (``N × N``, in ``dtype``) from ``q``'s graph, exactly, for any module; ``J`` is held when it takes at
    most ``max_bytes`` (default :data:`MAX_JACOBIAN_BYTES`)."""
    params = [p for _, ps in groups for p in ps]
    scales = [dt for dt, ps in groups for _ in ps]
    n_rows, n_params = q.numel(), sum(p.numel() for p in params)
    itemsize = torch.finfo(dtype).bits // 8
    block = max(1, min(n_rows, BLOCK_BYTES // (itemsize * max(n_params, n_rows))))
    if n_rows * n_params * itemsize <= (MAX_JACOBIAN_BYTES if max_bytes is None else max_bytes):
        # rows of J D^½ from batched backward passes, then one product
        jac = torch.zeros(n_rows, n_params, dtype=dtype, device=q.device)
        for start in range(0, n_rows, block):
            rows = min(block, n_rows - start)
            grads = vjp(q, params, unit_rows(start, rows, n_rows, q), batched=True)
            col = 0
            for g, p, dt in zip(grads, params, scales):
                if g is not None:
                    jac[start : start + rows, col : col + p.numel()] = g.reshape(rows, -1) * dt**0.5
                col += p.numel()
        return jac @ jac.T
    # columns J (D Jᵀ E) block by block: never hold J
    jdjt = jdjt_operator(q, groups, dtype, batched=True)
    gram = torch.empty(n_rows, n_rows, dtype=dtype, device=q.device)
    for start in range(0, n_rows, block):
        rows = min(block, n_rows - start)
        gram[start : start + rows] = jdjt(unit_rows(start, rows, n_rows, q).view(rows, -1)).view(rows, n_rows)
    return gram


def jdjt_operator(
    q: Tensor, groups: list[Group], dtype: torch.dtype, batched: bool = False
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
        jtv = vjp(q, params, v.to(q.dtype).view(*lead, *q.shape), batched=batched)
        outs = [jtu[i] for i in linked if jtv[i] is not None]
        if not outs:
            return torch.zeros_like(v, dtype=dtype)
        ws = [jtv[i] * scales[i] for i in linked if jtv[i] is not None]
        (jw,) = torch.autograd.grad(outs, u, ws, retain_graph=True, is_grads_batched=batched)
        return jw.reshape(v.shape).to(dtype)

    return apply


# -- dense rows of J, for the exact solves -----------------------------------------------------------------------------
class JacobianRows(Protocol):
    """Rows of ``J = ∂q/∂w`` on demand: ``block(index)`` is ``J[index]`` (``len(index) × P``, columns in ``params``'
    order, each parameter flattened), ``rows`` is ``N``. Built from the weights as they are when it is made."""

    params: list[Tensor]
    rows: int

    def block(self, index: Tensor) -> Tensor: ...


class GraphRows:
    """Rows of ``J`` from ``q``'s autograd graph by batched backward passes (any closure; each row costs a backward of
    the whole batch, so this is the slow way: an objective's :meth:`jacobian` is the fast one)."""

    def __init__(self, q: Tensor, params: list[Tensor]) -> None:
        self.q, self.params, self.rows = q, params, q.numel()

    def block(self, index: Tensor) -> Tensor:
        n = len(index)
        e = torch.zeros(n, self.rows, dtype=self.q.dtype, device=self.q.device)
        e[torch.arange(n, device=e.device), index] = 1.0
        grads = vjp(self.q, self.params, e.view(n, *self.q.shape), batched=True)
        return torch.cat([torch.zeros(n, p.numel(), dtype=self.q.dtype, device=self.q.device) if g is None
                          else g.reshape(n, -1) for g, p in zip(grads, self.params)], dim=1)


class PerSampleRows:
    """Rows of ``J`` for ``q = s ⊙ (net(x) − target)`` flattened sample-major (``s`` a number or one per row), by
    ``torch.func``: ``vmap`` over the samples of ``jacrev`` of the network's output (the per-sample Jacobians; the
    target does not enter ``J``). Any module that treats samples independently (no batch norm in training mode)."""

    def __init__(self, net: nn.Module, x: Tensor, scale: float | Tensor = 1.0) -> None:
        self.net, self.x, self.scale = net, x, scale
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        with torch.no_grad():
            self.k = int(net(x[:1]).numel())
        self.rows = len(x) * self.k

    def block(self, index: Tensor) -> Tensor:
        samples = torch.unique(torch.div(index, self.k, rounding_mode="floor"))
        ps = tuple(p.detach() for p in self.params)

        def out(params: tuple[Tensor, ...], xi: Tensor) -> Tensor:
            return functional_call(self.net, dict(zip(self.names, params)), (xi.unsqueeze(0),)).reshape(-1)

        jac = vmap(jacrev(out), in_dims=(None, 0))(ps, self.x[samples])  # per parameter: (samples, k, *p.shape)
        dense = torch.cat([j.reshape(len(samples), self.k, -1) for j in jac], dim=2).reshape(len(samples) * self.k, -1)
        where = torch.searchsorted(samples, torch.div(index, self.k, rounding_mode="floor")) * self.k + index % self.k
        rows = dense[where]
        s = self.scale
        if isinstance(s, Tensor) and s.numel() > 1:
            return rows * s.reshape(-1)[index].unsqueeze(1).to(rows.dtype)
        return rows if isinstance(s, float) and s == 1.0 else rows * s


def draw_rows(n_rows: int, fraction: float, seed: int) -> Tensor:
    """``round(fraction · n_rows)`` row indices (at least one), sorted, drawn without replacement from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_rows, generator=gen)[: max(1, round(fraction * n_rows))].sort().values


class SubsetRows:
    """The rows ``index`` of another :class:`JacobianRows`, renumbered from 0."""

    def __init__(self, rows: JacobianRows, index: Tensor) -> None:
        self.inner, self.index, self.params, self.rows = rows, index, rows.params, len(index)

    def block(self, index: Tensor) -> Tensor:
        return self.inner.block(self.index[index])


def operator_vjp(op: JacobianOperator, params: list[Tensor], v: Tensor) -> list[Tensor] | None:
    """``Jᵀ v`` per parameter from the operator's optional ``vjp``, in ``params``' dtypes; ``None`` when it has none or
    does not cover exactly ``params``."""
    vjp = getattr(op, "vjp", None)
    if vjp is None:
        return None
    by_param = vjp(v)
    if len(by_param) != len(params) or any(id(p) not in by_param for p in params):
        return None
    return [by_param[id(p)].to(p.dtype) for p in params]


def row_blocks(index: Tensor, n_params: int, itemsize: int, max_bytes: int) -> Iterator[Tensor]:
    """``index`` cut into consecutive blocks whose rows of ``J`` take at most ``max_bytes`` each (at least one row)."""
    step = max(1, max_bytes // max(1, n_params * itemsize))
    for start in range(0, len(index), step):
        yield index[start : start + step]
