"""MNIST (8000/2000): every energy-stable method at its documented setting beyond the seed's reaches 93 % on the
held-out split (docs/results.md › Beyond the seed's settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

# config → (epochs, accuracy the docs claim after that many epochs). IEQ (full) at Δt = 0.02 takes ~5 s an epoch here
# (its (Bk)³ solve), so 50 epochs (94.90 %) would take minutes; docs/results.md states it passes 93 % by epoch 2.
CLAIMS = {
    "exp4_sav_large_step": (50, 0.93),
    "exp4_expsav_restart": (50, 0.93),
    "exp4_ieq_adaptive_restart": (50, 0.93),
    "exp4_ieq_small_step": (2, 0.93),
}


@pytest.mark.parametrize("config", CLAIMS)
def test_energy_method_reaches_93_percent(config: str, cli_run, mnist_dir: Path) -> None:
    epochs, accuracy = CLAIMS[config]
    cli = cli_run(config, f"--data.init_args.data_dir={mnist_dir}", "--data.init_args.download=false",
                  "--trainer.logger=false", "--checkpoint.save_last=false", "--checkpoint.save_top_k=0", epochs=epochs)
    assert cli.trainer.current_epoch == epochs
    assert float(cli.trainer.callback_metrics["val/acc"]) >= accuracy
