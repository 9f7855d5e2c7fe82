"""What the study's reports say about runs they did not run: a paper figure's table over seeds, and a sweep's report
written again from its ``results.json`` alone (records judged by today's rule, paths relative to the report's
folder)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from support import ROOT

from gf_lightning.study.paper.figures import FIGURES, Run, table
from gf_lightning.study.sweep.grid import Plan
from gf_lightning.study.sweep.records import RunRecord
from gf_lightning.study.sweep.report import portable, rewrite, shown_path


def _record(name: str, status: str, loss: list[float], test: list[float]) -> RunRecord:
    return RunRecord(name, "sgd", {}, 0.1, None, [], status=status, exit_code=0 if status != "diverged" else 1,
                     init_train_loss=1.0, train_loss=loss, val={"val/loss": test}, wall_s=10.0)


def test_a_figures_table_is_the_mean_and_sd_over_the_seeds_that_did_not_diverge(tmp_path) -> None:
    runs = [Run("SAV, lr 0.5", _record("a", "trained", [0.9, 0.5], [0.6, 0.4]), tmp_path),
            Run("SAV, lr 0.5", _record("b", "trained", [0.9, 0.3], [0.5, 0.2]), tmp_path),
            Run("SAV, lr 0.5", _record("c", "diverged", [0.9], [math.nan]), tmp_path),
            Run("Euler (SGD), lr 1", _record("d", "unstable", [40.0, 0.2], [0.3, 0.25]), tmp_path)]
    rows = table(FIGURES["fig3"], runs).splitlines()
    assert len(rows) == 4  # header, rule, one row per method and setting
    sav = rows[2].split(" | ")
    assert sav[1] == "trained 2/3, diverged 1/3"
    assert sav[2] == f"0.4 ± {statistics.stdev([0.5, 0.3]):.2g}"  # final training loss over the two finite seeds
    assert sav[3] == f"0.3 ± {statistics.stdev([0.4, 0.2]):.2g}" and sav[4] == sav[3]  # final and best test loss
    assert rows[3].split(" | ")[1] == "unstable"


def test_a_sweep_report_is_written_again_from_its_results_alone(tmp_path) -> None:
    """The committed exp3 sweep: its SGD steps that blew up (peak training loss 1.7e3 … 1.2e8 × the start) were
    "trained" when it was written; from its results.json alone they are unstable, and no path names the machine."""
    source = ROOT / "docs" / "results" / "sweeps" / "exp3" / "results.json"
    paths = rewrite(source, tmp_path / "exp3")
    data = json.loads(paths["json"].read_text())
    sgd = {c["lr"]: c["status"] for c in data["cells"] if c["method"] == "sgd"}
    assert sgd[100.0] == "unstable" and sgd[0.1] == "trained"
    report = paths["markdown"].read_text()
    assert "/work/" not in report and str(tmp_path) not in report
    # the runs' folders where they ran (the sweep's --out, sweeps/exp3), relative to the repository
    assert "--trainer.default_root_dir=sweeps/exp3/runs/sgd__lr=" in report


def test_paths_are_shown_relative_to_the_report_or_the_repository(tmp_path) -> None:
    plan = Plan(str(tmp_path / "repo" / "configs" / "exp1_sgd.yaml"), ["sgd"], [], str(tmp_path / "out"))
    assert shown_path(plan, tmp_path / "out" / "runs" / "x") == "runs/x"
    assert shown_path(plan, tmp_path / "repo" / "configs" / "exp1_sgd.yaml") == "configs/exp1_sgd.yaml"
    assert shown_path(plan, tmp_path / "shared" / "data") == "../shared/data"
    command = f"python -m gf_lightning fit --config {tmp_path}/repo/configs/exp1_sgd.yaml --x.dir={tmp_path}/out/runs/a"
    assert portable(plan, command) == "python -m gf_lightning fit --config configs/exp1_sgd.yaml --x.dir=runs/a"
    # the sweep's own command line: its --out relative to the repository, never "."
    sweep = f"python scripts/sweep.py --config {tmp_path}/repo/configs/exp1_sgd.yaml --out {tmp_path}/out"
    assert portable(plan, sweep, in_out=False) == "python scripts/sweep.py --config configs/exp1_sgd.yaml --out ../out"
    assert Path(shown_path(plan, "relative/already")).as_posix() == "relative/already"


SWEEPS = ROOT / "docs" / "results" / "sweeps"


@pytest.mark.parametrize("name", sorted(p.parent.name for p in SWEEPS.glob("*/results.json")))
def test_no_committed_sweep_report_names_the_machine(name: str, tmp_path) -> None:
    """Every committed sweep written again from its results.json: no absolute path of the machine it ran on, in the
    command that produced it or in any run's command (the paper sweeps ran outside the repository)."""
    paths = rewrite(SWEEPS / name / "results.json", tmp_path / name, with_figure=False)
    report = paths["markdown"].read_text()
    assert "/work/" not in report and str(tmp_path) not in report and str(ROOT) not in report
