"""The Jacobian operators of IEQ's generic path, for any ``nn.Module`` (the Krylov solve itself is in :mod:`.krylov`).

``J = ∂q/∂w`` is never needed as a whole: ``Jᵀv`` is one backward pass through the residual's graph, and ``J·`` the
double-backward trick. ``D = diag(Δt_g)`` holds each parameter group's step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: the dense generic path materialises ``J`` (``N × n``) when it takes at most this many bytes, else it builds ``J D Jᵀ``
#: column block by column block with Jacobian-vector products and never holds ``J``
MAX_JACOBIAN_BYTES = 64 * 2**20
#: bytes of batched gradients (``rows × n``) that one block of the dense generic path may hold
BLOCK_BYTES = 64 * 2**20

#: a parameter group as the solve sees it: its ``Δt_g`` and its parameters that require grad
Group = tuple[float, list[Tensor]]


def unit_rows(start: int, rows: int, n_rows: int, like: Tensor) -> Tensor:
    """Rows ``start … start+rows−1`` of the ``n_rows × n_rows`` identity, shaped ``(rows, *like.shape)``."""
    e = torch.zeros(rows, n_rows, dtype=like.dtype, device=like.device)
    idx = torch.arange(rows, device=like.device)
    e[idx, idx + start] = 1.0
    return e.view(rows, *like.shape)


def vjp(q: Tensor, params: list[Tensor], v: Tensor, batched: bool = False) -> tuple[Tensor | None, ...]:
    """``Jᵀv`` per parameter (``None`` where a parameter does not reach ``q``); ``batched``: ``v`` has a leading batch axis."""
    return torch.autograd.grad(q, params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)


def gram_dense(q: Tensor, groups: list[Group], dtype: torch.dtype) -> Tensor:
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
