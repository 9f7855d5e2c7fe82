"""The networks, as plain ``nn.Module`` s: the two-layer network of SPEC §1,

.. math::
    f(x; w) = s\\, a^\\top \\sigma(W^\\top [x; 1]),\\qquad \\sigma = \\mathrm{ReLU},\\quad
    W \\in \\mathbb{R}^{(d+1)\\times m},\\ a \\in \\mathbb{R}^{m\\times k},

with ``s = 1`` (the seed's network) or ``s = 1/m`` (the mean-field scale of Ma, Mao & Shen 2024), and the deeper fully
connected :class:`MLP` of their physics-informed example.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import GFConfigError
from .jacobians import TwoLayerJacobian

INITS = ("fan_in", "kaiming", "normal", "public")


class TwoLayerNet(nn.Module):
    """``f(x) = s · aᵀ σ(Wᵀ [x; 1])`` with the bias folded into the last row of ``W``.

    Args:
        d: input dimension. m: hidden width. k: output dimension (1 for regression, 10 for MNIST). init: ``"fan_in"``
        (default): ``W ~ U(±1/√(d+1))``, ``a ~ U(±1/√m)``, PyTorch's ``nn.Linear`` rule with the fan-in of
            each layer on the right axis; ``"kaiming"``: ``W ~ N(0, 2/(d+1))`` (He, for ReLU), ``a ~ N(0, 1/m)``;
            ``"normal"``: ``W, a ~ N(0, 1)``, the mean-field choice (use it with ``mean_field=True``; the paper configs
            do); ``"public"``: ``W ~ N(0, 2/m)``, ``a ~ N(0, 2)``, what the public implementation of the seed's methods
            draws — Kaiming's rule with the fan-in taken on the wrong axis of each weight (``m`` for ``W``, 1 for
            ``a``). Offered to compare with it, not as a recommendation: at exp1's shape its outputs start ~47 times
            larger than ``fan_in``'s.
        mean_field: scale the output by ``s = 1/m``.
    """

    def __init__(self, d: int, m: int, k: int = 1, init: str = "fan_in", mean_field: bool = False) -> None:
        super().__init__()
        for name, value in (("d", d), ("m", m), ("k", k)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GFConfigError(f"model.net.{name} must be a positive integer, got {value!r}")
        if init not in INITS:
            raise GFConfigError(f"model.net.init must be one of {', '.join(INITS)}; got {init!r}")
        self.d, self.m, self.k = d, m, k
        self.init = init
        self.mean_field = mean_field
        self.scale = 1.0 / m if mean_field else 1.0
        self.W = nn.Parameter(torch.empty(d + 1, m))
        self.a = nn.Parameter(torch.empty(m, k))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d1, m = self.d + 1, self.m
        if self.init == "fan_in":
            self.W.uniform_(-1.0 / math.sqrt(d1), 1.0 / math.sqrt(d1))
            self.a.uniform_(-1.0 / math.sqrt(m), 1.0 / math.sqrt(m))
        elif self.init == "kaiming":
            self.W.normal_(0.0, math.sqrt(2.0 / d1))
            self.a.normal_(0.0, math.sqrt(1.0 / m))
        elif self.init == "public":
            self.W.normal_(0.0, math.sqrt(2.0 / m))
            self.a.normal_(0.0, math.sqrt(2.0))
        else:
            self.W.normal_()
            self.a.normal_()

    def preactivation(self, x: Tensor) -> Tensor:
        """``h = Wᵀ [x; 1]`` for a batch ``x`` of shape ``(B, d)``: shape ``(B, m)``."""
        return torch.addmm(self.W[-1], x, self.W[:-1])

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.preactivation(x)) @ self.a
        return out * self.scale if self.mean_field else out

    @torch.no_grad()
    def jacobian_gram(self, x: Tensor) -> Tensor:
        """The Gram matrix ``J Jᵀ`` of the Jacobian ``J = ∂f(x)/∂w``, in closed form, without forming ``J``.

        Rows are ordered ``(b, c)``: sample-major, output-minor, as ``f(x).reshape(-1)``. With ``h = Wᵀ x̃``:

        ``(J Jᵀ)[(b,c),(b',c')] = s² ( δ_cc' σ(h_b)·σ(h_b') + (x̃_b·x̃_b') Σ_j a_jc σ'(h_bj) a_jc' σ'(h_b'j) )``,

        the first term from ``∂f/∂a``, the second from ``∂f/∂W``. Cost ``O(B²k²m + B²d)``. ``J`` is the Jacobian in the
        parameters that require grad: a frozen ``W`` or ``a`` contributes no term (its columns are not in ``J``).
        Computed by the Jacobian operator (:meth:`jacobian_operator`), which IEQ's Cholesky path uses too.
        """
        return self.jacobian_operator(x).dense()

    # -- the Jacobian as an operator (IEQ's Krylov solve) --------------------------------------------------------------
    def jacobian_operator(self, x: Tensor, scale: float | Tensor = 1.0) -> TwoLayerJacobian:
        """The Jacobian of ``q = scale · (f(x) − y)`` as IEQ's Krylov solve uses it (``IEQ.step(jacobian_fn=…)``):
        products with ``J Jᵀ`` without forming it, a preconditioner, and the costs ``solver="auto"`` weighs
        (:class:`~gf_lightning.components.jacobians.TwoLayerJacobian`, a
        :class:`~gf_lightning.optim.jacobian.JacobianOperator`). ``J`` is in the parameters that require grad, as in
        :meth:`jacobian_gram`; nothing is computed until the solve asks."""
        return TwoLayerJacobian(self, x, scale)

    def extra_repr(self) -> str:
        return f"d={self.d}, m={self.m}, k={self.k}, init={self.init!r}, mean_field={self.mean_field}"


#: the MLP's activations by name
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "softplus": nn.functional.softplus,
               "sin": torch.sin}
MLP_INITS = ("xavier", "torch")


class MLP(nn.Module):
    """A fully connected network ``d → width → … → width → k`` with ``depth`` hidden layers and one activation: the
    physics-informed network of Ma, Mao & Shen (2024) Example 5 is ``MLP(d=2, k=1, width=32, depth=5)`` with tanh.

    Args:
        d: input dimension. k: output dimension. width: units per hidden layer. depth: hidden layers (≥ 1). activation:
        ``"tanh"`` (default), ``"relu"``, ``"sigmoid"``, ``"softplus"`` or ``"sin"``; smooth ones for a PINN,
            whose loss holds second derivatives in the inputs (ReLU's vanish).
        init: ``"xavier"`` (default): Glorot-normal weights, zero biases (Raissi et al.'s PINNs); ``"torch"``:
        ``nn.Linear``'s
            own uniform rule.
    """

    def __init__(self, d: int = 2, k: int = 1, width: int = 32, depth: int = 5, activation: str = "tanh",
                 init: str = "xavier") -> None:
        super().__init__()
        for name, value in (("d", d), ("k", k), ("width", width), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GFConfigError(f"model.net.{name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise GFConfigError(f"model.net.activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        if init not in MLP_INITS:
            raise GFConfigError(f"model.net.init must be one of {', '.join(MLP_INITS)}; got {init!r}")
        self.d, self.k, self.width, self.depth = d, k, width, depth
        self.activation, self.init = activation, init
        self._act = ACTIVATIONS[activation]
        sizes = [d, *([width] * depth), k]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in self.layers:
            if self.init == "xavier":
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
            else:
                layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self._act(layer(x))
        return self.layers[-1](x)

    def extra_repr(self) -> str:
        return (f"d={self.d}, k={self.k}, width={self.width}, depth={self.depth}, activation={self.activation!r}, "
                f"init={self.init!r}")
