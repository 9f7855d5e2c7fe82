"""``python -m gf_lightning {fit,validate,test}``: runs, logs, learns; the trainer's switches. (Bad settings:
test_bad_inputs.py.)"""

from __future__ import annotations

import copy

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, QUIET
from gf_lightning.cli import cli_main

EXP1_SGD = str(CONFIGS / "exp1_sgd.yaml")

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")


def _small(tmp_path: Path, *extra: str) -> list[str]:
    """exp1 with 500 samples (400 train), one epoch unless ``extra`` says otherwise (``extra`` comes last and wins)."""
    base = [f"--trainer.default_root_dir={tmp_path}", *QUIET, "--data.init_args.n_samples=500", "--trainer.max_epochs=1"]
    return [*base, *extra]


@pytest.fixture
def one_thread():
    """The full-data runs on one intra-op thread: on 2 shared cores, two OpenMP threads that wait on each other under load
    made a step several times slower (measured: 2-epoch exp1 run 33 s with 2 threads against 19 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --------------------------------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------------------------------
def test_fit_in_process(tmp_path):
    cli = cli_main(["fit", "--config", EXP1_SGD, *_small(tmp_path, "--trainer.max_epochs=2")])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * math.ceil(400 / 256)
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "val/loss", "val/mse", "val/rel_err"):
        assert torch.isfinite(metrics[name]), name
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == tmp_path / "lightning_logs" / "version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["data"]["init_args"]["n_samples"] == 500
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()  # the forced ModelCheckpoint (save_last)
    assert sorted(p.name for p in (log_dir / "checkpoints").glob("epoch*.ckpt")) == ["epoch0001.ckpt"]


def test_fit_subprocess_full_data_logs_scalars_and_config(tmp_path, one_thread):
    """The command as a user types it (from a folder outside the repository), on the full exp1 data; a second identical
    run in the same root works too."""
    args = ["fit", "--config", EXP1_SGD, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}"]
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "gf_lightning", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = tmp_path / "lightning_logs" / "version_0"
    scalars = _scalars(log_dir)
    assert len(scalars.get("train/loss", [])) == 2, sorted(scalars)
    assert len(scalars.get("val/loss", [])) == 2, sorted(scalars)
    assert all(math.isfinite(v) for v in scalars["train/loss"] + scalars["val/loss"])
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["data"]["class_path"] == "gf_lightning.data.SinCosRegression"
    assert saved["trainer"]["max_epochs"] == 2
    assert saved["model"]["optimizer"]["class_path"] == "torch.optim.SGD"
    # the same command again, in the same root (in-process: the second start-up would cost another ~10 s)
    cli = cli_main(args)
    assert cli.trainer.current_epoch == 2
    assert Path(cli.trainer.log_dir) == tmp_path / "lightning_logs" / "version_1"
    assert (tmp_path / "lightning_logs" / "version_1" / "config.yaml").is_file()
    assert len(_scalars(tmp_path / "lightning_logs" / "version_1").get("val/loss", [])) == 2


def test_print_config(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", EXP1_SGD, "--print_config"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: gf_lightning.data.SinCosRegression" in out
    cfg = yaml.safe_load(out)
    assert cfg["model"]["optimizer"]["init_args"]["lr"] == 0.01
    assert cfg["checkpoint"]["save_last"] is True and cfg["progress_bar"]["refresh_rate"] == 10


def test_validate_and_test_subcommands(tmp_path):
    cli = cli_main(["validate", "--config", EXP1_SGD, *_small(tmp_path)])
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"val/loss", "val/mse", "val/rel_err"} <= set(val) and math.isfinite(val["val/mse"])
    assert val["val/loss"] == pytest.approx(val["val/mse"])
    cli = cli_main(["test", "--config", EXP1_SGD, *_small(tmp_path)])
    test = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"test/loss", "test/mse", "test/rel_err"} <= set(test)
    # the same seed, the same untrained network, the same held-out split: the same number
    assert test["test/mse"] == pytest.approx(val["val/mse"], rel=1e-6)


def test_validate_then_fit_on_one_module(tmp_path):
    """A validate run before fit, on the same model (a baseline before training), must not break fit's validation.

    ``trainer.validate`` runs under ``torch.inference_mode``; metric state reset there becomes inference tensors, which
    fit's validation (under ``no_grad``) may not update in place."""
    cli = cli_main(["--config", EXP1_SGD, *_small(tmp_path)], run=False)
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]["val/mse"]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = float(cli.trainer.callback_metrics["val/mse"])
    assert math.isfinite(after) and after != before


@pytest.mark.slow
def test_sgd_20_epochs_learns_exp1(tmp_path, one_thread):
    """exp1 with the seed's SGD (lr 0.01, batch 256) on the full data for 20 epochs takes exactly the steps of a plain
    PyTorch loop — ``torch.optim.SGD`` on the mean squared error over the data module's batches, epoch by epoch, from the
    same initial weights — to float32 rounding, and the held-out MSE falls below its start and below the best constant
    predictor (the training mean).

    The issue behind this test asked for a 5× fall in 20 epochs. With the fan-in initialisation SPEC §1 asks for, the
    network starts at the constant predictor's error (≈ 0.95, the targets' variance) and exact SGD falls ≈ 1.05× in 20
    epochs (≈ 1.24× in 100, 5× in 1000: docs/results.md); a 5× fall in 20 epochs presumes the public implementation's
    mis-scaled init (initial MSE 8–48, SPEC §1). So the test pins the training loop to SGD itself rather than to a
    threshold any gradient-like step would pass. Breakage: a module that stepped twice per mini-batch, or skipped the
    last batch of a call, fails the comparison."""
    common = ["--config", EXP1_SGD, f"--trainer.default_root_dir={tmp_path}", *QUIET, "--trainer.logger=false"]
    start_cli = cli_main(["validate", *common])
    start = float(start_cli.trainer.callback_metrics["val/mse"])
    cli = cli_main([*common, "--trainer.max_epochs=20", "--trainer.num_sanity_val_steps=0"], run=False)
    assert torch.equal(start_cli.model.net.W, cli.model.net.W)  # the start was measured on this very network
    hand = copy.deepcopy(cli.model.net)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.current_epoch == 20

    sgd = torch.optim.SGD(hand.parameters(), lr=0.01)
    loader = cli.datamodule.train_dataloader()
    for epoch in range(20):
        loader.sampler.set_epoch(epoch)
        for call in loader:
            for x, y in call if isinstance(call, list) else [call]:
                sgd.zero_grad()
                torch.nn.functional.mse_loss(hand(x), y).backward()
                sgd.step()
    for a, b in zip(cli.model.net.parameters(), hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    end = float(cli.trainer.callback_metrics["val/mse"])
    t = cli.datamodule.tensors
    constant = float((t["y_test"] - t["y_train"].mean()).square().mean())
    print(f"exp1 SGD 20 epochs: held-out MSE {start:.4g} -> {end:.4g} (factor {start / end:.3g}); constant predictor {constant:.4g}")
    assert end < start and end < constant


@pytest.mark.parametrize(
    "setting", ["--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"], ids=["checkpointing", "bar"]
)
def test_trainer_switches_turn_off_the_forced_callbacks(tmp_path, setting):
    """The CLI adds a ModelCheckpoint and a TQDMProgressBar; the Trainer's own off-switches must still work (Lightning
    refuses ``enable_checkpointing=False`` beside a ModelCheckpoint, with a traceback)."""
    cli = cli_main(["fit", "--config", EXP1_SGD, *_small(tmp_path, setting)])
    assert cli.trainer.current_epoch == 1
    if "checkpointing" in setting:
        assert not list(tmp_path.rglob("*.ckpt"))
    else:
        assert cli.trainer.progress_bar_callback is None
