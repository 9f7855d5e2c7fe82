"""Runs started at once into one ``default_root_dir`` each get their own ``version_N`` folder."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from support import CONFIGS, QUIET, subprocess_env

from gf_lightning.run_folder import claim_version, run_name


def _claim(args: tuple[str, object]) -> int:
    root, barrier = args
    barrier.wait()  # every process tries at the same moment
    return claim_version(root)


def test_claims_at_the_same_moment_get_distinct_folders(tmp_path: Path) -> None:
    """Eight processes released together: eight distinct versions, 0 … 7. Breakage: choosing N by listing the folder
    first and creating it afterwards (what the loggers do) — several processes then return the same N."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(8)
        with ctx.Pool(8) as pool:
            versions = pool.map(_claim, [(str(tmp_path), barrier)] * 8)
    assert sorted(versions) == list(range(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"version_{v}" for v in range(8))


def test_runs_started_together_keep_their_own_config_and_events(tmp_path: Path) -> None:
    """Three ``python -m gf_lightning fit`` processes into one root, started together: three folders, each with the
    config of its own run (they differ in lr) and its own TensorBoard events."""
    lrs = ["0.01", "0.02", "0.03"]
    procs = [subprocess.Popen([sys.executable, "-m", "gf_lightning", "fit", "--config", str(CONFIGS / "exp3_sgd.yaml"),
                               "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", *QUIET,
                               f"--model.optimizer.init_args.lr={lr}"], cwd=tmp_path, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for lr in lrs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    folders = sorted((tmp_path / "lightning_logs" / "exp3" / "sgd").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1", "version_2"]
    seen = set()
    for folder in folders:
        config = (folder / "config.yaml").read_text()
        seen |= {lr for lr in lrs if f"lr: {lr}" in config}
        assert len(list(folder.glob("events.out.tfevents*"))) == 1
        assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert seen == set(lrs)


@pytest.mark.parametrize("name", ["..", ".", "../../x y", "/etc", "a/../../b", "..\\..", "~root", ""])
def test_a_run_name_never_leaves_its_experiment_folder(name: str, tmp_path: Path) -> None:
    """``--experiment`` and ``--run_name`` become one folder each under ``lightning_logs``, whatever they hold.
    Breakage: keeping dots and slashes (``..`` climbs out of ``lightning_logs``: tried, fails)."""
    named = run_name({"experiment": name, "run_name": name})
    logs = (tmp_path / "lightning_logs").resolve()
    folder = (logs / named.path).resolve()
    assert folder.parent.parent == logs and folder.name and folder.parent.name
