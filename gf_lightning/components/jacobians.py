"""The closed-form Jacobian operators of this package's networks, for IEQ (``IEQ.step(jacobian_fn=…)``): they satisfy
:class:`~gf_lightning.optim.jacobian.JacobianOperator`, so the optimizer works with them without knowing the networks.
The two-layer net's: products with ``J Jᵀ``, ``Jᵀ v``, ``J Jᵀ`` itself, a structured preconditioner (why it keeps the
Krylov solve's energy guarantee: :mod:`gf_lightning.optim.krylov`) and the costs ``solver="auto"`` weighs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..optim.jacobian import Costs
from ..optim.krylov import Preconditioner

if TYPE_CHECKING:
    from .nets import TwoLayerNet


class TwoLayerJacobian:
    r"""The Jacobian of ``q = scale·(f(x) − y)`` for :class:`~gf_lightning.components.TwoLayerNet`
    ``f(x) = s aᵀ σ(Wᵀ x̃)``, in closed form and never as a matrix: products with ``J Jᵀ``, the structured
    preconditioner, and the costs that ``solver="auto"`` weighs. Built by :meth:`TwoLayerNet.jacobian_operator`; the
    net's tensors are read when first needed, so an operator that ``"auto"`` does not use costs nothing.

    With ``h = Wᵀx̃``, ``σ = relu(h)`` (``B × m``), ``g = σ'(h)``, ``U_{(b,c),j} = a_jc g_bj`` and ``K = X̃ X̃ᵀ``
    (``B × B``), rows ``(b, c)`` sample-major as ``f(x).reshape(-1)``:

    .. code-block:: text

        J Jᵀ = c [σσᵀ ⊗ I_k + K ∘ (U Uᵀ)],   c = scale² s²,
        (J Jᵀ v)_b = c [σ_b (σᵀ V) + ((g ∘ K T) a)_b],   T = g ∘ (V aᵀ),   V = v as B × k,

    ``O(B²m + Bmk)`` a product once ``K`` is formed (``O(B²(d+1))``) — against ``O((Bk)²m)`` to form the Gram and
    ``O((Bk)³/3)`` to factor it. When ``B > 2(d+1)`` the product goes through ``X̃`` instead (``O(B(d+1)m)``, no ``K``).
    Only the parameters that require grad are columns of ``J`` (a frozen ``W`` or ``a`` contributes no term).
    """

    def __init__(self, net: TwoLayerNet, x: Tensor, scale: float | Tensor = 1.0) -> None:
        self.net, self.x, self.scale = net, x, scale
        self.B, self.k, self.m, self.d1 = x.shape[0], net.k, net.m, net.d + 1
        self.rows = self.B * self.k
        self.with_a, self.with_w = bool(net.a.requires_grad), bool(net.W.requires_grad)
        self.kernel = self.B <= 2 * self.d1
        self.dtype = torch.promote_types(x.dtype, net.W.dtype)
        self._parts: dict[str, Tensor] | None = None

    # -- what is computed once -----------------------------------------------------------------------------------------
    @property
    def c(self) -> float | Tensor:
        s2 = 1.0 / self.m**2 if self.net.mean_field else 1.0
        scale = self.scale
        return s2 if isinstance(scale, (int, float)) and scale == 1.0 else scale**2 * s2

    def parts(self) -> dict[str, Tensor]:
        if self._parts is None:
            with torch.no_grad():
                x = self.x.to(self.dtype)
                W, a = self.net.W.detach().to(self.dtype), self.net.a.detach().to(self.dtype)
                h = torch.addmm(W[-1], x, W[:-1])
                act = torch.relu(h)
                # σ'(h) as sign(σ(h)): 0 or 1 exactly, and ~10× faster than (h > 0).to(dtype) on a CPU
                # (transposed views, not copies: BLAS takes them as they are)
                parts = {"x": x, "a": a, "aT": a.T, "act": act, "actT": act.T,
                         "gate": torch.sign(act)}
                if self.with_w and self.kernel:
                    parts["K"] = torch.addmm(torch.ones(self.B, self.B, dtype=self.dtype, device=x.device), x, x.T)
            self._parts = parts
        return self._parts

    # -- products ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def gram(self, v: Tensor) -> Tensor:
        """``J Jᵀ v`` for flat ``v`` (``N``) or a block of columns (``N × r``)."""
        if v.dim() == 2:
            return self._gram_columns(v)
        p, c = self.parts(), self.c
        V = v.to(self.dtype).view(self.B, self.k)
        act = p["act"]
        if self.with_w:  # ((g ∘ K (g ∘ V aᵀ)) a): four kernels
            T = torch.mm(V, p["aT"]).mul_(p["gate"])
            out = torch.mm(self._kernel(T).mul_(p["gate"]), p["a"])
            if self.with_a:
                out.addmm_(act, torch.mm(p["actT"], V))
        else:
            out = torch.mm(act, torch.mm(p["actT"], V))
        if not (isinstance(c, float) and c == 1.0):
            out.mul_(c)
        return out.view(v.shape).to(v.dtype)

    @torch.no_grad()
    def vjp(self, v: Tensor) -> dict[int, Tensor]:
        """``Jᵀ v`` for flat ``v`` (``N``): the gradient of ``⟨q, v⟩`` in each parameter that requires grad, keyed by
        the parameter's ``id`` (what a backward pass of ``q`` with ``grad_outputs=v`` gives), from the cached
        products."""
        p = self.parts()
        V = v.to(self.dtype).view(self.B, self.k)
        factor = self.scale / self.m if self.net.mean_field else self.scale
        unit = isinstance(factor, (int, float)) and factor == 1.0
        out = {}
        if self.with_a:
            da = torch.mm(p["actT"], V)
            out[id(self.net.a)] = da if unit else da.mul_(factor)
        if self.with_w:
            T = torch.mm(V, p["aT"]).mul_(p["gate"])
            dW = torch.cat([torch.mm(p["x"].T, T), T.sum(0, keepdim=True)])
            out[id(self.net.W)] = dW if unit else dW.mul_(factor)
        return out

    @torch.no_grad()
    def dense(self) -> Tensor:
        """``J Jᵀ`` itself (``N × N``, a fresh tensor) for the Cholesky path, from the cached products (times
        ``scale²``; :meth:`TwoLayerNet.jacobian_gram` is this at ``scale = 1``)."""
        p = self.parts()
        B, k = self.B, self.k
        act, gate, x = p["act"], p["gate"], p["x"]
        aa = torch.mm(act, p["actT"]) if self.with_a else None
        if not self.with_w:
            if aa is None:  # nothing requires grad: J has no columns
                aa = torch.zeros(B, B, dtype=self.dtype, device=act.device)
            gram = torch.kron(aa, torch.eye(k, dtype=self.dtype, device=act.device)) if k > 1 else aa
        else:
            K = p["K"] if "K" in p else torch.addmm(torch.ones(B, B, dtype=self.dtype, device=x.device), x, x.T)
            if k == 1:
                u = gate * p["aT"]  # (B, m): a_j σ'(h_bj)
                gram = torch.mm(u, u.T).mul_(K)
                if aa is not None:
                    gram.add_(aa)
            else:
                u = (gate.unsqueeze(1) * p["aT"].unsqueeze(0)).reshape(B * k, self.m)  # rows (b, c): a_jc σ'(h_bj)
                gram = torch.mm(u, u.T).view(B, k, B, k).mul_(K.view(B, 1, B, 1))
                if aa is not None:
                    gram.diagonal(dim1=1, dim2=3).add_(aa.unsqueeze(-1))
                gram = gram.view(B * k, B * k)
        c = self.c
        return gram if isinstance(c, float) and c == 1.0 else gram.mul_(c)

    def _gram_columns(self, v: Tensor) -> Tensor:
        p = self.parts()
        B, k, m, cols = self.B, self.k, self.m, v.shape[1]
        V = v.to(self.dtype).reshape(B, k, cols)
        out = torch.zeros_like(V)
        if self.with_a:
            act = p["act"]
            out += (act @ (p["actT"] @ V.reshape(B, -1))).view_as(V)
        if self.with_w:  # T[b, j, r] = g_bj Σ_c a_jc V[b, c, r], batched over b
            a, gate = p["a"], p["gate"]
            T = (a @ V) * gate.unsqueeze(-1)
            KT = self._kernel(T.reshape(B, m * cols)).view(B, m, cols)
            out += p["aT"] @ (KT * gate.unsqueeze(-1))
        return (out * self.c).reshape(v.shape).to(v.dtype)

    def _kernel(self, T: Tensor) -> Tensor:
        """``X̃ X̃ᵀ T`` for ``T`` of shape ``(B, ·)``: through ``K``, or through ``X̃`` when the batch is larger than
        that."""
        p = self.parts()
        if self.kernel:
            return torch.mm(p["K"], T)
        x = p["x"]
        xt_t = x.T @ T  # X̃ᵀ T without forming X̃: its last row (the bias's) is T's column sums
        return torch.addmm(T.sum(0, keepdim=True), x, xt_t)

    # -- the structured preconditioner ---------------------------------------------------------------------------------
    def _with_hidden_part(self) -> bool:
        """Whether the hidden layer's part (an ``m × m`` Woodbury correction) is worth building: when it costs at most
        a few products (at the MNIST shape it takes CG from 15 to 9 iterations; at exp1's ``m = 1000 ≫ B`` it would cost
        more than the whole dense solve)."""
        B, m = self.B, self.m
        build = (B * B * m if B <= m else 2.0 * B * m * m + m**3) + B * m * m + m**3
        return self.with_w and B > 0 and build <= 4.0 * self._matvec_cost()

    @torch.no_grad()
    def preconditioner(self, dt: float) -> Preconditioner | None:
        """``r ↦ M⁻¹ r`` for ``M = I + Δt c [σσᵀ ⊗ I_k + (s sᵀ) ∘ (U Uᵀ)]`` (the class's notation, ``s = X̃ μ̂``, ``μ̂``
        the unit mean of the batch's ``x̃``), which satisfies ``I ⪯ M ⪯ I + Δt J Jᵀ``: the output layer's part of ``J
        Jᵀ`` exactly, the hidden layer's along ``μ̂`` (``(s sᵀ) ⪯ K`` and the Schur product keeps the order). Its
        inverse is formed explicitly at the build — a ``B × B`` matrix (``B ≤ m``) or an ``m × m`` one for Woodbury, and
        an ``m × m`` one for the hidden part — so that an application is five matrix products. ``None`` when there is
        nothing to precondition or a factorisation fails (one host sync, at the build)."""
        if self.B == 0 or not (self.with_a or self.with_w):
            return None
        p = self.parts()
        B, k, m = self.B, self.k, self.m
        t = dt * self.c
        act, actT, a, gate = p["act"], p["actT"], p["a"], p["gate"]
        eye = lambda n: torch.eye(n, dtype=self.dtype, device=act.device)  # noqa: E731
        checks = []
        inv_b = inv_m = None
        if self.with_a and B <= m:  # (I + t σσᵀ)⁻¹, B × B
            fa, info = torch.linalg.cholesky_ex(eye(B) + t * (act @ actT))
            checks.append(info)
            inv_b = torch.cholesky_inverse(fa)
        elif self.with_a:  # Woodbury: (I + t σσᵀ)⁻¹ = I − σ [t (I + t σᵀσ)⁻¹] σᵀ, m × m
            fa, info = torch.linalg.cholesky_ex(eye(m) + t * (actT @ act))
            checks.append(info)
            inv_m = torch.cholesky_inverse(fa).mul_(t)

        def ma_inv(R: Tensor) -> Tensor:
            if inv_b is not None:
                return torch.mm(inv_b, R)
            if inv_m is not None:
                return torch.addmm(R, act, torch.mm(inv_m, torch.mm(actT, R)), alpha=-1.0)
            return R

        hidden = None
        if self._with_hidden_part():
            x = p["x"]
            mu = torch.cat([x.mean(0), torch.ones(1, dtype=self.dtype, device=x.device)])
            mu = mu / torch.linalg.vector_norm(mu)
            s = torch.addmv(mu[-1:].expand(B), x, mu[:-1])  # X̃ μ̂
            ws = gate * s.unsqueeze(1)  # V's column j, as B × k, is ws[:, j] a_jᵀ
            pw = ma_inv(ws)
            core = ws.T @ pw
            core = eye(m) + t * (0.5 * (core + core.T)) * (a @ p["aT"])  # I + t Vᵀ M_a⁻¹ V
            fc, info = torch.linalg.cholesky_ex(core)
            checks.append(info)
            hidden = (pw.T, pw, torch.cholesky_inverse(fc).mul_(t))
        if checks and int(torch.stack(checks).abs().sum()) != 0:
            return None

        def apply(r: Tensor) -> Tensor:
            R = r.to(self.dtype).view(B, k)
            Z = ma_inv(R)
            if hidden is not None:  # Woodbury: M⁻¹ = M_a⁻¹ − P (t (I + t VᵀM_a⁻¹V)⁻¹) Pᵀ, P = M_a⁻¹V
                pwT, pw, core_inv = hidden
                vz = torch.mm(pwT, R).mul_(a).sum(1)  # Pᵀ r, from r itself: the correction is symmetric as computed
                Z = torch.addmm(Z, pw, torch.mv(core_inv, vz).unsqueeze(1) * a, alpha=-1.0)
            return Z.view(r.shape).to(r.dtype)

        return apply

    # -- costs ---------------------------------------------------------------------------------------------------------
    def _matvec_cost(self) -> float:
        B, k, m, d1 = self.B, self.k, self.m, self.d1
        cost = 2.0 * B * m * k if self.with_a else 0.0
        if self.with_w:
            cost += 2.0 * B * m * k + (B * B * m if self.kernel else 2.0 * B * d1 * m)
        return cost

    def costs(self, preconditioned: bool = True) -> Costs:
        """Multiply-adds of the dense closed form and of a CG solve with (or without) the structured preconditioner
        (cached by shape: ``"auto"`` asks every step)."""
        key = (self.B, self.k, self.m, self.d1, self.with_a, self.with_w, self.kernel, preconditioned)
        if key not in _COSTS:
            _COSTS[key] = self._costs(preconditioned)
        return _COSTS[key]

    def _costs(self, preconditioned: bool) -> Costs:
        B, k, m, d1, N = self.B, self.k, self.m, self.d1, self.rows
        forward = B * d1 * m
        gram = (B * B * m if self.with_a else 0.0) + ((B * B * d1 + N * N * m) if self.with_w else 0.0)
        dense = forward + gram + N**3 / 3.0 + 2.0 * N * N
        setup, per_iter = forward + (B * B * d1 if self.with_w and self.kernel else 0.0), self._matvec_cost()
        if preconditioned and self.with_a:  # the factor and the explicit inverse, of B × B or m × m
            setup += B * B * m + B**3 if B <= m else B * m * m + m**3
            per_iter += B * B * k if B <= m else 2.0 * B * m * k + m * m * k
        if preconditioned and self._with_hidden_part():
            setup += (B * B * m if B <= m else 2.0 * B * m * m + m**3) + B * m * m + m**3 + B * d1
            per_iter += 2.0 * B * m * k + m * m
        return Costs(dense, setup, per_iter)


#: :meth:`TwoLayerJacobian.costs` by shape
_COSTS: dict[tuple, Costs] = {}
