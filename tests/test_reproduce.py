"""The reproduction (``scripts/reproduce.py`` over ``gf_lightning.study``): a quick pass of experiment 3 with every
method in two worker processes, checked against its own TensorBoard logs and against the same runs in this process."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import callback_arg
from support import CONFIGS, METHODS, ROOT, cli_args

from gf_lightning.cli import cli_main
from gf_lightning.study.events import read_scalars
from gf_lightning.study.methods import ENERGY_METHODS
from gf_lightning.study.reproduce import claims, figures, records, reproduction, workers
from gf_lightning.study.reproduce import in_process as runner

SHARED_SPEC = ROOT.parent / "shared" / "spec"
#: exp3 at 5 epochs a method, energies logged every 2 steps, one intra-op thread a process
QUICK = {"epochs_scale": 0.05, "log_every_n_steps": 2, "progress_every": 0, "threads": 1}

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")


@pytest.fixture(scope="module")
def exp3(tmp_path_factory) -> Path:
    """``python scripts/reproduce.py --experiment 3 --epochs-scale 0.05 --jobs 2 --threads 1``, from another folder: 5
    epochs of each of the six methods, in two worker processes (most of the time is the three processes' start-up)."""
    out = tmp_path_factory.mktemp("repro")
    args = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--experiment", "3", "--epochs-scale", "0.05",
            "--out", str(out), "--log-every-n-steps", "2", "--progress-every", "0", "--threads", "1", "--jobs", "2"]
    proc = subprocess.run(args, cwd=out, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "exp3"


def _runs(folder: Path) -> dict[str, dict]:
    return {r["method"]: r for r in json.loads((folder / "results.json").read_text())}


def _md_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text`` as a list of rows keyed by the header."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
            tables.append(rows)
    return tables


def test_every_method_ran_and_the_files_are_written(exp3):
    """Breakage: the script without its ``if __name__ == "__main__"`` guard: each worker process starts by importing the
    script again (spawn), which then starts a study of its own and dies, and every run is recorded as an error (tried:
    fails)."""
    runs = _runs(exp3)
    assert list(runs) == METHODS
    for method, run in runs.items():
        assert run["status"] == "ok", f"{method}: {run['message']}"
        assert len(run["test_loss"]) == len(run["train_loss"]) == 5
        assert run["args"][:2] == ["--config", str(CONFIGS / f"exp3_{method}.yaml")]
    for name in ("loss.png", "energy.png", "results.md", "results.json"):
        assert (exp3 / name).stat().st_size > 0
    for method, run in runs.items():  # the final weights are kept, though not after every epoch
        assert (Path(run["log_dir"]) / "checkpoints" / "last.ckpt").is_file(), method


@pytest.mark.parametrize("name", ["loss.png", "energy.png"])
def test_figures_are_small_valid_pngs(exp3, name):
    from PIL import Image

    path = exp3 / name
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        assert img.format == "PNG"
    assert 400 <= width <= 1400 and 200 <= height <= 500, (width, height)
    assert path.stat().st_size < 250_000


def test_table_numbers_are_the_tensorboard_scalars(exp3):
    """Read every method's events back independently and compare with results.json (exactly) and results.md (as
    printed)."""
    runs = _runs(exp3)
    accuracy, cost = _md_tables((exp3 / "results.md").read_text())
    accuracy = {row["method"]: row for row in accuracy}
    cost = {row["method"]: row for row in cost}
    for method in METHODS:
        scalars = read_scalars(exp3 / method)
        val = [p.value for p in scalars["val/loss"]]
        rel = [p.value for p in scalars["val/rel_err"]]
        assert len(val) == 5
        run = runs[method]
        assert run["final_loss"] == val[-1] and run["best_loss"] == min(val)
        assert accuracy[method]["final test MSE"] == f"{val[-1]:.3e}"
        assert accuracy[method]["best test MSE"] == f"{min(val):.3e}"
        assert accuracy[method]["final rel err"] == f"{rel[-1]:.3e}"
        assert accuracy[method]["best rel err"] == f"{min(rel):.3e}"
        assert accuracy[method]["epochs"] == "5"
        hits = [i for i, v in enumerate(val, 1) if v < 1e-4]
        assert accuracy[method]["epochs to MSE < 1e-4"] == (str(hits[0]) if hits else "—")
        if method in ENERGY_METHODS:
            violations = scalars["energy/violations"][-1].value
            assert run["violations"] == violations == 0  # the schemes guarantee it
            assert cost[method]["energy violations"] == f"{violations:.0f}"
            assert len(scalars["energy/modified"]) == 10  # 20 steps, logged every 2
            rises = scalars.get("energy/restart_rises")  # SAV's seed form restarts: its rises are counted apart
            assert (rises is not None) == (method == "sav")
            assert cost[method]["restart rises"] == (f"{rises[-1].value:.0f}" if rises else "—")
        else:
            assert "energy/violations" not in scalars and cost[method]["energy violations"] == "—"
        # the seed's claims, as the claims table holds them (test_claims_are_the_seed_documents checks that table)
        assert accuracy[method]["seed: epochs to 1e-4"] == claims.claim(3, "epochs_to", method)
        assert cost[method]["seed: × SGD"] == claims.claim(3, "time", method)
    # × SGD: the median gap between consecutive train/loss events, read back here, over SGD's
    walls = {m: [p.wall for p in read_scalars(exp3 / m)["train/loss"]] for m in METHODS}
    per_epoch = {m: statistics.median(b - a for a, b in zip(w, w[1:])) for m, w in walls.items()}
    for method in METHODS:
        assert cost[method]["s/epoch (median)"] == f"{per_epoch[method]:.4f}"
        assert cost[method]["× SGD"] == f"{per_epoch[method] / per_epoch['sgd']:.2f}×"
    assert len({cost[m]["× SGD"] for m in METHODS}) > 1  # the column is not one number copied down


SEED_NAMES = {"IEQ（全Jacobian）": "ieq", "IEQ全Jacobian": "ieq", "ExpSAV": "expsav", "IEQ（自适应）": "ieq_adaptive",
              "IEQ自适应": "ieq_adaptive", "SAV": "sav", "Adam": "adam", "SGD": "sgd"}


def test_claims_are_the_seed_documents():
    """The reports' claim columns are the seed document's own tables (its §3.6.2 and §3.6.3), parsed here from
    ``../shared/spec/seed-paper.zh.md``, not copied by hand."""
    doc = SHARED_SPEC / "seed-paper.zh.md"
    if not doc.is_file():
        pytest.skip(f"the seed document is not at {doc}")
    tables = _md_tables(doc.read_text(encoding="utf-8"))
    epochs = next(t for t in tables if t and "实验1" in t[0])
    for row in epochs:
        method = SEED_NAMES[row["算法"]]
        for exp, column in ((1, "实验1"), (2, "实验2"), (3, "实验3")):
            assert claims.claim(exp, "epochs_to", method) == row[column].replace("未收敛", "not converged"), (
                exp,
                method,
            )
    mnist = next(t for t in tables if t and set(t[0]) == {"算法", "所需轮数"})
    for row in mnist:
        assert claims.claim(4, "epochs_to", SEED_NAMES[row["算法"]]) == row["所需轮数"]
    times = next(t for t in tables if t and "任务类型" in t[0])
    for row, exp in zip(times, (1, 4)):
        for name, value in row.items():
            if name != "任务类型":
                assert claims.claim(exp, "time", SEED_NAMES[name]) == value, (exp, name)


def test_every_method_started_from_the_same_weights_and_data(exp3, tmp_path):
    runs = _runs(exp3)
    for key in ("init_weights", "init_data", "init_test_loss", "init_test_metric"):
        values = {run[key] for run in runs.values()}
        assert len(values) == 1 and "" not in values, (key, values)
    assert "All 6 methods started from the same initial weights and the same data" in (exp3 / "results.md").read_text()

    # independently: the seeded model and data the SGD config builds give exactly the recorded initial test loss
    cli = cli_main(cli_args("exp3_sgd", tmp_path, subcommand=None), run=False)
    cli.datamodule.setup("fit")
    data = cli.datamodule.tensors
    with torch.no_grad():
        loss = F.mse_loss(cli.model.net(data["x_test"]), data["y_test"]).item()
    assert loss == runs["sgd"]["init_test_loss"]
    # and the first step really moved every method away from it
    assert all(run["test_loss"][0] != loss for run in runs.values())


def test_a_run_that_goes_nan_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    poison = callback_arg("PoisonAtEpoch", epoch=2)
    plain = runner.cli_args
    monkeypatch.setattr(
        runner, "cli_args", lambda spec, *a: plain(spec, *a) + ([poison] if spec.method == "sgd" else [])
    )
    settings = records.Settings(out=tmp_path, epochs_scale=0.04, progress_every=0, threads=1, jobs=1)
    reproduction.reproduce([3], ["sgd", "sav"], settings)
    runs = _runs(tmp_path / "exp3")
    assert runs["sgd"]["status"] == "nan" and runs["sgd"]["epochs_done"] == 2
    assert "non-finite" in runs["sgd"]["message"]
    assert runs["sgd"]["flag"] == "**NaN** in epoch 3" and len(runs["sgd"]["test_loss"]) == 2
    assert runs["sav"]["status"] == "ok" and len(runs["sav"]["test_loss"]) == 4
    assert "**NaN** in epoch 3" in (tmp_path / "exp3" / "results.md").read_text()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--experiment", "3", "--methods", "sgd", "nope"], ["--methods", "'nope'", "allowed:", "expsav_restart"]),
        (
            ["--experiment", "3", "--methods", "expsav_restart"],
            ["--methods expsav_restart", "experiment 3", "nothing to run"],
        ),
        (["--experiment", "3", "--epochs-scale", "nan"], ["--epochs-scale nan", "finite number > 0"]),
        (["--experiment", "3", "--epochs-scale", "0"], ["--epochs-scale 0.0", "finite number > 0"]),
    ],
)
def test_bad_input_is_one_line_before_any_work(args, words, tmp_path, capsys):
    """An unknown method, methods without a config in the experiment, a scale that is not a positive number: exit 2 and
    one line, nothing written. Breakage: "nothing to run" and exit 0; ``--epochs-scale nan`` a traceback (tried: each
    fails)."""
    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exc:
        script.main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("reproduce: error: "), err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_plan_scales_epochs_and_skips_missing_configs():
    specs, skipped = reproduction.plan_experiment(4, ["sgd", "adam", "ieq"], 0.01)
    assert [(s.method, s.epochs) for s in specs] == [("sgd", 1), ("ieq", 1)]  # 50 × 0.01 rounds to 1 (at least 1)
    assert skipped == ["adam (no config for experiment 4)"]
    specs, _ = reproduction.plan_experiment(1, ["sgd"], 0.05)
    assert specs[0].epochs == 50
    assert claims.claim(4, "time", "ieq") == "5.2×" and claims.claim(2, "final_loss", "sgd") == "—"
    assert not math.isnan(records.RunResult(3, "sgd", "", "", 5, epoch_wall=[0.0, 1.0, 3.0]).seconds_per_epoch)


def test_freeze_and_stall_definitions():
    run = records.RunResult(1, "ieq_adaptive", "", "", 10, nominal_lr=0.1)
    assert run.flag == "ok"
    run.effective_lr = [1e-3, 1e-8]  # 1e-7 × nominal
    assert run.flag == "frozen: step 1.0e-07 × nominal"
    run.effective_lr, run.train_loss = [0.1, 0.1], [2.0, 1.0] + [0.5] * 5
    assert run.flag == "ok"  # five values: only four flat epochs
    run.train_loss.append(0.5 * (1 + 1e-7))
    assert run.flag.startswith("stalled")
    run.status, run.epochs_done = "nan", 3
    assert run.flag == "**NaN** in epoch 4"


def test_energy_figure_marks_a_freeze_and_leaves_minus_infinity_out(tmp_path):
    """ExpSAV frozen from the second logged step, log r − log C then −1e13 … −∞ (exp1, exp4): the panel is drawn without
    them, the freeze is found where the effective step collapsed, and the caption says so; a run that recovers is not
    frozen."""
    from PIL import Image

    run = records.RunResult(1, "expsav", "", "", 1, energy_steps=[10, 20, 30, 40], energy_true=[1.0, 1.0, 1.0, 1.0],
                              energy=[0.9, -1e13, -1.7e38, -math.inf], effective_lr=[0.1, 1e-12, 0.0, 0.0],
                              nominal_lr=0.1, violations=0.0, log_every=10)
    assert records.collapsed_from(run) == 1 and run.stuck
    figures.plot_energy([run], tmp_path / "energy.png")
    with Image.open(tmp_path / "energy.png") as img:
        img.verify()
    assert "ExpSAV at step 20 (modified energy then −∞)" in figures.energy_caption([run])
    run.energy, run.effective_lr = [0.9, 0.5, 0.4, 0.3], [0.1, 1e-12, 1e-12, 0.1]  # a restart form that recovers
    assert records.collapsed_from(run) is None and "Frozen" not in figures.energy_caption([run])


def test_coinciding_loss_curves_are_found_from_the_data():
    def run(method, factor):
        return records.RunResult(3, method, "", "", 3, train_loss=[factor * v for v in (1.0, 0.5, 0.25)],
                                   test_loss=[factor * v for v in (2.0, 1.0, 0.5)])

    sgd, expsav, sav, adam = run("sgd", 1.0), run("expsav", 1 + 1e-7), run("sav", 1.02), run("adam", 0.5)
    ((group, worst),) = figures.coinciding([sgd, adam, sav, expsav])
    assert group == [sgd, sav, expsav] and worst == pytest.approx(0.02 / 1.02)
    caption = figures.loss_caption([sgd, adam, sav, expsav])
    assert "SGD, SAV (restart) and ExpSAV lie on one curve" in caption and "SGD and ExpSAV by 1.0e-07" in caption
    assert figures.loss_caption([sgd, adam]) == ""


def test_a_run_in_a_worker_process_gives_the_numbers_of_a_run_in_this_process(exp3, tmp_path):
    """SGD and IEQ (full) again, one after the other in this process: every curve and starting value of the fixture's
    runs (two worker processes) is bit for bit the same. Breakage: a worker that does not train a run as this process
    would (another thread count, settings of its own; tried: a worker that drops ``--trainer.log_every_n_steps``)."""
    reproduction.reproduce([3], ["sgd", "ieq"], records.Settings(out=tmp_path, jobs=1, **QUICK))
    here, there = _runs(tmp_path / "exp3"), _runs(exp3)
    for method in ("sgd", "ieq"):
        for key in ("train_loss", "test_loss", "test_rel_err", "energy_steps", "energy", "energy_true", "effective_lr",
                    "violations", "init_weights", "init_data", "init_test_loss", "init_test_metric", "status"):
            assert repr(here[method][key]) == repr(there[method][key]), (method, key)  # NaN as NaN
    assert "each run, in this process:" in (tmp_path / "exp3" / "results.md").read_text()
    assert "each run, in one of 2 worker processes:" in (exp3 / "results.md").read_text()


def test_the_longest_runs_start_first():
    """The seed's four experiments: the runs that take minutes (exp1's six, 1000 epochs each, 75–300 s on one core;
    exp4's IEQ (full), ~4.5 s an epoch, 225 s) are queued before every other (each ≤ 25 s), so that two workers end
    within a short run of each other. Breakage: the plan's order, or an estimate from epochs and steps alone, which puts
    exp4's IEQ (1 600 steps) after exp2's runs and leaves it running alone at the end (tried: fails)."""
    plan = [spec for exp in (1, 2, 3, 4) for spec in reproduction.plan_experiment(exp, METHODS, 1.0)[0]]
    order = [(plan[i].experiment, plan[i].method) for i in workers.longest_first(plan)]
    long = {(1, method) for method in METHODS} | {(4, "ieq")}
    assert set(order[: len(long)]) == long, order
    assert workers.default_jobs(None) == 1 and workers.default_jobs(1) == workers.usable_cores()
    assert workers.default_jobs(workers.usable_cores() + 1) == 1
