"""The physics-informed objective of Ma, Mao & Shen (2024), Example 5: the viscous Burgers equation.

A network ``u(x, t)`` is trained on the collocation points of :class:`~gf_lightning.data.BurgersCollocation`, whose
``y`` carries each row's target and kind (interior, initial, boundary, or solution for the held-out grid). The objective
is

.. math::
    L = \\frac{1}{n_f}\\sum_{\\rm interior} (u_t + u u_x - \\nu u_{xx})^2
      + \\frac{1}{n_0}\\sum_{\\rm initial} (u + \\sin \\pi x)^2
      + \\frac{1}{n_b}\\sum_{\\rm boundary} u^2\\ \\Big[ + \\frac{1}{n_s}\\sum_{\\rm solution} (u - u^*)^2 \\Big],

the sum of the mean squared error of each kind of row present in the batch, each with weight 1 (the per-kind means keep
the 320 initial and boundary points from being drowned by the 12 000 interior ones, as in Raissi, Perdikaris &
Karniadakis 2019, which sum the boundary and the PDE means). The held-out grid holds solution rows only, so ``val/loss``
is the mean squared error against the exact solution and ``val/rel_l2`` the relative L² error ``‖u − u*‖ / ‖u*‖``.

IEQ: the residual is the vector of those errors, each scaled by ``√(N / n_kind)`` (``N`` the batch's rows), so that
``‖q‖² / N`` is the loss. Its Jacobian needs the PDE residual's derivatives in the weights: for an :class:`MLP`,
:meth:`BurgersPINN.jacobian` gives its dense rows (:class:`BurgersRows`: ``u, u_x, u_t, u_xx`` propagated forward
through the layers, then ``torch.func``), which IEQ's exact solves read; for another network IEQ takes them from the
residual's graph (slow), or conjugate gradients with Jacobian-vector products above ``max_dense``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import GFConfigError
from ..optim.distributed import global_sum_, world_size
from ..problems.burgers import BURGERS, INTERIOR, KINDS, NU, SOLUTION
from .nets import MLP
from .objectives import Objective, Ratio

#: an activation's value and its first three derivatives from its pre-activation ``h`` (Taylor mode through the MLP)
_DERIVATIVES = {
    "tanh": lambda h: (lambda z: (lambda d1: (z, d1, -2 * z * d1, -2 * (d1 * d1 - 2 * z * z * d1)))(1 - z * z))(
        torch.tanh(h)),
    "sin": lambda h: (torch.sin(h), torch.cos(h), -torch.sin(h), -torch.cos(h)),
    "sigmoid": lambda h: (lambda z: (lambda d1: (z, d1, d1 * (1 - 2 * z), d1 * (1 - 2 * z) ** 2 - 2 * d1 * d1))(
        z * (1 - z)))(torch.sigmoid(h)),
    "softplus": lambda h: (lambda s: (nn.functional.softplus(h), s, s * (1 - s), s * (1 - s) * (1 - 2 * s)))(
        torch.sigmoid(h)),
    "relu": lambda h: (torch.relu(h), (h > 0).to(h.dtype), torch.zeros_like(h), torch.zeros_like(h)),
}


class BurgersRows:
    """Dense rows of the Jacobian of :meth:`BurgersPINN.residual` for an :class:`MLP`, in its parameters' order.

    The four channels ``(u, u_x, u_t, u_xx)`` of every point are propagated forward through the layers in one batched
    pass (Taylor mode: ``h' = W a'``, ``a' = σ'(h) h'``, ``a'' = σ''(h) h'² + σ'(h) h''``), then one batched reverse
    pass from each row's cotangent (``(u_x, u, 1, −ν)`` at an interior row, ``(1, 0, 0, 0)`` elsewhere) gives every
    row's gradient at once: a layer's block of ``J`` is ``Σ_c h̄_c ⊗ a_c``, one batched product with four terms per
    point. ``method="vmap"`` is the same forward pass for one point under ``torch.func.vmap`` of ``torch.func.grad``.
    Measured on one CPU thread, float64, the 12 320 × 4 353 ``J`` of ``configs/paper/burgers.yaml``: see
    ``scripts/bench_ieq_pinn.py`` (``vmap`` 2.6 s; nested ``torch.func``, ``jacfwd(jacrev)`` for ``u_xx``, 19 s; batched
    backward passes through the residual's double-backward graph 560 s)."""

    methods = ("taylor", "vmap")

    def __init__(
        self, net: MLP, x: Tensor, y: Tensor, scale: float | Tensor, nu: float, method: str = "taylor"
    ) -> None:
        self.net, self.x, self.y, self.scale, self.nu, self.method = net, x, y, scale, nu, method
        self.params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
        self.rows = len(x)

    def block(self, index: Tensor) -> Tensor:
        rows = self._taylor(index) if self.method == "taylor" else self._vmap(index)
        s = self.scale
        if isinstance(s, Tensor) and s.numel() > 1:
            return rows.mul_(s.reshape(-1)[index].unsqueeze(1).to(rows.dtype))
        return rows if isinstance(s, float) and s == 1.0 else rows.mul_(s)

    @torch.no_grad()
    def _taylor(self, index: Tensor) -> Tensor:
        act, layers = _DERIVATIVES[self.net.activation], self.net.layers
        x, y = self.x[index].detach(), self.y[index]
        n, dtype = len(index), x.dtype
        chans = torch.zeros(4, n, x.shape[1], dtype=dtype, device=x.device)  # (a, a_x, a_t, a_xx) of the input
        chans[0], chans[1, :, 0], chans[2, :, 1] = x, 1.0, 1.0
        saved = []
        for i, layer in enumerate(layers):
            h = chans @ layer.weight.detach().T
            h[0] += layer.bias.detach()
            saved.append(chans)
            if i == len(layers) - 1:
                break
            z, d1, d2, d3 = act(h[0])
            hx, ht, hxx = h[1], h[2], h[3]
            chans = torch.stack([z, d1 * hx, d1 * ht, d2 * hx * hx + d1 * hxx])
            saved[-1] = (saved[-1], hx, ht, hxx, d1, d2, d3)
        u, ux = h[0, :, 0], h[1, :, 0]
        interior = (y[:, 1] == INTERIOR).to(dtype)
        bar = torch.stack([interior * ux + (1 - interior), interior * u, interior, -self.nu * interior]).unsqueeze(-1)
        jac = torch.empty(n, sum(p.numel() for p in self.params), dtype=dtype, device=x.device)
        col = jac.shape[1]
        for i in range(len(layers) - 1, -1, -1):
            inputs = saved[i] if i == len(layers) - 1 else saved[i][0]
            weight = layers[i].weight.detach()
            out_w, in_w = weight.shape
            col -= out_w  # the bias
            jac[:, col : col + out_w] = bar[0]
            col -= out_w * in_w  # the weight: Σ_c h̄_c ⊗ a_c, one (out × 4)(4 × in) product per point
            jac[:, col : col + out_w * in_w] = torch.bmm(bar.permute(1, 2, 0), inputs.transpose(0, 1)).reshape(n, -1)
            if i == 0:
                break
            abar = bar @ weight  # the cotangents of the previous layer's (a, a_x, a_t, a_xx)
            _, hx, ht, hxx, d1, d2, d3 = saved[i - 1]
            bar = torch.stack([
                abar[0] * d1 + abar[1] * d2 * hx + abar[2] * d2 * ht + abar[3] * (d3 * hx * hx + d2 * hxx),
                abar[1] * d1 + abar[3] * 2 * d2 * hx,
                abar[2] * d1,
                abar[3] * d1,
            ])
        return jac

    def _vmap(self, index: Tensor) -> Tensor:
        from torch.func import grad, vmap

        act, nu = _DERIVATIVES[self.net.activation], self.nu
        n_layers = len(self.net.layers)

        def row(ps: tuple[Tensor, ...], point: Tensor, target: Tensor, kind: Tensor) -> Tensor:
            eye = torch.eye(2, dtype=point.dtype, device=point.device)
            a, ax, at, axx = point, eye[0], eye[1], torch.zeros_like(point)
            for i in range(n_layers):
                W, b = ps[2 * i], ps[2 * i + 1]
                h, hx, ht, hxx = W @ a + b, W @ ax, W @ at, W @ axx
                if i == n_layers - 1:
                    u, ux, ut, uxx = h[0], hx[0], ht[0], hxx[0]
                    break
                z, d1, d2, _ = act(h)
                a, ax, at, axx = z, d1 * hx, d1 * ht, d2 * hx * hx + d1 * hxx
            return torch.where(kind == INTERIOR, ut + u * ux - nu * uxx, u) - target

        ps = tuple(p.detach() for p in self.params)
        y = self.y[index]
        grads = vmap(grad(row), in_dims=(None, 0, 0, 0))(ps, self.x[index].detach(), y[:, 0], y[:, 1])
        return torch.cat([g.reshape(len(index), -1) for g in grads], dim=1)


class BurgersPINN(Objective):
    """``u_t + u u_x = ν u_xx`` at the interior rows, ``u = target`` at the others; the per-kind mean squared errors
    summed.

    ``predict(net, x)`` returns ``(N, 2)``: column 0 the network's ``u(x, t)``, column 1 the PDE residual ``u_t + u u_x
    − ν u_xx`` from automatic differentiation in the inputs (``create_graph``, so that the loss can be differentiated in
    the weights). It computes the residual at every row — it does not see the rows' kinds, which travel in ``y`` — and
    does so in evaluation too (validation runs under ``torch.inference_mode``, which it leaves for the derivatives). The
    network must treat rows independently (no batch norm): ``∂u/∂x`` comes from ``∂(Σ u)/∂x``.

    Args:
        nu: the viscosity; the data module's ``nu`` must be the same (both default to the paper's ``0.01/π``).
    """

    per_sample = False  # a sum of per-kind means
    problem = BURGERS  # y is (target, kind)

    def __init__(self, nu: float = NU) -> None:
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not (math.isfinite(nu) and nu > 0):
            raise GFConfigError(f"model.objective.init_args.nu must be a finite number > 0; got {nu!r}")
        self.nu = float(nu)

    # -- the prediction: u and the PDE residual ------------------------------------------------------------------------
    def predict(self, net: nn.Module, x: Tensor) -> Tensor:
        grad_mode = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():
            xt = x.detach().clone().requires_grad_(True)  # (a clone: an inference tensor cannot join a graph)
            u = net(xt)
            if u.dim() != 2 or u.shape[1] != 1:
                raise GFConfigError(
                    f"{type(self).__name__} needs a network with one output u(x, t); got shape {tuple(u.shape)}"
                )
            (du,) = torch.autograd.grad(u.sum(), xt, create_graph=True)
            u_x, u_t = du[:, :1], du[:, 1:2]
            (d2u,) = torch.autograd.grad(u_x.sum(), xt, create_graph=grad_mode)
            u_xx = d2u[:, :1]
            out = torch.cat([u, u_t + u * u_x - self.nu * u_xx], dim=1)
        return out if grad_mode else out.detach()

    def check_net(self, net: nn.Module) -> None:
        """Refuse a network whose ``u_xx`` is exactly 0 on an 8 × 8 grid of the domain: a piecewise-linear network
        (ReLU, leaky ReLU, hard tanh, …) has no second derivative, so the viscous term ``ν u_xx`` drops out and the
        network is trained on the inviscid equation. Checked numerically, so it holds for any network; draws no random
        numbers."""
        param = next(net.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
        device = param.device if param is not None else None
        x, t = torch.meshgrid(torch.linspace(-0.9, 0.9, 8, dtype=dtype, device=device),
                              torch.linspace(0.1, 0.9, 8, dtype=dtype, device=device), indexing="ij")
        with torch.inference_mode(False), torch.enable_grad():
            xt = torch.stack([x.reshape(-1), t.reshape(-1)], dim=1).requires_grad_(True)
            (du,) = torch.autograd.grad(net(xt).sum(), xt, create_graph=True)
            u_xx = torch.autograd.grad(du[:, 0].sum(), xt, allow_unused=True)[0]
        if u_xx is None or not bool((u_xx[:, 0] != 0).any()):
            activation = getattr(net, "activation", None)
            what = f"{type(net).__name__}" + (f" with activation {activation!r}" if isinstance(activation, str) else "")
            raise GFConfigError(
                f"model.net ({what}) has u_xx = 0 at every one of 64 points of the domain (a piecewise-linear "
                "network): "
                f"{type(self).__name__} would drop the viscous term nu·u_xx and train the inviscid equation; allowed: "
                "a "
                "network with a second derivative, such as MLP with activation tanh, sigmoid, softplus or sin"
            )

    def check_data(self, data: object) -> None:
        """Refuse data that are not this problem's rows (:data:`~gf_lightning.problems.burgers.BURGERS`), or are of
        another viscosity (``data.nu``): the PDE residual would be that of another equation."""
        if getattr(data, "problem", None) != self.problem:
            raise GFConfigError(
                f"model.objective ({self!r}) reads rows whose y is ({', '.join(self.problem.y_columns)}); the data "
                f"({type(data).__name__}) are not {self.problem.rows} of the {self.problem.name} problem"
            )
        nu = getattr(data, "nu", None)
        if not math.isclose(self.nu, nu, rel_tol=1e-12):
            raise GFConfigError(
                f"model.objective.init_args.nu = {self.nu!r} differs from data.nu = {nu!r}; allowed: the same "
                f"viscosity in both (the default of both is 0.01/π)"
            )

    # -- the loss ------------------------------------------------------------------------------------------------------
    @staticmethod
    def errors(pred: Tensor, y: Tensor) -> Tensor:
        """Each row's error, flat: the PDE residual at interior rows, ``u − target`` at the others."""
        if y.dim() != 2 or y.shape[1] != 2 or pred.dim() != 2 or pred.shape[1] != 2:
            raise GFConfigError(
                "BurgersPINN needs y of shape (N, 2), (target, kind), as gf_lightning.data.BurgersCollocation makes "
                "it, and "
                f"its own predict's (u, PDE residual); got y {tuple(y.shape)}, prediction {tuple(pred.shape)}"
            )
        kind = y[:, 1]
        value = torch.where(kind == INTERIOR, pred[:, 1], pred[:, 0])
        return value - y[:, 0]

    @staticmethod
    def _counts(y: Tensor, global_: bool) -> Tensor:
        """Rows of each kind (over all ranks when ``global_``), float, one entry per code of :data:`KINDS`."""
        counts = torch.bincount(y[:, 1].long(), minlength=len(KINDS)).to(y.dtype)
        return global_sum_(counts) if global_ else counts

    def _weights(self, y: Tensor, global_: bool) -> Tensor:
        """``1 / n_kind`` for each row."""
        return self._counts(y, global_).clamp(min=1.0).reciprocal()[y[:, 1].long()]

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return (self.errors(pred, y).square() * self._weights(y, False)).sum()

    def ratio(self, pred: Tensor, y: Tensor) -> Ratio:
        """For the held-out set: the batch's loss × its rows over its rows. On a set of one kind (the solution grid) the
        sum over batches is exactly that kind's mean squared error; on a mixed set split into several batches, the
        row-weighted mean of the batches' losses."""
        n = y.new_tensor(float(len(y)))
        return Ratio(self.loss(pred, y).detach() * n, n)

    def shard_loss(self, pred: Tensor, y: Tensor, total: int) -> Tensor:
        """Under DDP: ``W · Σ`` this rank's squared errors over the *global* kind counts (one all-reduce of four
        counts), so that the ranks' mean is the global batch's loss."""
        world = world_size()
        if world == 1:
            return self.loss(pred, y)
        return (self.errors(pred, y).square() * self._weights(y, True)).sum() * world

    # -- IEQ -----------------------------------------------------------------------------------------------------------
    def residual_scale(self, y: Tensor) -> Tensor:
        """``√(N / n_kind)`` per row, ``N`` and ``n_kind`` of the global batch: ``‖q‖² / N`` is then the loss."""
        counts = self._counts(y, True)
        return (counts.sum() * counts.clamp(min=1.0).reciprocal()).sqrt()[y[:, 1].long()]

    def residual(self, pred: Tensor, y: Tensor, scale: float | Tensor | None = None) -> Tensor:
        s = self.residual_scale(y) if scale is None else scale
        return self.errors(pred, y) * s

    def jacobian(self, net: nn.Module, x: Tensor, y: Tensor, scale: float | Tensor) -> BurgersRows | None:
        """Dense rows of :meth:`residual`'s Jacobian (:class:`BurgersRows`) for an :class:`MLP` whose parameters all
        require grad; ``None`` for another network (IEQ then reads them from the residual's graph)."""
        if not isinstance(net, MLP) or not all(p.requires_grad for p in net.parameters()):
            return None
        return BurgersRows(net, x, y, scale, self.nu)

    # -- evaluation: the predicted solution against the exact one ------------------------------------------------------
    @staticmethod
    def solution(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, u*)`` at the rows of kind SOLUTION: what ``val/rel_l2 = ‖u − u*‖ / ‖u*‖`` compares."""
        keep = y[:, 1] == SOLUTION
        return pred[keep, 0], y[keep, 0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nu={self.nu:.6g})"
