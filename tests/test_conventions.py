"""The conventions of ``torch.optim``, for every optimizer and variant of the project, through one table.

Each test runs every row of :data:`CASES`: state round trips that continue bit for bit (with the loaded settings, not
the constructor's), ``copy.deepcopy`` and ``pickle``, per-group ``lr`` and ``add_param_group``, ``zero_grad``, a
scheduler that sets ``lr = 0``, an empty first group, frozen parameters, float64, a closure that returns a Python
float, the energy promise over random step sizes, and two DDP processes that take one process's steps.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from support import on_ranks

from gf_lightning.optim import AEGD, AEGDM, IEQ, SAV, AdaptiveSAV, ExpSAV, IEQAdaptive


@dataclass(frozen=True)
class Case:
    """One optimizer as a user builds it, and settings that differ from its own (for the load-state tests)."""

    cls: type
    kwargs: dict[str, Any]
    other: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        detail = self.kwargs.get("variant", self.kwargs.get("solver"))
        return self.cls.__name__ + (f"-{detail}" if detail else "")

    @property
    def residual(self) -> bool:
        return getattr(self.cls, "closure_returns", "loss") == "residual"

    def make(self, params, **over) -> torch.optim.Optimizer:
        return self.cls(params, **{**self.kwargs, **over})


CASES = (
    [
        Case(
            SAV,
            dict(lr=0.05, variant=v),
            dict(lr=0.3, C=7.0, lam=0.5, particles=3, variant="vanilla" if v != "vanilla" else "seed"),
        )
        for v in SAV.variants
    ]
    + [
        Case(
            ExpSAV,
            dict(lr=0.05, variant=v),
            dict(lr=0.3, C=3.0, lam=0.0, particles=5, variant="relax" if v != "relax" else "seed"),
        )
        for v in ExpSAV.variants
    ]
    + [
        Case(
            IEQAdaptive,
            dict(lr=0.05, variant=v),
            dict(lr=0.2, eps=1e-3, particles=2, variant="restart" if v == "seed" else "seed"),
        )
        for v in IEQAdaptive.variants
    ]
    + [
        Case(IEQ, dict(lr=0.05, solver=s), dict(lr=0.2, solver="cg" if s == "cholesky" else "cholesky", cg_max_iter=3))
        for s in IEQ.solvers
    ]
    + [
        Case(
            AdaptiveSAV,
            dict(lr=0.05, variant=v),
            dict(
                lr=0.3,
                C=7.0,
                lam=0.5,
                betas=(0.5, 0.9),
                eps=1e-3,
                eta=0.5,
                particles=4,
                variant="restart" if v != "restart" else "vanilla",
            ),
        )
        for v in AdaptiveSAV.variants
    ]
    + [
        Case(AEGD, dict(lr=0.05), dict(lr=0.3, c=3.0, weight_decay=0.01, decoupled_weight_decay=True)),
        Case(AEGDM, dict(lr=0.05), dict(lr=0.2, c=2.0, momentum=0.5, dampening=0.1)),
    ]
)
table = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])

_g = torch.Generator().manual_seed(7)
BATCHES = [(torch.randn(16, 4, generator=_g), torch.randn(16, 2, generator=_g)) for _ in range(3)]


def make_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype)


def closure_for(case: Case, model, opt, x, y, as_float: bool = False):
    if case.residual:
        def closure():
            opt.zero_grad()
            return model(x) - y
    else:
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss.item() if as_float else loss
    return closure


def train(case: Case, model, opt, steps: int, start: int = 0, **kw) -> list:
    out = []
    for i in range(start, start + steps):
        x, y = (t.to(next(model.parameters()).dtype) for t in BATCHES[i % len(BATCHES)])
        out.append(opt.step(closure_for(case, model, opt, x, y, **kw)))
    return out


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def assert_same_stats(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) or (a[key].isnan() & b[key].isnan()).all(), (key, a[key], b[key])


# ----------------------------------------------------------------------------------------------------------------------
@table
def test_load_state_dict_continues_bit_for_bit_with_the_loaded_settings(case: Case):
    """10 steps, save, load into a fresh model and an optimizer built with *other* settings (lr, C, variant, …), 10 more
    == 20 uninterrupted steps, bit for bit: after ``load_state_dict`` the step uses the loaded settings, as every torch
    optimizer does. Breakage: the code before read C, variant and eta from the constructor's ``defaults``."""
    ref_model = make_net(0)
    ref_opt = case.make(ref_model.parameters())
    train(case, ref_model, ref_opt, 20)

    model = make_net(0)
    opt = case.make(model.parameters())
    train(case, model, opt, 10)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    assert saved_opt["state"][0]["step"].item() == 10

    fresh_model = make_net(1)
    fresh_model.load_state_dict(saved_model)
    fresh_opt = case.make(fresh_model.parameters(), **case.other)
    fresh_opt.load_state_dict(saved_opt)
    for key, value in saved_opt["state"][0].items():  # the global scalars come back as saved, dtype included
        got = fresh_opt.global_state[key]
        assert got.dtype == value.dtype and torch.equal(got, value), (key, got, value)
    train(case, fresh_model, fresh_opt, 10, start=10)
    assert_same(params_of(fresh_model), params_of(ref_model))
    assert_same_stats(fresh_opt.stats, ref_opt.stats)


@table
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_identically(case: Case, how: str):
    """``copy.deepcopy`` and ``pickle`` of a model with its optimizer: the copy reports the same stats and takes the
    same steps. Breakage: torch's ``__getstate__`` keeps only defaults, state and param_groups, so the last step's
    record was lost (AttributeError on ``stats``)."""
    model = make_net(0)
    opt = case.make(model.parameters())
    train(case, model, opt, 3)
    twin_model, twin_opt = (
        copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    )
    assert_same_stats(twin_opt.stats, opt.stats)
    train(case, model, opt, 3, start=3)
    train(case, twin_model, twin_opt, 3, start=3)
    assert_same(params_of(twin_model), params_of(model))
    assert_same_stats(twin_opt.stats, opt.stats)


@table
def test_per_group_lr_and_add_param_group(case: Case):
    """A second group added later with its own lr is the same optimizer as one built with both groups; and a group's own
    lr is honoured: the run differs from one where both groups share the first lr."""
    runs = {}
    for how in ("built", "added", "shared"):
        model = make_net(0)
        first, second = list(model[0].parameters()), list(model[2].parameters())
        lr2 = case.kwargs["lr"] if how == "shared" else 0.2
        if how == "added":
            opt = case.make(first)
            opt.add_param_group({"params": second, "lr": lr2})
        else:
            opt = case.make([{"params": first}, {"params": second, "lr": lr2}])
        assert opt.param_groups[1]["lr"] == lr2
        train(case, model, opt, 3)
        runs[how] = params_of(model)
    assert_same(runs["built"], runs["added"])
    assert not torch.equal(runs["built"][-1], runs["shared"][-1])


@table
def test_zero_grad_clears_the_gradients(case: Case):
    model = make_net(0)
    opt = case.make(model.parameters())
    train(case, model, opt, 1)
    assert any(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@table
def test_scheduler_that_sets_lr_zero(case: Case):
    """A linear warm-up from 0 (torch allows lr = 0 through a scheduler): the first step moves nothing and raises
    nothing, the next ones move. Breakage: the relax variants divided by Δt (ZeroDivisionError)."""
    model = make_net(0)
    opt = case.make(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(n / 2, 1.0))
    before = params_of(model)
    for i in range(4):
        assert opt.param_groups[0]["lr"] == case.kwargs["lr"] * min(i / 2, 1.0)
        train(case, model, opt, 1, start=i)
        if i == 0:
            assert_same(params_of(model), before)
        sched.step()
    assert not torch.equal(params_of(model)[0], before[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for v in opt.stats.values())


@table
def test_empty_first_group(case: Case):
    """``[{"params": []}, {"params": [...]}]`` is legal in torch: the same steps as without the empty group, and its
    state round trip works. Breakage: the global state was keyed on ``param_groups[0]["params"][0]`` (IndexError)."""
    runs = []
    for groups in ("plain", "empty first"):
        model = make_net(0)
        params = list(model.parameters())
        opt = case.make(params if groups == "plain" else [{"params": []}, {"params": params}])
        train(case, model, opt, 3)
        runs.append(params_of(model))
    assert_same(*runs)
    fresh = case.make([{"params": []}, {"params": list(model.parameters())}])
    fresh.load_state_dict(opt.state_dict())
    assert fresh.global_state["step"].item() == 3


@table
def test_frozen_parameters_stay_put(case: Case):
    """A parameter with ``requires_grad=False`` in the optimizer: it does not move, and the others take the steps of an
    optimizer built without it."""
    runs = []
    for build in ("with the frozen one", "without it"):
        model = make_net(0)
        model[0].bias.requires_grad_(False)
        frozen = model[0].bias.detach().clone()
        params = (
            list(model.parameters())
            if build == "with the frozen one"
            else [p for p in model.parameters() if p.requires_grad]
        )
        opt = case.make(params)
        train(case, model, opt, 3)
        assert torch.equal(model[0].bias, frozen)
        runs.append(params_of(model))
    assert_same(*runs)


@table
def test_float64_parameters(case: Case):
    """float64 parameters stay float64, take the same steps as float32 to float32's precision, and the state stays
    float64."""
    runs = {}
    for dtype in (torch.float32, torch.float64):
        model = make_net(0, dtype)
        opt = case.make(model.parameters())
        train(case, model, opt, 5)
        assert all(p.dtype == dtype for p in model.parameters())
        assert opt.global_state["step"].dtype == torch.float64
        runs[dtype] = params_of(model)
    for a, b in zip(runs[torch.float32], runs[torch.float64]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if not c.residual], ids=[c.id for c in CASES if not c.residual])
def test_closure_may_return_a_float(case: Case):
    """``LBFGS`` takes ``float(closure())``: a closure that returns ``loss.item()`` takes the same steps, and ``step``
    returns what the closure returned. Breakage: the code before refused anything but a tensor."""
    runs = []
    for as_float in (False, True):
        model = make_net(0)
        opt = case.make(model.parameters())
        returned = train(case, model, opt, 3, as_float=as_float)
        assert all(isinstance(r, float) for r in returned) if as_float else all(torch.is_tensor(r) for r in returned)
        runs.append(params_of(model))
    assert_same(*runs)


@table
def test_energy_never_rises_over_random_step_sizes(case: Case):
    """Δt log-uniform in [1e-4, 1e4], three steps each, float64: the auxiliary variable never rises above where the step
    started (the carried value, or the restarted one), IEQ's ‖qⁿ⁺¹‖ ≤ ‖qⁿ‖, and no violation is counted. (Each scheme's
    exact energy law is checked in test_optim.py and test_ieq.py; this is the same promise for every row of the
    table.)"""
    gen = torch.Generator().manual_seed(0)
    restarts = case.kwargs.get("variant") == "restart" or (case.cls is SAV and case.kwargs.get("variant") == "seed")
    for trial in range(12):
        dt = 10 ** float(torch.empty(()).uniform_(-4, 4, generator=gen))
        model = make_net(trial, torch.float64)
        opt = case.make(model.parameters(), lr=dt)
        for i in range(3):
            before = opt.global_state.get(getattr(opt, "aux_key", ""))
            before = None if before is None or restarts else before.item()
            train(case, model, opt, 1, start=i)
            stats = {k: float(v) for k, v in opt.stats.items()}
            if case.residual:
                assert stats["energy/modified"] <= stats["energy/true"] * (1 + 2e-12), (dt, i, stats)
            elif before is not None:
                assert opt.global_state[opt.aux_key].item() <= before, (dt, i)
            assert stats["energy/violations"] == 0, (dt, i, stats)
            assert all(torch.isfinite(p).all() for p in model.parameters()), (dt, i)


#: the rows whose closure returns the loss (IEQ's residual closure under DDP has its own protocol: tests/test_ieq.py)
DDP_CASES = [case for case in CASES if not case.residual]
DDP_STEPS = 4


def ddp_steps(case: Case, rank: int | None = None, world: int = 1) -> list:
    """``DDP_STEPS`` float64 steps of ``case``'s optimizer: under DDP on ``rank``'s half of each batch (``y`` scaled
    per step, so that the two halves' losses differ), or in one process on the whole batch; the weights and stats
    after each."""
    net = make_net(0, torch.float64)
    model = torch.nn.parallel.DistributedDataParallel(net) if rank is not None else net
    opt = case.make(net.parameters())
    out = []
    for i in range(DDP_STEPS):
        x, y = (t.double() for t in BATCHES[i % len(BATCHES)])
        y = y * torch.linspace(1, 4, len(y), dtype=torch.float64)[:, None]
        if rank is not None:
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.step(closure_for(case, model, opt, x, y))
        out.append((params_of(net), {k: float(v) for k, v in opt.stats.items()}))
    return out


def _ddp_job(rank: int, world: int) -> dict:
    return {case.id: ddp_steps(case, rank, world) for case in DDP_CASES}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Every loss-returning row run once in two gloo processes, each a DDP replica with half of every batch. Spawned,
    not forked: after the suite's earlier tests the parent's OpenMP threads are running, and a forked child's first
    matrix product hangs on them."""
    return on_ranks(_ddp_job, tmp_path_factory.mktemp("ddp"), start_method="spawn")


@pytest.mark.parametrize("case", DDP_CASES, ids=[c.id for c in DDP_CASES])
def test_two_processes_equal_one(case: Case, two_ranks: list[dict]):
    """Two DDP processes, each with half of every batch, take the steps of one process on the whole batch (to 1e-12),
    with its stats, and the same steps as each other (bit for bit). DDP averages the gradients only: a scheme that
    puts its rank's own loss into ``r̂ = √(L + C)``, ``v`` or AEGD's ``√(f + c)`` (not the ranks' mean) makes the
    replicas part, as the halves' losses differ by far here."""
    one = ddp_steps(case)
    for n, (params, stats) in enumerate(one):
        for rank in two_ranks:
            got, got_stats = rank[case.id][n]
            for a, b in zip(got, params):
                assert float((a - b).abs().max()) <= 1e-12 * max(1.0, float(b.abs().max())), (case.id, n)
            assert got_stats.keys() == stats.keys()
            for key, value in stats.items():
                assert got_stats[key] == pytest.approx(value, rel=1e-11, abs=1e-13), (case.id, n, key)
        assert_same(two_ranks[0][case.id][n][0], two_ranks[1][case.id][n][0])
