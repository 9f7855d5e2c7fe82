"""Exact resume after SIGKILL, determinism, the non-finite guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Step, callback_arg, read_record
from support import CONFIGS, DDP_FORK, METHODS, QUIET, SMALL_EXP1, cli_args, run_dir, subprocess_env, version_dirs

from gf_lightning.cli import cli_main
from gf_lightning.study.events import read_scalars

EPOCHS = 6


def fit_args(method: str, root: Path, epochs: int, *extra: str) -> list[str]:
    """exp1 with ``method``, small."""
    return cli_args(f"exp1_{method}", root, *SMALL_EXP1, *extra, epochs=epochs)


def last_ckpt(root: Path) -> Path:
    """``last.ckpt`` of the newest run under ``root`` (a resumed run logs to a new ``version_N``)."""
    return version_dirs(root)[-1] / "checkpoints" / "last.ckpt"


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


# (method, where the process is killed): at the start of epoch 3 (epochs 0-2 done and checkpointed), or after the first
# of the two training_step calls of epoch 3 (one call = one mini-batch here; Adam and IEQ take batch 64: 8 calls an
# epoch). Mid-epoch for the methods whose state is more than the weights and a step count (A-RelSAV: a first moment per
# coordinate and a scalar second moment; AEGDM: an energy and a momentum per coordinate).
KILLS = [*((m, "epoch_start") for m in METHODS),
         *((m, "mid_epoch") for m in ("adam", "expsav", "ieq_adaptive", "arelsav", "aegdm"))]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """``straight_run(method)``: the uninterrupted run's last checkpoint and what it trained (run once per method)."""
    runs: dict[str, tuple[dict, list[Step]]] = {}

    def get(method: str) -> tuple[dict, list[Step]]:
        if method not in runs:
            root = tmp_path_factory.mktemp(f"straight_{method}")
            cli_main(fit_args(method, root, EPOCHS, "--data.init_args.steps_per_call=1",
                              callback_arg("RecordTraining", folder=str(root / "record"))))
            (steps,) = read_record(root / "record").values()
            runs[method] = torch.load(last_ckpt(root), weights_only=False), steps
        return runs[method]

    return get


@pytest.mark.parametrize(("method", "kill"), KILLS, ids=[f"{m}-{k}" for m, k in KILLS])
def test_resume_after_sigkill_is_bit_identical(method: str, kill: str, tmp_path: Path, straight_run) -> None:
    """A run SIGKILLed at the start of epoch 3, or in the middle of it, and resumed with ``--ckpt_path`` from its last
    (end-of-epoch 2) checkpoint ends bit for bit where the uninterrupted run ends — and the resumed process trained only
    the steps from epoch 3 on, on the same mini-batches in the same order.

    Catches: a resume that ignores ``--ckpt_path`` and retrains from scratch (the same seed gives the same bits, but the
    resumed process then trains from step 0 — tried by dropping ``--ckpt_path`` from the resumed run: fails on the steps
    trained, both kill points); a resume that loses state the bits depend on (the final comparison)."""
    straight, straight_steps = straight_run(method)
    assert straight["epoch"] == EPOCHS - 1
    per_epoch = len(straight_steps) // EPOCHS
    assert [s.step for s in straight_steps] == list(range(EPOCHS * per_epoch)) and per_epoch >= 2

    killed = tmp_path / "killed"
    killer = (
        callback_arg("KillAtEpoch", epoch=3)
        if kill == "epoch_start"
        else callback_arg("KillAfterBatch", epoch=3, batch=0)
    )
    proc = subprocess.run([sys.executable, "-m", "gf_lightning",
                           *fit_args(method, killed, EPOCHS, "--data.init_args.steps_per_call=1",
                                     callback_arg("RecordTraining", folder=str(killed / "record")), killer)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = last_ckpt(killed)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2  # epochs 0, 1, 2 done
    (before,) = read_record(killed / "record").values()
    assert {s.epoch for s in before} == ({0, 1, 2} if kill == "epoch_start" else {0, 1, 2, 3})
    assert len(before) == 3 * per_epoch + (kill == "mid_epoch")  # mid-epoch: killed after epoch 3's first mini-batch

    cli_main(fit_args(method, killed, EPOCHS, "--data.init_args.steps_per_call=1", f"--ckpt_path={ckpt}",
                      callback_arg("RecordTraining", folder=str(killed / "resumed"))))
    (after,) = read_record(killed / "resumed").values()
    assert after[0].pid != before[0].pid
    # only what was left: from the first step of epoch 3 (again, after a mid-epoch kill) to the end
    assert [s.step for s in after] == list(range(3 * per_epoch, EPOCHS * per_epoch))
    assert [(s.epoch, s.call, s.rows) for s in after] == [
        (s.epoch, s.call, s.rows) for s in straight_steps[3 * per_epoch :]
    ]
    assert [s.rows for s in before] == [s.rows for s in straight_steps[: len(before)]]
    assert_same_state(straight, torch.load(last_ckpt(killed), weights_only=False))


# (processes, mini-batches per training_step call)
INSIDE_EPOCH = [(1, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize(
    ("processes", "steps_per_call"), INSIDE_EPOCH, ids=[f"{p}proc-{k}per_call" for p, k in INSIDE_EPOCH]
)
def test_resume_from_inside_an_epoch_is_exact(processes: int, steps_per_call: int, tmp_path: Path) -> None:
    """A run resumed from a step checkpoint taken in the middle of epoch 1 (``--checkpoint.every_n_train_steps``) trains
    the rest of that epoch's mini-batches, in order, and ends bit for bit where the uninterrupted run ends, with the
    same train/loss for epoch 1 (its sums over the steps before the checkpoint travel in it, all ranks' under DDP).

    exp3 SAV with 771 samples to train: 4 steps an epoch (the last of 3 samples, 2 + 1 on two ranks); the checkpoint
    after step 6 is after 2 of epoch 1's 4 steps.

    Breakage: a loader that starts the epoch again from its first batch (Lightning's way for a loader it cannot resume:
    tried, the resumed run trains batches 0, 1 again and fails on the rows); epoch sums of rank 0 only in the checkpoint
    (tried: the two-process epoch-1 train/loss differs)."""
    common = [
        "fit",
        "--config",
        str(CONFIGS / "exp3_sav.yaml"),
        "--data.init_args.n_samples=964",
        "--model.net.init_args.m=64",
        "--trainer.max_epochs=2",
        *QUIET,
        f"--data.init_args.steps_per_call={steps_per_call}",
        "--checkpoint.every_n_train_steps=2",
        "--checkpoint.save_top_k=-1",
        "--checkpoint.filename=step{step:03d}",
        *(DDP_FORK if processes == 2 else []),
    ]
    runs = {}
    for name in ("straight", "resumed"):
        root = tmp_path / name
        extra = (
            [f"--ckpt_path={run_dir(tmp_path / 'straight') / 'checkpoints' / 'step006.ckpt'}"]
            if name == "resumed"
            else []
        )
        cli_main(
            [
                *common,
                f"--trainer.default_root_dir={root}",
                *extra,
                callback_arg("RecordTraining", folder=str(root / "record")),
            ]
        )
        ckpt = torch.load(run_dir(root) / "checkpoints" / "last.ckpt", weights_only=False)
        runs[name] = ckpt, read_record(root / "record"), [(p.step, p.value) for p in read_scalars(root)["train/loss"]]
    (straight, straight_steps, straight_loss), (resumed, resumed_steps, resumed_loss) = (
        runs["straight"],
        runs["resumed"],
    )
    assert straight["global_step"] == resumed["global_step"] == 8
    for rank in range(processes):
        assert [s.step for s in resumed_steps[rank]] == [6, 7]
        assert [s.rows for s in resumed_steps[rank]] == [s.rows for s in straight_steps[rank][6:]]
    assert len(straight_loss) == 2 and resumed_loss == straight_loss[1:]
    assert_same_state(straight, resumed)


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
        cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "exp2_sgd.yaml"),
                "--model.optimizer.init_args.lr=1000",
                "--trainer.max_epochs=2",
                f"--trainer.default_root_dir={tmp_path}",
                "--progress_bar.refresh_rate=0",
                "--trainer.enable_model_summary=false",
                "--data.init_args.n_samples=2000",
            ]
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "SGD" in err and "epoch 0" in err and "Traceback" not in err


def test_nan_keeps_the_last_good_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    poison = callback_arg("PoisonAtEpoch", epoch=2)
    with pytest.raises(SystemExit) as exc:
        cli_main(fit_args("expsav", tmp_path, 5, poison))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "ExpSAV" in err and "epoch 2" in err and "last.ckpt" in err
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert all(
        torch.isfinite(torch.as_tensor(v)).all()
        for s in ckpt["optimizer_states"][0]["state"].values()
        for v in s.values()
    )


@pytest.mark.parametrize("method", METHODS)
def test_steps_per_call_changes_nothing_but_the_calls(method: str, tmp_path: Path) -> None:
    """Several mini-batches per training_step call (data.steps_per_call) take the same steps in the same order, and
    trainer.max_steps stops inside a call."""
    runs = {}
    for k in (1, 3):
        for max_steps in (-1, 5):
            cli = cli_main(
                fit_args(
                    method,
                    tmp_path / f"{k}_{max_steps}",
                    2,
                    f"--data.init_args.steps_per_call={k}",
                    f"--trainer.max_steps={max_steps}",
                    "--data.init_args.batch_size=64",
                    "--trainer.logger=false",
                )
            )
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
