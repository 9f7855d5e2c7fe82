"""IEQ with the full Jacobian: the closed-form Gram, exactness of every path against a hand-built dense step over the
whole Δt range, skipped and truncated solves, frozen parameters, the two-process solves, per-group step sizes.
(Its bad settings and closures are in the one table of ``test_bad_inputs.py``; its torch conventions in
``test_conventions.py``.)"""

from __future__ import annotations

import pytest
import torch
from support import on_ranks
from torch import nn
from torch.func import functional_call, jacrev

from gf_lightning.components.nets import TwoLayerNet
from gf_lightning.optim import jacobian as jacobian_module
from gf_lightning.optim.ieq import IEQ

F64 = torch.float64


# -- helpers -----------------------------------------------------------------------------------------------------------
def residual_and_jacobian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q = f(x) − y`` (flat) and the materialised ``J = ∂q/∂w`` (``N × n``, parameters in ``net.parameters()``
    order)."""
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())

    def residual(*ps: torch.Tensor) -> torch.Tensor:
        return (functional_call(net, dict(zip(names, ps)), (x,)) - y).reshape(-1)

    q = residual(*params)
    jac = jacrev(residual, argnums=tuple(range(len(params))))(*params)
    return q, torch.cat([j.reshape(q.numel(), -1) for j in jac], dim=1)


def reference_step(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: list[float]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The step by hand: ``qⁿ⁺¹ = (I + J D Jᵀ)⁻¹ qⁿ`` by ``torch.linalg.solve``, ``w ← w − D Jᵀ qⁿ⁺¹``; ``lrs`` per
    parameter."""
    q, jac = residual_and_jacobian(net, x, y)
    d = torch.cat([torch.full((p.numel(),), lr, dtype=q.dtype) for p, lr in zip(net.parameters(), lrs)])
    system = torch.eye(q.numel(), dtype=q.dtype) + (jac * d) @ jac.T
    q_new = torch.linalg.solve(system, q)
    move = d * (jac.T @ q_new)
    new, col = [], 0
    for p in net.parameters():
        new.append(p.detach() - move[col : col + p.numel()].view_as(p))
        col += p.numel()
    return new, q_new


def run_step(net, x, y, opt: IEQ, closed: bool = False, operator: bool = False) -> torch.Tensor:
    """One step; ``closed``: with the closed-form Gram, ``operator``: with the closed-form Jacobian operator."""
    def closure():
        opt.zero_grad()
        return net(x) - y

    return opt.step(closure, gram_fn=(lambda: net.jacobian_gram(x)) if closed else None,
                    jacobian_fn=(lambda: net.jacobian_operator(x)) if operator else None)


def two_layer(B=6, d=4, m=9, k=1, seed=0, **kw):
    torch.manual_seed(seed)
    net = TwoLayerNet(d, m, k, **kw).to(F64)
    x = torch.randn(B, d, dtype=F64)
    y = torch.randn(B, k, dtype=F64) if k == 1 else nn.functional.one_hot(torch.randint(0, k, (B,)), k).to(F64)
    return net, x, y


def mlp3(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)).to(F64)
    return net, torch.randn(7, 5, dtype=F64), torch.randn(7, 3, dtype=F64)


def cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(),
        nn.Linear(16, 4),
    ).to(F64)
    return net, torch.randn(5, 1, 8, 8, dtype=F64), torch.randn(5, 4, dtype=F64)


def max_diff(a, b) -> float:
    return max(float((u.detach() - v.detach()).abs().max()) for u, v in zip(a, b))


#: closed form + Cholesky, generic + Cholesky (J held, or not), generic CG, CG with the closed-form operator and its
#: structured preconditioner, generic CG with a Nyström preconditioner; every CG at a tolerance of 1e-12
PATHS = ["closed", "cholesky", "cholesky-jvp", "cg", "cg-closed", "cg-nystrom"]
#: the paths that need the two-layer net's closed form
CLOSED_PATHS = ("closed", "cg-closed")


def make_opt(params, path: str, lr: float = 0.3) -> IEQ:
    """An IEQ that takes ``path`` (``cholesky-jvp`` also needs ``MAX_JACOBIAN_BYTES`` patched to 0)."""
    cg = path.startswith("cg")
    return IEQ(params, lr=lr, solver="cg" if cg else "cholesky", cg_max_iter=500, cg_tol=1e-12,
               preconditioner="nystrom" if path == "cg-nystrom" else "auto", precond_rank=3)


def step_on(net, x, y, opt: IEQ, path: str) -> torch.Tensor:
    return run_step(net, x, y, opt, closed=path == "closed", operator=path == "cg-closed")


@pytest.fixture
def path_opt(monkeypatch):
    """``make(params, path, lr)``: an IEQ that takes ``path``; ``cholesky-jvp`` forces the dense path that never holds
    J."""

    def make(params, path, lr=0.3):
        if path == "cholesky-jvp":
            monkeypatch.setattr(jacobian_module, "MAX_JACOBIAN_BYTES", 0)
        return make_opt(params, path, lr)

    return make


# -- the closed-form Gram ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, kw",
    [
        ((6, 4, 9, 1), {}),
        ((5, 7, 8, 10), {}),
        ((6, 4, 9, 1), {"mean_field": True, "init": "normal"}),
        ((5, 7, 8, 10), {"mean_field": True, "init": "normal"}),
        ((5, 7, 8, 10), {"init": "kaiming"}),
    ],
)
def test_closed_form_gram_equals_materialised(shape, kw):
    B, d, m, k = shape
    net, x, y = two_layer(B, d, m, k, **kw)
    _, jac = residual_and_jacobian(net, x, y)
    ref = jac @ jac.T
    gram = net.jacobian_gram(x)
    assert gram.shape == (B * k, B * k)
    assert float(torch.linalg.norm(gram - ref) / torch.linalg.norm(ref)) <= 1e-10


# -- one step equals the hand-built dense step -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("path", PATHS)
def test_step_equals_dense_reference(path, k, path_opt):
    net, x, y = two_layer(B=5, d=4, m=7, k=k)
    expected, q_new = reference_step(net, x, y, [0.3, 0.3])
    opt = path_opt(net.parameters(), path)
    q = step_on(net, x, y, opt, path)
    assert max_diff(net.parameters(), expected) <= 1e-10
    assert q.shape == y.shape and not q.requires_grad
    # the energy per entry, doubled: the mean squared residual ‖q‖²/N, the MSE loss's units
    assert float(opt.stats["energy/modified"]) == pytest.approx(float(q_new.norm()) ** 2 / q.numel(), rel=1e-10)
    assert float(opt.stats["energy/true"]) == pytest.approx(
        float(torch.nn.functional.mse_loss(q, torch.zeros_like(q))), rel=1e-12
    )
    assert ("optim/cg_iters" in opt.stats) == path.startswith("cg")
    assert float(opt.stats["optim/solver"]) == float(path.startswith("cg"))


def test_generic_equals_closed_form():
    net_a, x, y = two_layer(B=8, d=5, m=11, k=3, init="kaiming")
    net_b, _, _ = two_layer(B=8, d=5, m=11, k=3, init="kaiming")
    opt_a, opt_b = IEQ(net_a.parameters(), lr=0.7), IEQ(net_b.parameters(), lr=0.7)
    for _ in range(3):
        run_step(net_a, x, y, opt_a, closed=True)
        run_step(net_b, x, y, opt_b)
        assert max_diff(net_a.parameters(), net_b.parameters()) <= 1e-10
    assert float(opt_a.global_state["step"]) == 3.0


@pytest.mark.parametrize("make", [mlp3, cnn], ids=["mlp3", "cnn"])
@pytest.mark.parametrize("path", ["cholesky", "cholesky-jvp", "cg", "cg-nystrom"])
def test_generic_other_networks(make, path, path_opt):
    net, x, y = make()
    expected, _ = reference_step(net, x, y, [0.05] * len(list(net.parameters())))
    with torch.no_grad():
        q0 = float((net(x) - y).norm())
    opt = path_opt(net.parameters(), path, lr=0.05)
    run_step(net, x, y, opt)
    assert max_diff(net.parameters(), expected) <= 1e-10
    assert float(opt.stats["energy/modified"]) < float(opt.stats["energy/true"]) == pytest.approx(q0**2 / y.numel())
    with torch.no_grad():
        assert float((net(x) - y).norm()) < q0  # a small step is a descent step on the residual itself


# -- energy stability, and exactness over the whole Δt range -----------------------------------------------------------
def test_steps_equal_the_exact_solve_over_random_cases():
    """Random networks (the two-layer net in every init and scale, and a tanh MLP), Δt from 1e-4 to 1e4, three steps
    each on every path (closed form, dense generic, dense generic without J, generic CG, CG with the closed-form
    operator and its structured preconditioner, CG with a Nyström preconditioner; CG at a tolerance of 1e-12): every
    step equals the exact solve ``(I + Δt J Jᵀ)⁻¹ qⁿ`` by ``torch.linalg.solve`` and moves the weights by ``Δt Jᵀ
    qⁿ⁺¹``, so a wrong Gram or an early CG stop fails here even though ``‖(I + Δt G)⁻¹ q‖ ≤ ‖q‖`` would hold for any PSD
    ``G``. Breakage checked: the Gram without the ``x̃ x̃ᵀ`` factor, and CG capped at 3 iterations (both fail)."""
    gen = torch.Generator().manual_seed(1234)

    def randint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    worst, cases = 0.0, 0
    for i in range(96):
        torch.manual_seed(i)
        dt = 10.0 ** float(torch.empty(()).uniform_(-4.0, 4.0, generator=gen))
        if i % 4 == 3:
            net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(F64)
            x = torch.randn(randint(1, 10), 3, dtype=F64, generator=gen)
            y = torch.randn(x.shape[0], 2, dtype=F64, generator=gen)
        else:
            B, d, m, k = randint(1, 10), randint(1, 6), randint(1, 12), randint(1, 4)
            net = TwoLayerNet(d, m, k, init=("fan_in", "kaiming", "normal")[i % 3], mean_field=i % 2 == 0).to(F64)
            x = 3.0 * torch.randn(B, d, dtype=F64, generator=gen)
            y = torch.randn(B, k, dtype=F64, generator=gen)
        paths = PATHS if isinstance(net, TwoLayerNet) else [p for p in PATHS if p not in CLOSED_PATHS]
        path = paths[i % len(paths)]
        with pytest.MonkeyPatch.context() as mp:
            if path == "cholesky-jvp":
                mp.setattr(jacobian_module, "MAX_JACOBIAN_BYTES", 0)
            opt = make_opt(net.parameters(), path, lr=dt)
            for step in range(3):
                expected, q_new = reference_step(net, x, y, [dt] * len(list(net.parameters())))
                step_on(net, x, y, opt, path)
                before, after = ((float(opt.stats[k]) * y.numel()) ** 0.5 for k in ("energy/true", "energy/modified"))
                assert after <= before * (1.0 + 1e-13), (i, dt, path, step, before, after)
                scale = max(float(p.abs().max()) for p in expected) + 1.0
                err = max_diff(net.parameters(), expected) / scale
                worst = max(worst, err)
                assert err <= 1e-8, (i, dt, path, step, err)
                assert after == pytest.approx(float(q_new.norm()), rel=1e-8, abs=1e-12 * before), (i, dt, path, step)
        # (logged once > 0)
        assert float(opt.stats["energy/violations"]) == 0.0 and "optim/solve_failures" not in opt.stats
        cases += 1
    assert cases == 96


def test_float32_factorisation_failure_skips_the_step_and_says_so():
    """N = 400 rows against n = 11 parameters, Δt·‖J‖² far beyond 1/ε in float32: I + Δt J Jᵀ is not positive definite
    to working precision. The step neither moves nor produces non-finite numbers, and it is logged as skipped: the
    energy is still that of qⁿ (the weights did not move), not 0. Breakage: the code before logged energy/modified =
    0."""
    torch.manual_seed(0)
    net = TwoLayerNet(2, 3, 2)
    x, y = 5.0 * torch.randn(200, 2), torch.randn(200, 2)
    before = [p.detach().clone() for p in net.parameters()]
    opt = IEQ(net.parameters(), lr=1e10)
    run_step(net, x, y, opt, closed=True)
    stats = {k: float(v) for k, v in opt.stats.items()}
    assert stats["optim/solve_failures"] == 1.0 and stats["energy/violations"] == 0.0
    assert max_diff(net.parameters(), before) == 0.0
    with torch.no_grad():
        assert (
            stats["energy/modified"]
            == stats["energy/true"]
            == pytest.approx(float((net(x) - y).norm()) ** 2 / y.numel())
        )
    assert stats["energy/true"] > 0


def test_cg_that_stops_short_warns_once_with_its_residual(recwarn):
    """CG capped below what the system needs: the step keeps ‖qⁿ⁺¹‖ ≤ ‖qⁿ‖ but is not the IEQ step; it warns once (not
    every step) with the residual reached, and logs it every step. Breakage: the code before said nothing."""
    net, x, y = two_layer(B=8, d=4, m=9, k=3)
    opt = IEQ(net.parameters(), lr=5.0, solver="cg", cg_max_iter=2)
    for _ in range(3):
        run_step(net, x, y, opt)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "cg_max_iter=2" in messages[0] and "relative residual" in messages[0], messages
    assert float(opt.stats["optim/cg_iters"]) == 2 and float(opt.stats["optim/cg_residual"]) > 1e-3
    assert float(opt.stats["energy/modified"]) <= float(opt.stats["energy/true"])


@pytest.mark.parametrize("frozen", ["W", "a"])
def test_closed_form_gram_leaves_out_frozen_parameters(frozen):
    """A frozen layer: the closed-form Gram is that of the parameters that move, so the closed-form step equals the
    exact step in those parameters alone. Breakage: the Gram kept the frozen columns and the step solved another
    system."""
    net, x, y = two_layer(B=6, d=4, m=9, k=3)
    getattr(net, frozen).requires_grad_(False)
    moving = [p for p in net.parameters() if p.requires_grad]
    q, jac = residual_and_jacobian(net, x, y)
    cols = [(name, p.numel()) for name, p in net.named_parameters()]
    keep = torch.cat([torch.full((n,), name != frozen) for name, n in cols])
    jac = jac[:, keep]
    q_new = torch.linalg.solve(torch.eye(q.numel(), dtype=F64) + 0.4 * jac @ jac.T, q)
    expected = moving[0].detach() - (0.4 * jac.T @ q_new).view_as(moving[0])
    still = getattr(net, frozen).detach().clone()
    opt = IEQ(net.parameters(), lr=0.4)
    run_step(net, x, y, opt, closed=True)
    assert float((moving[0].detach() - expected).abs().max()) <= 1e-12
    assert torch.equal(getattr(net, frozen), still)


# -- two processes: the global solve and the block solve ---------------------------------------------------------------
DDP_DTS = (0.3, 30.0, 3e3)
DDP_RUNS = [("global", "closed"), ("global", "cg-closed"), ("block", "closed"), ("block", "cholesky"), ("block", "cg"),
            ("block", "cg-closed")]


def ddp_problem():
    torch.manual_seed(0)
    net = TwoLayerNet(3, 5, 2).to(F64)
    x, y = torch.randn(8, 3, dtype=F64), torch.randn(8, 2, dtype=F64)
    return net, x, y


def _ranks_job(rank: int, world: int) -> dict:
    results = {}
    for mode, path in DDP_RUNS:
        net, x, y = ddp_problem()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt = IEQ(
            net.parameters(),
            lr=DDP_DTS[0],
            distributed=mode,
            solver="cg" if path.startswith("cg") else "cholesky",
            cg_tol=1e-12,
            cg_max_iter=500,
        )
        steps = []
        for dt in DDP_DTS:
            opt.param_groups[0]["lr"] = dt
            inputs = x if mode == "global" else xs  # the global batch, rank-major, as the module gathers it

            def closure():
                opt.zero_grad()
                return net(xs) - ys

            opt.step(closure, gram_fn=(lambda: net.jacobian_gram(inputs)) if path == "closed" else None,
                     jacobian_fn=(lambda: net.jacobian_operator(inputs)) if path == "cg-closed" else None)
            steps.append(([p.detach().clone() for p in net.parameters()], {k: float(v) for k, v in opt.stats.items()}))
        results[mode, path] = steps
    return results


def test_two_processes_solve_the_global_system_or_its_blocks(tmp_path):
    """Two gloo processes, each with half of the batch. ``distributed="global"``: every step equals the one-process
    step on the whole batch, by the closed-form Cholesky and by CG with the closed-form operator of the gathered batch
    (which the generic CG has no global form for). ``"block"``: each rank solves its own block, ``qⁿ⁺¹_r = (I + Δt J_r
    J_rᵀ)⁻¹ qⁿ_r``, and the moves ``Δt J_rᵀ qⁿ⁺¹_r`` are summed — checked against that computed here by hand — and the
    logged energies and the violation count are those of the global batch, ``‖qⁿ⁺¹‖² = Σ_r ‖qⁿ⁺¹_r‖²``, equal on both
    ranks. Breakage: the code before logged each rank's own share of ``‖qⁿ⁺¹‖`` in block mode."""
    ranks = on_ranks(_ranks_job, tmp_path, start_method="spawn")  # the Cholesky's LAPACK threads hang in a fork
    for mode, path in DDP_RUNS:
        net, x, y = ddp_problem()
        for n, dt in enumerate(DDP_DTS):
            if mode == "global":
                expected, q_new = reference_step(net, x, y, [dt, dt])
                q_before, q_after = (net(x) - y).detach().norm(), q_new.norm()
            else:
                moves, norms = [], []
                for xs, ys in zip(x.chunk(2), y.chunk(2)):
                    q, jac = residual_and_jacobian(net, xs, ys)
                    q_new = torch.linalg.solve(torch.eye(q.numel(), dtype=F64) + dt * jac @ jac.T, q)
                    moves.append(dt * jac.T @ q_new)
                    norms.append((q.square().sum(), q_new.square().sum()))
                move = sum(moves)
                expected, col = [], 0
                for p in net.parameters():
                    expected.append(p.detach() - move[col : col + p.numel()].view_as(p))
                    col += p.numel()
                q_before, q_after = (sum(a for a, _ in norms).sqrt(), sum(b for _, b in norms).sqrt())
            for rank in ranks:
                params, stats = rank[mode, path][n]
                assert max_diff(params, expected) <= 1e-9, (mode, path, n)
                assert stats["energy/true"] == pytest.approx(float(q_before) ** 2 / y.numel(), rel=1e-10), (
                    mode,
                    path,
                    n,
                )
                assert stats["energy/modified"] == pytest.approx(float(q_after) ** 2 / y.numel(), rel=1e-8), (
                    mode,
                    path,
                    n,
                )
                assert stats["energy/violations"] == 0.0
            assert ranks[0][mode, path][n][1] == ranks[1][mode, path][n][1]
            with torch.no_grad():
                for p, e in zip(net.parameters(), expected):
                    p.copy_(e)


# -- per-group step sizes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["cholesky", "cholesky-jvp", "cg", "cg-nystrom"])
def test_per_group_lr_matches_hand_computation(path, path_opt):
    net, x, y = mlp3(seed=3)
    lrs = [0.2, 0.2, 1.5, 1.5, 0.01, 0.01]  # weight and bias of each Linear
    expected, q_new = reference_step(net, x, y, lrs)
    layers = [net[0], net[2], net[4]]
    opt = path_opt([{"params": layer.parameters(), "lr": lr} for layer, lr in zip(layers, (0.2, 1.5, 0.01))], path)
    run_step(net, x, y, opt)
    assert max_diff(net.parameters(), expected) <= 1e-10
    assert float(opt.stats["energy/modified"]) == pytest.approx(float(q_new.norm()) ** 2 / y.numel(), rel=1e-10)
    assert float(opt.stats["optim/effective_lr"]) == 0.2


# -- path choice -------------------------------------------------------------------------------------------------------
def test_auto_falls_to_cg_above_max_dense():
    net, x, y = two_layer(B=6, k=3)
    expected, _ = reference_step(net, x, y, [0.3, 0.3])
    calls = []
    opt = IEQ(net.parameters(), lr=0.3, max_dense=17, cg_tol=1e-12)  # N = 18

    def gram():
        calls.append(1)
        return net.jacobian_gram(x)

    opt.step(lambda: net(x) - y, gram_fn=gram)
    assert not calls and "optim/cg_iters" in opt.stats
    assert max_diff(net.parameters(), expected) <= 1e-10


def test_auto_uses_dense_at_max_dense():
    net, x, y = two_layer(B=6, k=3)
    opt = IEQ(net.parameters(), lr=0.3, max_dense=18)
    run_step(net, x, y, opt)
    assert "optim/cg_iters" not in opt.stats


@pytest.mark.parametrize("path", ["closed", "cholesky", "cg"])
def test_bfloat16_residual_is_solved_in_float32(path):
    # bf16-mixed training hands the step a bfloat16 residual; there is no 16-bit Cholesky, so the solve runs in float32
    torch.manual_seed(0)
    net = TwoLayerNet(4, 16, 3)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    ref = TwoLayerNet(4, 16, 3)
    ref.load_state_dict(net.state_dict())
    opt = IEQ(net.parameters(), lr=0.1, solver="cg" if path == "cg" else "cholesky")
    opt_ref = IEQ(ref.parameters(), lr=0.1)
    q = opt.step(lambda: (net(x) - y).bfloat16(), gram_fn=(lambda: net.jacobian_gram(x)) if path == "closed" else None)
    run_step(ref, x, y, opt_ref, closed=True)
    assert q.dtype == torch.bfloat16
    assert float(opt.stats["energy/modified"]) <= float(opt.stats["energy/true"])
    assert max_diff(net.parameters(), ref.parameters()) <= 0.02 * max(
        float(p.detach().abs().max()) for p in ref.parameters()
    )
