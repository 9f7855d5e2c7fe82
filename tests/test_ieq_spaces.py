"""IEQ's exact step in parameter space (the push-through identity) against the residual-space step, the dense rows
of ``J`` (torch.func, the PINN's forward-propagated derivatives) against the residual's graph, ``solver="auto"``'s
choice of space, the memory bound on ``J``, the random subset of rows, the adaptive ``Δt`` (Levenberg–Marquardt's rule),
and a float64 PINN run through the CLI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from support import CONFIGS, run_dir
from test_ieq import cnn, reference_step, residual_and_jacobian
from torch import nn

from gf_lightning.components import MLP, BurgersPINN, MeanSquaredError, TwoLayerNet
from gf_lightning.components.pinn import BurgersRows
from gf_lightning.data import BurgersCollocation
from gf_lightning.optim.ieq import IEQ
from gf_lightning.optim.jacobian import GraphRows

F64 = torch.float64


# -- problems: (net, x, y, objective), a closure and the objective's dense rows ----------------------------------------
def pinn(width: int, depth: int, seed: int = 0):
    torch.manual_seed(seed)
    x, y = BurgersCollocation(n_x=6, n_t=4, n_initial=5, n_boundary=3).collocation()  # N = 35
    return MLP(2, 1, width, depth).to(F64), x, y, BurgersPINN()


def regression(net: nn.Module, x: torch.Tensor, seed: int = 1):
    torch.manual_seed(seed)
    with torch.no_grad():
        y = torch.randn_like(net(x))
    return net, x, y, MeanSquaredError()


def two_layer():
    torch.manual_seed(0)
    return regression(TwoLayerNet(4, 9, 2).to(F64), torch.randn(6, 4, dtype=F64))


def small_cnn():
    net, x, _ = cnn()
    return regression(net, x)


def step(problem, opt: IEQ, rows: bool = True, closed: bool = False) -> torch.Tensor:
    net, x, y, obj = problem
    s = obj.residual_scale(y)

    def closure():
        opt.zero_grad()
        return obj.residual(obj.predict(net, x), y, s)

    return opt.step(closure, gram_fn=(lambda: net.jacobian_gram(x)) if closed else None,
                    jacobian_fn=(lambda: obj.jacobian(net, x, y, s)) if rows else None)


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


#: problem, its residual-space reference (closed form where there is one, else J D Jᵀ from the residual's graph)
SPACE_CASES = {
    "pinn, N < P": (lambda: pinn(8, 2), False),  # N = 35, P = 105
    "pinn, N > P": (lambda: pinn(3, 1), False),  # P = 13
    "cnn": (small_cnn, False),
    "two-layer (closed form)": (two_layer, True),
}


@pytest.mark.parametrize("lr", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_parameter_space_step_equals_residual_space_step(case, lr):
    """Catches a parameter-space step that is not the residual-space one (a wrong push-through, a missing D^½, qⁿ⁺¹ or
    Jᵀqⁿ⁺¹ off) and dense rows of J (torch.func, the PINN's forward-propagated derivatives) that are not the Jacobian of
    the residual: weights and ‖qⁿ⁺¹‖ agree to 1e-10 in float64 with the reference, over three decades of Δt."""
    make, closed = SPACE_CASES[case]
    problem = make()
    ref, par = problem, (copy.deepcopy(problem[0]), *problem[1:])
    opt_ref = IEQ(ref[0].parameters(), lr=lr, solver="cholesky")
    opt_par = IEQ(par[0].parameters(), lr=lr, solver="parameter")
    step(ref, opt_ref, rows=False, closed=closed)
    step(par, opt_par, rows=True)
    scale = max(1.0, float(flat(ref[0]).abs().max()))
    assert float((flat(ref[0]) - flat(par[0])).abs().max()) <= 1e-10 * scale
    assert float(opt_par.stats["energy/modified"]) == pytest.approx(float(opt_ref.stats["energy/modified"]), rel=1e-10)
    assert float(opt_par.stats["optim/solver"]) == 2.0 and float(opt_ref.stats["optim/solver"]) == 0.0


@pytest.mark.parametrize("activation", ["tanh", "sin", "sigmoid", "softplus"])
@pytest.mark.parametrize("method", BurgersRows.methods)
def test_pinn_rows_are_the_residuals_jacobian(activation, method):
    """Catches a wrong derivative in the PINN's forward-propagated rows (an activation's second or third derivative, a
    cotangent of u_x or u_xx, a row's scale): every row equals the residual graph's to 1e-12 in float64."""
    net, x, y, obj = pinn(6, 3)
    net = MLP(2, 1, 6, 3, activation=activation).to(F64)
    s = obj.residual_scale(y)
    q = obj.residual(obj.predict(net, x), y, s)
    index = torch.arange(len(x))
    expected = GraphRows(q, list(net.parameters())).block(index)
    rows = BurgersRows(net, x, y, s, obj.nu, method=method).block(index)
    assert float((rows - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


@pytest.mark.parametrize("batch, max_dense, expected", [
    (20, 4096, 0.0),  # N = 20 < P = 21: residual space
    (22, 4096, 2.0),  # N = 22 > P: parameter space
    (40, 21, 2.0),  # N above max_dense, P = 21 not
    (40, 20, 1.0),  # both above: CG
])
def test_auto_chooses_the_cheaper_space(batch, max_dense, expected):
    """Catches ``solver="auto"`` choosing by anything but the two spaces' multiply-adds, on both sides of N = P, and
    forming a system above ``max_dense``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)
    problem = regression(net, torch.randn(batch, 3, dtype=F64))
    opt = IEQ(problem[0].parameters(), lr=0.5, max_dense=max_dense)
    step(problem, opt)
    assert float(opt.stats["optim/solver"]) == expected


class CountingRows:
    """Dense rows of J that note the largest block asked for (in bytes)."""

    def __init__(self, rows) -> None:
        self.inner, self.params, self.rows, self.largest = rows, rows.params, rows.rows, 0

    def block(self, index: torch.Tensor) -> torch.Tensor:
        out = self.inner.block(index)
        self.largest = max(self.largest, out.numel() * out.element_size())
        return out


@pytest.mark.parametrize("solver", ["cholesky", "parameter"])
def test_jacobian_memory_bound_takes_blocks(solver):
    """Catches a dense path that reads more of J at once than ``max_jacobian_bytes`` allows, or whose blocked form is
    not the held one's step: with a bound of three rows, no block is larger and the step agrees to 1e-12."""
    problem = pinn(8, 2)
    n_params = sum(p.numel() for p in problem[0].parameters())
    bound = 3 * n_params * 8
    results = []
    for max_bytes in (2**30, bound):
        net, x, y, obj = copy.deepcopy(problem)
        opt = IEQ(net.parameters(), lr=0.5, solver=solver, max_jacobian_bytes=max_bytes)
        s = obj.residual_scale(y)
        counting = CountingRows(obj.jacobian(net, x, y, s))

        def closure():
            opt.zero_grad()
            return obj.residual(obj.predict(net, x), y, s)

        opt.step(closure, jacobian_fn=lambda: counting)
        results.append((flat(net), counting.largest))
    assert results[0][1] == len(problem[1]) * n_params * 8  # held whole when it fits
    assert 0 < results[1][1] <= bound
    assert float((results[0][0] - results[1][0]).abs().max()) <= 1e-12


@pytest.mark.parametrize(
    "solver, rows", [("parameter", True), ("parameter", False), ("cholesky", False), ("cg", False)]
)
def test_row_subset_is_the_exact_step_of_its_rows(solver, rows):
    """Catches a subset step that is not IEQ's exact step on the rows drawn (the step count seeds the draw), from the
    objective's rows or the residual's graph, on every path."""
    net, x, y, obj = problem = two_layer()
    ref = copy.deepcopy(net)
    opt = IEQ(net.parameters(), lr=0.8, solver=solver, row_fraction=0.5, cg_tol=1e-14, cg_max_iter=100)
    step(problem, opt, rows=rows)
    index = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:6].sort().values
    samples = torch.div(index, 2, rounding_mode="floor")

    def residual(*ps):
        out = torch.func.functional_call(ref, dict(zip([n for n, _ in ref.named_parameters()], ps)), (x,))
        return (out - y).reshape(-1)[index]

    params = tuple(p.detach() for p in ref.parameters())
    q = residual(*params)
    jac = torch.cat([j.reshape(6, -1) for j in torch.func.jacrev(residual, argnums=(0, 1))(*params)], dim=1)
    q_new = torch.linalg.solve(torch.eye(6, dtype=F64) + 0.8 * jac @ jac.T, q)
    expected = torch.cat([p.reshape(-1) for p in params]) - 0.8 * jac.T @ q_new
    assert len(samples.unique()) >= 2
    assert float((flat(net) - expected).abs().max()) <= 1e-12
    assert float(opt.stats["energy/true"]) == pytest.approx(float(q.square().mean()), rel=1e-12)


# -- the adaptive Δt ---------------------------------------------------------------------------------------------------
def overshoot(seed: int = 0):
    """A tanh net fitted to sin 3x at Δt = 1000: the fixed step overshoots (measured: the loss 0.48 → 230 at step 2)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 1)).to(F64)
    x = torch.linspace(-2, 2, 40, dtype=F64).unsqueeze(1)
    return net, x, torch.sin(3 * x), MeanSquaredError()


@pytest.mark.parametrize("solver", ["cholesky", "parameter", "cg"])
def test_adaptive_step_accepts_only_descent_and_each_is_an_exact_step(solver):
    """Catches an adaptive rule that keeps a step raising the true loss, that does not retry with a smaller Δt (weights
    restored), or whose accepted step is not IEQ's exact step at its Δt (so the energy law
    ‖qⁿ⁺¹‖² + Δt‖Jᵀqⁿ⁺¹‖² = ⟨qⁿ, qⁿ⁺¹⟩ would not hold): where the fixed Δt raises the loss, the adaptive run lowers
    it at every step, counts rejections, and every step equals the hand-built exact step at the Δt it logs."""
    fixed = overshoot()
    opt_fixed = IEQ(fixed[0].parameters(), lr=1e3, solver="cholesky")
    losses = [float(step(fixed, opt_fixed, rows=False).square().mean()) for _ in range(4)]
    assert max(losses[1:]) > losses[0]  # the fixed step overshoots

    net, x, y, obj = problem = overshoot()
    opt = IEQ(net.parameters(), lr=1e3, solver=solver, adaptive_lr=True, cg_tol=1e-13, cg_max_iter=500)
    previous = math.inf
    for _ in range(8):
        before = copy.deepcopy(net)
        q = step(problem, opt, rows=False)
        dt = float(opt.stats["optim/effective_lr"])
        expected, q_new = reference_step(before, x, y, [dt] * len(list(net.parameters())))
        assert max(float((a - b.detach()).abs().max()) for a, b in zip(expected, net.parameters())) <= 1e-8
        _, jac = residual_and_jacobian(before, x, y)
        law = q_new.square().sum() + dt * (jac.T @ q_new).square().sum()
        assert float(law) == pytest.approx(float(q @ q_new), rel=1e-9)
        loss = float(q.square().mean())
        assert loss < previous
        previous = loss
        with torch.no_grad():
            assert float((net(x) - y).square().mean()) < loss  # accepted: the true loss fell
    assert float(opt.stats["optim/rejected_steps"]) >= 1


def test_adaptive_dt_travels_in_the_state_dict():
    """Catches a Δt factor kept outside ``state_dict``: a fresh optimizer loaded from it takes the same next step."""
    a = overshoot()
    opt_a = IEQ(a[0].parameters(), lr=1e3, adaptive_lr=True)
    for _ in range(3):
        step(a, opt_a, rows=False)
    b = (copy.deepcopy(a[0]), *a[1:])
    opt_b = IEQ(b[0].parameters(), lr=1e3, adaptive_lr=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert float(opt_b.global_state["dt_scale"]) == float(opt_a.global_state["dt_scale"]) < 1.0
    step(a, opt_a, rows=False)
    step(b, opt_b, rows=False)
    assert float((flat(a[0]) - flat(b[0])).abs().max()) == 0.0


# -- float64 through the CLI -------------------------------------------------------------------------------------------
def test_float64_pinn_run_with_parameter_space_ieq(tmp_path, cli_run):
    """Catches a PINN path that does not run in float64 (data, net or the dense rows left in float32) or an exact
    parameter-space IEQ that does not train it: 5 adaptive steps at 64-true lower the loss at every step, by 2× in
    all, and log the parameter space."""
    from gf_lightning.study.events import read_scalars, values

    cli = cli_run(CONFIGS / "paper" / "burgers.yaml", "--trainer.precision=64-true",
                  "--model.optimizer=IEQ", "--model.optimizer.lr=10.0", "--model.optimizer.solver=parameter",
                  "--model.optimizer.max_dense=8192", "--model.optimizer.adaptive_lr=true",
                  "--model.net.init_args.width=8", "--model.net.init_args.depth=2",
                  *[f"--data.init_args.{k}={v}" for k, v in
                    dict(n_x=10, n_t=6, n_initial=20, n_boundary=6, eval_nx=32, eval_nt=12).items()],
                  "--trainer.check_val_every_n_epoch=5", "--trainer.log_every_n_steps=1",
                  "--trainer.enable_checkpointing=false", epochs=5)
    assert all(p.dtype == F64 for p in cli.model.parameters())
    scalars = read_scalars(run_dir(tmp_path))
    loss = values(scalars, "train/loss")
    assert len(loss) == 5 and all(b < a for a, b in zip(loss, loss[1:])) and loss[-1] < 0.5 * loss[0], loss
    assert set(values(scalars, "optim/solver")) == {2.0}
    assert math.isfinite(values(scalars, "val/rel_l2")[-1])
