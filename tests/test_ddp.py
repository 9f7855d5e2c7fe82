"""Every method gives the same result on two processes (gloo, ddp_spawn) as on one, with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gf_lightning.cli import cli_main
from helpers import read_scalars

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive"]
# exp3 (800 training samples, global batch 256) with 64 hidden units: 4 steps an epoch, 3 epochs
SMALL = ["--model.net.init_args.m=64", "--trainer.max_epochs=3", "--progress_bar.refresh_rate=0",
         "--trainer.enable_model_summary=false", "--trainer.callbacks+=gf_lightning.callbacks.ReplicaCheck"]


def run(method: str, root: Path, *extra: str) -> dict:
    cli_main(["fit", "--config", str(ROOT / f"configs/exp3_{method}.yaml"), f"--trainer.default_root_dir={root}", *SMALL, *extra])
    (ckpt,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(a.norm(), 1e-300))


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one(method: str, tmp_path: Path) -> None:
    one = run(method, tmp_path / "one")
    two = run(method, tmp_path / "two", "--trainer", str(ROOT / "configs/trainer/ddp_sim.yaml"))
    assert two["global_step"] == one["global_step"] == 12
    for key, value in one["state_dict"].items():
        assert rel(value, two["state_dict"][key]) <= 1e-5, key
    (state_one,), (state_two,) = one["optimizer_states"], two["optimizer_states"]
    for pid, entries in state_one["state"].items():
        for key, value in entries.items():
            assert rel(torch.as_tensor(value), torch.as_tensor(state_two["state"][pid][key])) <= 1e-5, (pid, key)
    # across ranks, after every epoch: min == max of the parameter checksums and of r / ‖q‖ (ReplicaCheck)
    spread = read_scalars(tmp_path / "two")["ddp/replica_spread"]
    assert len(spread) == 3 and all(v == 0 for _, v in spread)


def test_plain_ddp_from_the_command_line(tmp_path: Path) -> None:
    """`--trainer.strategy=ddp` re-executes the command line for rank 1, so it runs as a user would run it."""
    cmd = [sys.executable, "-m", "gf_lightning", "fit", "--config", "configs/exp3_expsav.yaml", "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}",
           "--progress_bar.refresh_rate=0", "--trainer.callbacks+=gf_lightning.callbacks.ReplicaCheck"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    scalars = read_scalars(tmp_path)
    assert len(scalars["val/loss"]) == 2 and all(v == 0 for _, v in scalars["ddp/replica_spread"])


def test_ieq_block_solve_is_another_algorithm(tmp_path: Path) -> None:
    """distributed='block' solves each rank's own system: the replicas agree, but the step is not the one-process step."""
    one = run("ieq", tmp_path / "one")
    block = run("ieq", tmp_path / "block", "--trainer", str(ROOT / "configs/trainer/ddp_sim.yaml"),
                "--model.optimizer.init_args.distributed=block")
    assert all(v == 0 for _, v in read_scalars(tmp_path / "block")["ddp/replica_spread"])
    assert rel(one["state_dict"]["net.a"], block["state_dict"]["net.a"]) > 1e-4
