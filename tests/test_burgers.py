"""Example 5 of Ma, Mao & Shen (2024): the Burgers equation's exact solution, its collocation data, the PINN objective
(loss, IEQ residual, DDP shares), the MLP, validation's relative L² error, and every optimizer of the project on it."""

from __future__ import annotations

import functools
import logging
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from support import CONFIGS, QUIET, cli_args, on_ranks, run_dir

from gf_lightning.cli import cli_main
from gf_lightning.components import MLP, BurgersPINN
from gf_lightning.data import BurgersCollocation
from gf_lightning.errors import GFConfigError
from gf_lightning.module import GradientFlowModule
from gf_lightning.problems.burgers import BOUNDARY, INITIAL, INTERIOR, MIN_NU, NU, SOLUTION, burgers_exact

BURGERS = str(CONFIGS / "paper" / "burgers.yaml")
#: a few hundred collocation points and a 32 × 12 held-out grid: a step in milliseconds
TINY = dict(n_x=12, n_t=6, n_initial=20, n_boundary=6, eval_nx=32, eval_nt=12)
TINY_ARGS = [f"--data.init_args.{k}={v}" for k, v in TINY.items()]


def _reference(x: float, t: float, nu: float = NU, n: int = 600_001) -> float:
    """The Cole–Hopf ratio by a plain trapezoidal rule over η ∈ [−L, L], L = max(3, 12·√(4νt)) (every contribution, the
    far ones at η ≈ x ± 1 included), in logarithms: an independent quadrature to check the Gauss–Hermite one against."""
    eta = np.linspace(-1.0, 1.0, n) * max(3.0, 12 * math.sqrt(4 * nu * t))
    y = x - eta
    a = -(eta**2) / (4 * nu * t) - np.cos(np.pi * y) / (2 * np.pi * nu)
    e = np.exp(a - a.max())
    return float(-(e * np.sin(np.pi * y)).sum() / e.sum())


# ----------------------------------------------------------------------------------------------------------------------
# the exact solution
# ----------------------------------------------------------------------------------------------------------------------
def test_exact_solution_satisfies_the_pde_away_from_the_front():
    """Catches a wrong Cole–Hopf formula (the kernel's 4νt, the 1/(2πν) in the exponent, a sign): central differences of
    ``burgers_exact`` on a fine grid away from the front at x = 0 must satisfy ``u_t + u u_x = ν u_xx`` to the scheme's
    O(h²) error, while each term is O(1)."""
    h, k = 1e-3, 1e-4
    xs = torch.cat([torch.linspace(-0.9, -0.3, 25), torch.linspace(0.3, 0.9, 25)]).double()
    ts = torch.linspace(0.05, 0.95, 19).double()
    x, t = (g.reshape(-1) for g in torch.meshgrid(xs, ts, indexing="ij"))
    u = burgers_exact(x, t)
    u_x = (burgers_exact(x + h, t) - burgers_exact(x - h, t)) / (2 * h)
    u_xx = (burgers_exact(x + h, t) - 2 * u + burgers_exact(x - h, t)) / h**2
    u_t = (burgers_exact(x, t + k) - burgers_exact(x, t - k)) / (2 * k)
    residual = u_t + u * u_x - NU * u_xx
    assert u.dtype == torch.float64
    assert (u * u_x).abs().max() > 0.5 and (NU * u_xx).abs().max() > 1e-3  # the terms are there, not a trivial zero
    assert residual.abs().max() < 2e-5, float(residual.abs().max())


def test_exact_solution_meets_the_initial_and_boundary_conditions_and_converges():
    """Catches a wrong initial or boundary value, a quadrature that has not converged (too few nodes, no log-sum-exp:
    the integrand spans e^±50) and a substitution η = √(4νt)·s off by a factor: u(x, 0) = −sin(πx), u(x, 1e−8) →
    −sin(πx), u(±1, t) = 0; 100 and 300 nodes agree; an independent trapezoidal quadrature agrees to rounding, at the
    front too and at the smallest ν allowed; a smaller ν, where the rule would be wrong, is refused."""
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    assert torch.equal(burgers_exact(x, torch.zeros_like(x)), -torch.sin(math.pi * x))
    assert torch.allclose(burgers_exact(x, torch.full_like(x, 1e-8)), -torch.sin(math.pi * x), atol=1e-6)
    t = torch.linspace(0.0, 1.0, 51, dtype=torch.float64)
    for side in (-1.0, 1.0):
        assert burgers_exact(torch.full_like(t, side), t).abs().max() < 1e-12
    xg, tg = (g.reshape(-1) for g in torch.meshgrid(x, t[1:], indexing="ij"))
    u100, u300 = burgers_exact(xg, tg, n_nodes=100), burgers_exact(xg, tg, n_nodes=300)
    assert torch.isfinite(u300).all()
    assert (u100 - u300).abs().max() < 1e-12
    for xv, tv in [(0.003, 1.0), (0.01, 0.3), (-0.5, 0.5), (0.9, 0.05), (1e-4, 0.6)]:
        got = float(burgers_exact(torch.tensor(xv, dtype=torch.float64), torch.tensor(tv, dtype=torch.float64)))
        assert got == pytest.approx(_reference(xv, tv), abs=1e-12), (xv, tv)
    # broadcasting and dtypes: float32 in, float32 out; a steep front: u(0⁻, 1) ≈ +0.28… ≥ … u(0⁺, 1) (odd in x)
    out = burgers_exact(torch.tensor([[-0.01], [0.01]], dtype=torch.float32), torch.tensor([0.5, 1.0]))
    assert out.shape == (2, 2) and out.dtype == torch.float32 and torch.allclose(out[0], -out[1])
    with pytest.raises(GFConfigError, match="t must be >= 0"):
        burgers_exact(torch.tensor(0.0), torch.tensor(-0.1))
    with pytest.raises(GFConfigError, match="n_nodes must be an integer in 2 … 300"):
        burgers_exact(x, t[:1], n_nodes=1000)
    # down to ν = 0.002/π the rule is accurate; below it (where it is not) it refuses
    nu = MIN_NU
    for xv, tv in [(0.001, 0.8), (0.3, 0.5)]:
        got = float(burgers_exact(torch.tensor(xv, dtype=torch.float64), torch.tensor(tv, dtype=torch.float64), nu=nu))
        assert got == pytest.approx(_reference(xv, tv, nu=nu), abs=1e-12), (xv, tv)
    with pytest.raises(GFConfigError, match="nu must be a finite number >= 0.0006366"):
        burgers_exact(x, t, nu=0.001 / math.pi)


# ----------------------------------------------------------------------------------------------------------------------
# the data
# ----------------------------------------------------------------------------------------------------------------------
def test_collocation_points_are_the_papers():
    """Catches a wrong count, kind, target or domain of the collocation rows, or a held-out grid whose targets are not
    the exact solution: 200 × 60 interior points strictly inside (−1, 1) × (0, 1], 200 initial with target −sin(πx), 2 ×
    60 boundary with target 0, a 256 × 100 solution grid with target u*."""
    t = BurgersCollocation().build()
    x, y = t["x_train"], t["y_train"]
    assert x.shape == (12000 + 200 + 120, 2) and y.shape == (12320, 2) and t["x_test"].shape == (25600, 2)
    assert all(v.dtype == torch.float32 for v in t.values())
    kind = y[:, 1]
    assert [int((kind == c).sum()) for c in (INTERIOR, INITIAL, BOUNDARY, SOLUTION)] == [12000, 200, 120, 0]
    inner = x[kind == INTERIOR]
    assert inner[:, 0].abs().max() < 1 and inner[:, 1].min() > 0 and inner[:, 1].max() == 1
    assert len(torch.unique(inner[:, 0])) == 200 and len(torch.unique(inner[:, 1])) == 60
    assert (y[kind == INTERIOR, 0] == 0).all() and (y[kind == BOUNDARY, 0] == 0).all()
    init = x[kind == INITIAL]
    assert (init[:, 1] == 0).all() and torch.allclose(
        y[kind == INITIAL, 0], -torch.sin(math.pi * init[:, 0]), atol=1e-6
    )
    assert (x[kind == BOUNDARY, 0].abs() == 1).all()
    assert (t["y_test"][:, 1] == SOLUTION).all()
    exact = burgers_exact(t["x_test"][:, 0].double(), t["x_test"][:, 1].double()).float()
    assert torch.allclose(t["y_test"][:, 0], exact, atol=1e-6)
    rand = BurgersCollocation(sampling="random", seed=3, **TINY).build()
    assert torch.equal(rand["x_train"], BurgersCollocation(sampling="random", seed=3, **TINY).build()["x_train"])
    for bad, match in (
        ({"n_x": 0}, "data.n_x must be an integer >= 1"),
        ({"sampling": "lhs"}, "data.sampling must be one"),
        ({"nu": -1.0}, "data.nu must be a finite number >= 0.0006366"),
    ):
        with pytest.raises(GFConfigError, match=match):
            BurgersCollocation(**bad)


# ----------------------------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------------------------
class _Known(torch.nn.Module):
    """``u(x, t) = sin(2x) t² + x³``, whose PDE residual is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, z):
        x, t = z[:, :1], z[:, 1:]
        return self.c * (torch.sin(2 * x) * t**2 + x**3)


def test_pinn_objective_residual_loss_and_ieq_form():
    """Catches a wrong PDE operator (a sign, ν, u_xx from the wrong input column), a loss that is not the sum of the
    per-kind means (e.g. a plain mean over rows, where 12 000 interior points drown the 320 others), and IEQ's residual
    whose ‖q‖²/N is not the loss; and a prediction without a graph to the weights."""
    nu = 0.05
    obj = BurgersPINN(nu=nu)
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 2 - 1
    pred = obj.predict(_Known(), z)
    assert pred.requires_grad  # (training: the loss differentiates through the PDE residual)
    pred = pred.detach()
    x, t = z[:, 0], z[:, 1]
    u = torch.sin(2 * x) * t**2 + x**3
    u_t, u_x, u_xx = (
        2 * torch.sin(2 * x) * t,
        2 * torch.cos(2 * x) * t**2 + 3 * x**2,
        -4 * torch.sin(2 * x) * t**2 + 6 * x,
    )
    assert torch.allclose(pred[:, 0], u) and torch.allclose(pred[:, 1], u_t + u * u_x - nu * u_xx)
    kinds = torch.tensor([INTERIOR] * 25 + [INITIAL] * 10 + [BOUNDARY] * 5, dtype=torch.float64)
    target = torch.randn(40, generator=gen, dtype=torch.float64)
    y = torch.stack([target, kinds], 1)
    err = torch.where(kinds == INTERIOR, pred[:, 1], pred[:, 0]) - target
    want = sum(err[kinds == c].square().mean() for c in (INTERIOR, INITIAL, BOUNDARY))
    assert obj.loss(pred, y) == pytest.approx(float(want), rel=1e-12)
    q = obj.residual(pred, y, obj.residual_scale(y))
    assert q.shape == (40,) and float(q.square().sum() / q.numel()) == pytest.approx(float(want), rel=1e-12)
    assert obj.shard_loss(pred, y, 40) == obj.loss(pred, y)
    ratio = obj.ratio(pred, y)
    assert float(ratio.numerator / ratio.denominator) == pytest.approx(float(want), rel=1e-12)
    u_sol, u_ref = obj.solution(pred, torch.stack([target, torch.full_like(target, SOLUTION)], 1))
    assert torch.equal(u_sol, pred[:, 0]) and torch.equal(u_ref, target)
    # evaluation runs under inference mode; the PDE residual is still computed, and nothing keeps a graph
    net = _Known()
    with torch.inference_mode():
        out = obj.predict(net, z.clone())
    assert torch.allclose(out, pred) and not out.requires_grad
    with pytest.raises(GFConfigError, match=r"BurgersPINN needs y of shape \(N, 2\)"):
        obj.loss(pred, target[:, None])
    with pytest.raises(GFConfigError, match="model.objective.init_args.nu must be a finite number > 0"):
        BurgersPINN(nu=0.0)


def _shards(rank: int, world: int) -> tuple[float, float, float]:
    """Rank ``rank``'s share of an uneven split of 23 rows: its shard loss, and its part of ‖q‖² and of N."""
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(23, 2, generator=gen, dtype=torch.float64)
    kinds = torch.tensor([INTERIOR] * 12 + [INITIAL] * 6 + [BOUNDARY] * 5, dtype=torch.float64)
    y = torch.stack([torch.randn(23, generator=gen, dtype=torch.float64), kinds], 1)
    rows = slice(0, 9) if rank == 0 else slice(9, 23)  # rank 0 has no boundary row, rank 1 most of them
    obj = BurgersPINN()
    q = obj.residual(pred[rows], y[rows])
    return float(obj.shard_loss(pred[rows], y[rows], 23)), float(q.square().sum()), float(len(q))


def test_pinn_shard_loss_and_residual_under_two_ranks(tmp_path):
    """Catches a DDP share that normalises by the rank's own kind counts: over two gloo ranks with uneven, kind-skewed
    shares, the ranks' mean shard loss and ‖q‖²/N of the gathered residual must both be the one-process loss."""
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(23, 2, generator=gen, dtype=torch.float64)
    kinds = torch.tensor([INTERIOR] * 12 + [INITIAL] * 6 + [BOUNDARY] * 5, dtype=torch.float64)
    y = torch.stack([torch.randn(23, generator=gen, dtype=torch.float64), kinds], 1)
    whole = float(BurgersPINN().loss(pred, y))
    (l0, q0, n0), (l1, q1, n1) = on_ranks(_shards, tmp_path)
    assert (l0 + l1) / 2 == pytest.approx(whole, rel=1e-12)
    assert (q0 + q1) / (n0 + n1) == pytest.approx(whole, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------------------------
def test_mlp_is_the_papers_network():
    """Catches a wrong depth, width, activation or initialisation of the MLP: 5 hidden layers of 32 tanh units (2 → 32 →
    … → 1, 4 353 weights), Glorot-normal weights and zero biases by default, one-line errors for bad settings."""
    torch.manual_seed(0)
    net = MLP()
    assert [tuple(layer.weight.shape) for layer in net.layers] == [(32, 2)] + [(32, 32)] * 4 + [(1, 32)]
    assert sum(p.numel() for p in net.parameters()) == 4353
    assert all((layer.bias == 0).all() for layer in net.layers)
    # Glorot: √(2/(fan_in+fan_out))
    assert net.layers[1].weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    x = torch.randn(5, 2)
    h = x
    for layer in net.layers[:-1]:
        h = torch.tanh(layer(h))
    assert torch.allclose(net(x), net.layers[-1](h))
    assert MLP(activation="relu", init="torch", depth=2, width=8, d=3, k=4)(torch.randn(6, 3)).shape == (6, 4)
    for bad, match in (({"depth": 0}, "model.net.depth must be a positive integer"),
                       ({"activation": "elu"}, "model.net.activation must be one of"),
                       ({"init": "he"}, "model.net.init must be one of")):
        with pytest.raises(GFConfigError, match=match):
            MLP(**bad)


# ----------------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------------
def _quiet_trainer(**kw) -> L.Trainer:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1, **kw)


def test_short_training_lowers_the_relative_l2_error():
    """Catches a PINN that does not learn (a loss without the PDE or the initial condition, a detached residual) and a
    validation whose val/rel_l2 is not ‖u − u*‖/‖u*‖ on the held-out grid: 300 full-batch Adam steps on 1 340
    collocation points must lower the initial network's relative L² error by at least 30 %, and the reported value must
    equal the one computed here from the network and burgers_exact."""
    L.seed_everything(0, verbose=False)
    model = GradientFlowModule(
        net=MLP(), optimizer=functools.partial(torch.optim.Adam, lr=1e-2), objective=BurgersPINN()
    )
    dm = BurgersCollocation(n_x=40, n_t=20, n_initial=50, n_boundary=20, eval_nx=64, eval_nt=25)
    trainer = _quiet_trainer(max_epochs=300, check_val_every_n_epoch=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = trainer.validate(model, dm, verbose=False)[0]
        trainer.fit(model, dm)
        after = trainer.validate(model, dm, verbose=False)[0]
    x, y = dm.tensors["x_test"], dm.tensors["y_test"]
    with torch.no_grad():
        u = model.net(x)[:, 0]
    rel = float((u - y[:, 0]).norm() / y[:, 0].norm())
    assert after["val/rel_l2"] == pytest.approx(rel, rel=1e-5)
    assert "val/rel_err" not in after  # one name per meaning: the squared error is not logged beside it
    assert after["val/loss"] == pytest.approx(float((u - y[:, 0]).square().mean()), rel=1e-5)
    assert after["val/rel_l2"] < 0.7 * before["val/rel_l2"], (before, after)  # measured: 0.84 → 0.46


def test_config_has_the_papers_settings(cli_run):
    """Catches a config that drifts from the paper's Example 5 (network, collocation points, ν, objective) or from its
    stated default (Adam at 0.001), as the CLI parses and builds it."""
    cli = cli_run(BURGERS, run=False)
    net, obj, dm = cli.model.net, cli.model.objective, cli.datamodule
    assert isinstance(net, MLP) and (net.d, net.k, net.width, net.depth, net.activation) == (2, 1, 32, 5, "tanh")
    assert isinstance(obj, BurgersPINN) and obj.nu == pytest.approx(0.01 / math.pi, rel=1e-15)
    assert isinstance(dm, BurgersCollocation) and (dm.n_x, dm.n_t, dm.nu, dm.batch_size) == (200, 60, obj.nu, None)
    assert (cli.config.model.optimizer.class_path, cli.config.model.optimizer.init_args.lr) == (
        "torch.optim.Adam",
        0.001,
    )
    assert cli.model.particle_time is False


#: every optimizer of the project, as ``--model.optimizer`` names it, with the paper's C = 10 000, λ = 4 where it takes
#: them
EVERY_OPTIMIZER = [
    ("SGD", []), ("Adam", []), ("Adagrad", []), ("RMSprop", []),
    ("SAV", ["--model.optimizer.C=10000", "--model.optimizer.lam=4"]), ("ExpSAV", []), ("IEQAdaptive", []),
    ("IEQ", ["--model.optimizer.lr=0.001"]),  # its generic path: dense J D Jᵀ at these 104 rows…
    ("IEQ", ["--model.optimizer.lr=0.001", "--model.optimizer.solver=cg"]),  # …and CG with Jacobian-vector products
    *[("AdaptiveSAV", [f"--model.optimizer.variant={v}", "--model.optimizer.C=10000", "--model.optimizer.lam=4"])
      for v in ("vanilla", "restart", "relax")],
    ("AEGD", []), ("AEGDM", []),
]


def test_every_optimizer_runs_on_the_config(tmp_path):
    """Catches an optimizer of the project that cannot train the PINN through ``configs/paper/burgers.yaml`` and
    ``--model.optimizer`` (IEQ on its generic path, torch's Adagrad and RMSprop among them), a non-finite first steps,
    and a run that does not write val/rel_l2 to TensorBoard, or writes its square too (``val/rel_err``: one name per
    meaning)."""
    from gf_lightning.study.events import read_scalars, values

    for i, (name, extra) in enumerate(EVERY_OPTIMIZER):
        root = tmp_path / f"{i}-{name}"
        cli_main(
            [
                "fit",
                "--config",
                BURGERS,
                f"--model.optimizer={name}",
                *extra,
                *TINY_ARGS,
                *QUIET,
                "--trainer.max_epochs=2",
                "--trainer.check_val_every_n_epoch=1",
                "--trainer.enable_checkpointing=false",
                "--trainer.log_every_n_steps=1",
                f"--trainer.default_root_dir={root}",
            ]
        )
        scalars = read_scalars(run_dir(root))
        loss, rel_l2 = values(scalars, "train/loss"), values(scalars, "val/rel_l2")
        assert len(loss) == 2 and all(math.isfinite(v) for v in loss), name
        assert len(rel_l2) == 2 and all(0 < v < 10 for v in rel_l2) and "val/rel_err" not in scalars, name
        if "--model.optimizer.solver=cg" in extra:
            assert values(scalars, "optim/cg_iters") and min(values(scalars, "optim/cg_iters")) >= 1


def test_bad_settings_stop_with_one_line(tmp_path, capsys):
    """Catches a Burgers run that trains on meaningless rows (the default mean squared error, or a PINN of another ν,
    on the (target, kind) targets) and a bad Adagrad or RMSprop setting that reaches torch: each stops before any
    step with one line that names the setting."""
    cases = [
        (
            ["--model.objective=gf_lightning.components.MeanSquaredError"],
            "model.objective must be gf_lightning.components.BurgersPINN",
        ),
        (["--model.objective.init_args.nu=0.01"], "differs from data.nu"),
        (
            ["--model.optimizer=Adagrad", "--model.optimizer.lr=-1"],
            "model.optimizer.init_args.lr must be a finite number > 0 (Adagrad)",
        ),
        (
            ["--model.optimizer=Adagrad", "--model.optimizer.initial_accumulator_value=-1"],
            "model.optimizer.init_args.initial_accumulator_value must be a finite number >= 0 (Adagrad)",
        ),
        (
            ["--model.optimizer=RMSprop", "--model.optimizer.alpha=1.5"],
            "model.optimizer.init_args.alpha must be a finite number in [0, 1) (RMSprop)",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(cli_args(BURGERS, tmp_path, *extra, *TINY_ARGS, epochs=1))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and message in err[0], (extra, err)


def test_the_sweeps_initial_state_of_a_pinn_point(tmp_path):
    """Catches the step-size study's start-of-run numbers taken as for a per-sample loss on a PINN: the training loss in
    chunks or on a subset of the rows (a sum of per-kind means is another function there), the Hessian on the first
    ``samples`` rows (the interior points only), and the held-out error of ``u`` against the ``(target, kind)`` rows
    instead of the exact solution. The initial state must hold the loss over all collocation rows at once, the relative
    L² error validation would log, and a λ_max taken on every row."""
    from gf_lightning.study.sweep import stability
    from gf_lightning.study.sweep.grid import Plan

    grid = [f"data.init_args.{k}={v}" for k, v in TINY.items()]
    plan = Plan.build(BURGERS, ["adam"], "0.01", grid, out=str(tmp_path))
    (point,) = plan.points()
    state = stability.initial_state(list(point.args), [], samples=8, iters=5)
    cli = stability.build(list(point.args), "test")
    cli.datamodule.setup("fit")
    t, obj, net = cli.datamodule.tensors, cli.model.objective, cli.model.net
    x, y = t["x_train"], t["y_train"]
    assert state.samples == len(x) == 12 * 6 + 20 + 2 * 6 and math.isfinite(state.lambda_max)
    assert state.train_loss == pytest.approx(float(obj.loss(obj.predict(net, x), y)), rel=1e-5)
    with torch.no_grad():
        u, exact = net(t["x_test"])[:, 0], t["y_test"][:, 0]
    rel = float((u - exact).norm() / exact.norm())
    assert state.val["val/rel_l2"] == pytest.approx(rel, rel=1e-5)
    assert set(state.val) == {"val/loss", "val/rel_l2"}
