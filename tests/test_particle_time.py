"""Particle time is the paper's flow in the mean-field reading: the velocity is ``N = m ∇L`` and every inner product of
velocities is the particle average ``(1/m) Σ_k u_k·v_k``. Each method in particle time is then exactly a parameter-time
run with rescaled settings, and these tests state each equivalence, through the plain ``torch.optim`` API and through
the CLI on ``configs/paper/ex1.yaml``:

- SGD at ``Δt`` = SGD at ``m·Δt``;
- the SAV family (every variant of SAV and ExpSAV, and IEQ adaptive, which has no ``λ``) at ``Δt, λ`` = the same at
  ``m·Δt, λ/m``;
- the adaptive family (A-SAV, A-ResSAV, A-RelSAV) at ``Δt, λ, ε`` = the same at ``√m·Δt, λ/m, ε/m``;
- IEQ (full), whose residual is ``√m·q``, at ``Δt`` = IEQ at ``m·Δt``.

The arithmetic of the two sides differs (``m`` enters before or after a product), so they agree to rounding, not bit for
bit. The SAV-family and adaptive-family cases fail under the literal reading (a Euclidean inner product of ``N``, which
makes ``r`` see ``m²‖∇L‖²``): tried by dropping the ``1/m`` in ``AuxiliaryVariableOptimizer._log_sq_norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from support import CONFIGS, QUIET, cli_args

from gf_lightning.cli import cli_main
from gf_lightning.components import TwoLayerNet
from gf_lightning.optim import SAV, AdaptiveSAV, ExpSAV, IEQAdaptive

M = 40  # particles: the hidden width
DT, LAM, EPS = 0.5, 4.0, 1e-3


@dataclass(frozen=True)
class Case:
    """One equivalence: the optimizer, its settings in particle time, and the parameter-time settings it equals."""

    cls: type
    particle: dict
    parameter: dict
    shared: dict = field(default_factory=dict)  #: settings both sides share (C, variant, …)


#: SAV family: (Δt, λ) → (m·Δt, λ/m); adaptive family: (Δt, λ, ε) → (√m·Δt, λ/m, ε/m)
SAV_RESCALED = ({"lr": DT, "lam": LAM}, {"lr": M * DT, "lam": LAM / M})
ADAPTIVE_RESCALED = ({"lr": DT, "lam": LAM, "eps": EPS}, {"lr": math.sqrt(M) * DT, "lam": LAM / M, "eps": EPS / M})
CASES = {
    "SGD": Case(torch.optim.SGD, {"lr": 1e-3}, {"lr": M * 1e-3}),
    **{f"SAV {v}": Case(SAV, *SAV_RESCALED, {"C": 1.0, "variant": v}) for v in ("seed", "vanilla", "relax")},
    **{f"ExpSAV {v}": Case(ExpSAV, *SAV_RESCALED, {"C": 1.0, "variant": v}) for v in ("seed", "vanilla", "relax")},
    "IEQ adaptive": Case(IEQAdaptive, {"lr": DT}, {"lr": M * DT}, {"eps": 1e-8}),
    **{f"adaptive {v}": Case(AdaptiveSAV, *ADAPTIVE_RESCALED, {"C": 1.0, "variant": v})
       for v in ("vanilla", "restart", "relax")},
}


def _problem() -> tuple[TwoLayerNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = TwoLayerNet(d=5, m=M, init="normal", mean_field=True).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    return net, x, y


def _train(case: Case, particle_time: bool, steps: int = 8) -> torch.Tensor:
    """``steps`` full-batch steps of the relative error; in particle time the closure back-propagates ``m·L`` (the
    velocity ``N = m ∇L``) and an energy optimizer averages its inner products over the ``m`` particles."""
    net, x, y = _problem()
    settings = {**case.shared, **(case.particle if particle_time else case.parameter)}
    if particle_time and case.cls is not torch.optim.SGD:
        settings["particles"] = M
    opt = case.cls(net.parameters(), **settings)
    scale = M if particle_time else 1

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (net(x) - y).square().sum() / y.square().sum()
        (scale * loss).backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("name", CASES)
def test_particle_time_is_a_rescaled_parameter_time_run(name: str) -> None:
    case = CASES[name]
    a, b = _train(case, particle_time=True), _train(case, particle_time=False)
    start = torch.cat([p.detach().reshape(-1) for p in _problem()[0].parameters()])
    moved = (b - start).norm().item()
    assert moved > 1e-3 * start.norm().item()  # the runs trained, so agreement is not two runs that stood still
    assert (a - b).norm().item() <= 1e-10 * moved


# ----------------------------------------------------------------------------------------------------------------------
# the same through the CLI, on the paper's Example 1 config
# ----------------------------------------------------------------------------------------------------------------------
SMALL = ["--data.init_args.n_samples=400", f"--model.net.init_args.m={M}", "--trainer.max_epochs=2", *QUIET,
         "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--data.init_args.steps_per_call=1",
         "--data.init_args.batch_size=80"]


def _args(optimizer: str, settings: dict) -> list[str]:
    return [f"--model.optimizer={optimizer}", *(f"--model.optimizer.init_args.{k}={v}" for k, v in settings.items())]


#: name → (optimizer class path, settings both sides share, particle-time settings, parameter-time settings)
CLI_CASES = {
    "SGD": ("torch.optim.SGD", {}, {"lr": 0.01}, {"lr": M * 0.01}),
    "SAV seed": ("gf_lightning.optim.SAV", {"C": 1.0}, *SAV_RESCALED),
    "SAV vanilla": ("gf_lightning.optim.SAV", {"C": 1.0, "variant": "vanilla"}, *SAV_RESCALED),
    "SAV relax": ("gf_lightning.optim.SAV", {"C": 1.0, "variant": "relax"}, *SAV_RESCALED),
    "ExpSAV vanilla": ("gf_lightning.optim.ExpSAV", {"C": 1.0, "variant": "vanilla"}, *SAV_RESCALED),
    "IEQ adaptive": ("gf_lightning.optim.IEQAdaptive", {}, {"lr": DT}, {"lr": M * DT}),
    "A-RelSAV": ("gf_lightning.optim.AdaptiveSAV", {"C": 1.0}, *ADAPTIVE_RESCALED),
    "A-SAV": ("gf_lightning.optim.AdaptiveSAV", {"C": 1.0, "variant": "vanilla"}, *ADAPTIVE_RESCALED),
    "IEQ (full)": ("gf_lightning.optim.IEQ", {}, {"lr": 0.01}, {"lr": M * 0.01}),
}


def _cli_weights(args: list[str], tmp_path, run: bool = True) -> torch.Tensor:
    torch.manual_seed(0)
    cli = cli_main(cli_args(CONFIGS / "paper" / "ex1.yaml", tmp_path, *SMALL, *args, subcommand="fit" if run else None),
                   run=run)
    if run:
        assert cli.trainer.global_step == 2 * math.ceil(320 / 80)
    return torch.cat([p.detach().reshape(-1) for p in cli.model.net.parameters()])


@pytest.mark.parametrize("name", CLI_CASES)
def test_particle_time_through_the_cli(name: str, tmp_path) -> None:
    optimizer, shared, particle, parameter = CLI_CASES[name]
    a = _cli_weights(["--model.particle_time=true", *_args(optimizer, {**shared, **particle})], tmp_path / "a")
    b = _cli_weights(["--model.particle_time=false", *_args(optimizer, {**shared, **parameter})], tmp_path / "b")
    start = _cli_weights([], tmp_path / "c", run=False)
    moved = (b - start).norm().item()
    assert moved > 1e-3 * start.norm().item()
    assert (a - b).norm().item() <= 1e-4 * moved  # float32: rounding of the two orders of the same products
