"""The energy-stable methods inside Lightning: large steps, exp2's huge losses, the logged energy curves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support import cli_args

from gf_lightning.cli import cli_main
from gf_lightning.study.events import read_scalars, values

NO_CHECKPOINTS = ["--checkpoint.save_last=false", "--checkpoint.save_top_k=0"]


def fit(config: str, root: Path, *extra: str, run: str = "fit"):
    return cli_main(cli_args(config, root, *NO_CHECKPOINTS, *extra, subcommand=run))


# method config, 10× the seed's exp1 step, and the variants whose modified energy the scheme keeps from rising
LARGE = [
    ("exp1_sav.yaml", 5.0, "vanilla"),
    ("exp1_sav.yaml", 5.0, "relax"),
    ("exp1_expsav.yaml", 1.0, "seed"),
    ("exp1_expsav.yaml", 1.0, "relax"),
    ("exp1_ieq_adaptive.yaml", 1.0, "seed"),
]


@pytest.mark.parametrize(("config", "lr", "variant"), LARGE, ids=[f"{c[5:-5]}-{v}" for c, _, v in LARGE])
def test_large_steps_stay_stable(config: str, lr: float, variant: str, tmp_path: Path) -> None:
    """exp1 at 10× the seed's Δt for 20 epochs: finite weights, and the modified energy never rises (logged every step).

    ExpSAV's seed form freezes here: with Δt Sⁿ ≫ rⁿ its recursion squares r at every step (ℓⁿ⁺¹ ≈ 2ℓⁿ − log Δt Sⁿ),
    so log r leaves the float range within a few hundred steps and ends at −inf (r = 0, step 0): a freeze, not a NaN."""
    cli = fit(config, tmp_path, "--trainer.max_epochs=20", "--trainer.log_every_n_steps=1",
              f"--model.optimizer.init_args.lr={lr}", f"--model.optimizer.init_args.variant={variant}")
    assert all(p.isfinite().all() for p in cli.model.parameters())
    scalars = read_scalars(tmp_path)
    energy = values(scalars, "energy/modified")
    assert len(energy) == 20 * 32
    assert not any(math.isnan(e) for e in energy) and all(e < math.inf for e in energy)
    assert all(b <= a for a, b in zip(energy, energy[1:])), "modified energy rose"
    if energy[-1] == -math.inf:  # frozen: nothing moves any more
        assert scalars["optim/effective_lr"][-1].value == 0
    assert scalars["energy/violations"][-1].value == 0
    assert math.isfinite(scalars["val/loss"][-1].value)


def test_sgd_blows_up_at_the_large_step(tmp_path: Path) -> None:
    """The other side: SGD at 10× its seed step (0.1) on exp1 is not stable — its loss jumps far above its start."""
    # before any step
    start = fit("exp1_sgd.yaml", tmp_path / "start", run="validate").trainer.callback_metrics["val/loss"]
    cli = fit("exp1_sgd.yaml", tmp_path, "--trainer.max_epochs=1", "--model.optimizer.init_args.lr=0.1")
    assert float(cli.trainer.callback_metrics["train/loss"]) > 5 * float(start)


def test_expsav_on_exp2_runs_and_lowers_the_loss(tmp_path: Path) -> None:
    """exp2's losses are in the thousands (C·exp(L) overflows any float): ExpSAV keeps log r and trains."""
    cli = fit("exp2_expsav.yaml", tmp_path, "--trainer.max_epochs=3", "--trainer.log_every_n_steps=1")
    scalars = read_scalars(tmp_path)
    log_c = math.log(cli.model.optimizers(use_pl_optimizer=False).param_groups[0]["C"])
    log_r = [v + log_c for v in values(scalars, "energy/modified")]  # the modified energy is log r − log C
    assert log_r[0] > 1000  # log r ≈ L: r itself would be inf
    assert all(math.isfinite(v) for v in log_r)
    assert all(b <= a for a, b in zip(log_r, log_r[1:]))
    start = scalars["energy/true"][0].value  # L(w⁰) on the first batch
    val = values(scalars, "val/loss")
    assert start > 1000 and val[-1] < 0.5 * start
    assert all(p.isfinite().all() for p in cli.model.parameters())


@pytest.mark.parametrize("config", ["exp3_sav.yaml", "exp3_expsav.yaml", "exp3_ieq_adaptive.yaml", "exp3_ieq.yaml"])
def test_energy_scalars_are_logged_with_their_meaning(config: str, tmp_path: Path) -> None:
    """Every energy scalar is logged after every step (12: 3 epochs of 4), and each says what its name says, the same
    for every method: ``energy/true`` is the step's batch loss in the loss's units (for IEQ the mean squared residual
    ‖qⁿ‖²/N, which for regression is the MSE), so that each epoch's ``train/loss`` is its steps' ``energy/true``
    averaged over the batch sizes (256, 256, 256, 32); ``energy/modified`` is the auxiliary variable's energy (SAV ``r²
    − C``, ExpSAV ``log r − log C``, IEQ adaptive ``½q²``: the last one equals the optimizer's state, to TensorBoard's
    float32) and IEQ's never exceeds its true energy; no violation is counted; the effective step is within the nominal
    ``Δt/(1 + Δtλ)``; the last ``val/loss`` is the held-out MSE of the trained network, recomputed here. Breakage: IEQ's
    energy as the batch sum ½‖q‖² (as before) is B/2 = 16 … 128 times the loss, and fails the average."""
    cli = fit(config, tmp_path, "--trainer.max_epochs=3", "--trainer.log_every_n_steps=1")
    tags = read_scalars(tmp_path)
    opt = cli.model.optimizers(use_pl_optimizer=False)
    settings = opt.param_groups[0]
    steps = list(range(1, 13))
    for tag in ("energy/modified", "energy/true", "energy/violations", "optim/effective_lr"):
        assert [p.step for p in tags[tag]] == steps, tag
    assert [p.step for p in tags["train/loss"]] == [4, 8, 12]  # the same step axis: optimizer steps
    true = values(tags, "energy/true")
    sizes = [256, 256, 256, 32]
    for epoch, (_, train_loss) in enumerate((p.step, p.value) for p in tags["train/loss"]):
        mean = sum(n * v for n, v in zip(sizes, true[4 * epoch : 4 * epoch + 4])) / sum(sizes)
        assert mean == pytest.approx(train_loss, rel=1e-5), epoch
    modified = values(tags, "energy/modified")
    state = opt.global_state
    last = {"SAV": lambda: math.exp(2 * state["log_r"].item()) - settings["C"],
            "ExpSAV": lambda: state["log_r"].item() - math.log(settings["C"]),
            "IEQAdaptive": lambda: 0.5 * math.exp(2 * state["log_q"].item())}.get(type(opt).__name__)
    if last is not None:
        assert modified[-1] == pytest.approx(last(), rel=1e-6)
    else:  # IEQ: the step never raises the energy
        assert all(m <= t * (1 + 1e-6) for m, t in zip(modified, true))
    assert all(v == 0 for v in values(tags, "energy/violations"))
    nominal = settings["lr"] / (1 + settings["lr"] * settings.get("lam", 0.0))
    assert all(0 < v <= nominal * (1 + 1e-6) for v in values(tags, "optim/effective_lr"))

    data = cli.datamodule.tensors
    with torch.no_grad():
        held_out = torch.nn.functional.mse_loss(cli.model.net(data["x_test"]), data["y_test"]).item()
    assert tags["val/loss"][-1].value == pytest.approx(held_out, rel=1e-5)
