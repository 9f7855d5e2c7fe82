"""Exact resume after SIGKILL, determinism, the non-finite guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gf_lightning.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive"]
# exp1 shrunk so that an epoch takes a few steps: 512 training samples, 64 hidden units
SMALL = ["--data.init_args.n_samples=640", "--model.net.init_args.m=64", "--progress_bar.refresh_rate=0",
         "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1"]


def fit_args(method: str, root: Path, epochs: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / f"configs/exp1_{method}.yaml"), f"--trainer.max_epochs={epochs}",
            f"--trainer.default_root_dir={root}", *SMALL, *extra]


def last_ckpt(root: Path) -> Path:
    """``last.ckpt`` of the newest run under ``root`` (a resumed run logs to a new ``version_N``)."""
    paths = root.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return max(paths, key=lambda p: int(p.parent.parent.name.removeprefix("version_")))


def assert_same_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for pid, state in opt_a["state"].items():
        assert state.keys() == opt_b["state"][pid].keys()
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][pid][key])), (pid, key)


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_sigkill_is_bit_identical(method: str, tmp_path: Path) -> None:
    cli_main(fit_args(method, tmp_path / "straight", 6))
    straight = torch.load(last_ckpt(tmp_path / "straight"), weights_only=False)
    assert straight["epoch"] == 5

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    kill = '--trainer.callbacks+={"class_path": "helpers.KillAtEpoch", "init_args": {"epoch": 3}}'
    proc = subprocess.run([sys.executable, "-m", "gf_lightning", *fit_args(method, killed, 6), kill], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = last_ckpt(killed)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2  # epochs 0, 1, 2 done

    cli_main(fit_args(method, killed, 6, f"--ckpt_path={ckpt}"))
    assert_same_state(straight, torch.load(last_ckpt(killed), weights_only=False))


def _metrics(root: Path, seed: int) -> dict[str, float]:
    cli = cli_main(fit_args("sav", root, 2, f"--seed_everything={seed}", "--trainer.logger=false"))
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_same_seed_same_curves_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = _metrics(tmp_path / "a", 0), _metrics(tmp_path / "b", 0), _metrics(tmp_path / "c", 1)
    assert a == b
    assert a["val/loss"] != c["val/loss"] and a["train/loss"] != c["train/loss"]


def test_divergent_run_stops_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SGD at lr 1e3 on exp2: the loss overflows within a few steps; the run stops and says where."""
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", str(ROOT / "configs/exp2_sgd.yaml"), "--model.optimizer.init_args.lr=1000",
                  "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}",
                  "--progress_bar.refresh_rate=0", "--trainer.enable_model_summary=false", "--data.init_args.n_samples=2000"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "SGD" in err and "epoch 0" in err and "Traceback" not in err


def test_nan_keeps_the_last_good_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    poison = '--trainer.callbacks+={"class_path": "helpers.PoisonAtEpoch", "init_args": {"epoch": 2}}'
    with pytest.raises(SystemExit) as exc:
        cli_main(fit_args("expsav", tmp_path, 5, poison))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "ExpSAV" in err and "epoch 2" in err and "last.ckpt" in err
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for s in ckpt["optimizer_states"][0]["state"].values() for v in s.values())


@pytest.mark.parametrize("method", METHODS)
def test_steps_per_call_changes_nothing_but_the_calls(method: str, tmp_path: Path) -> None:
    """Several mini-batches per training_step call (data.steps_per_call) take the same steps in the same order, and
    trainer.max_steps stops inside a call."""
    runs = {}
    for k in (1, 3):
        for max_steps in (-1, 5):
            cli = cli_main(fit_args(method, tmp_path / f"{k}_{max_steps}", 2, f"--data.init_args.steps_per_call={k}",
                                    f"--trainer.max_steps={max_steps}", "--data.init_args.batch_size=64", "--trainer.logger=false"))
            runs[k, max_steps] = (cli.trainer.global_step, [p.detach().clone() for p in cli.model.parameters()],
                                  cli.trainer.optimizers[0].state_dict()["state"])
    for max_steps, steps in ((-1, 2 * 8), (5, 5)):  # batch 64: 8 mini-batches an epoch, handed over as 3 + 3 + 2
        (steps1, params1, state1), (steps3, params3, state3) = runs[1, max_steps], runs[3, max_steps]
        assert steps1 == steps3 == steps
        assert all(torch.equal(a, b) for a, b in zip(params1, params3))
        assert state1.keys() == state3.keys()
        for pid in state1:
            for key, value in state1[pid].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(state3[pid][key])), (pid, key)
    assert not all(torch.equal(a, b) for a, b in zip(runs[1, -1][1], runs[1, 5][1]))  # the stop did stop
