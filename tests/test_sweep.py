"""``scripts/sweep.py`` and ``gf_lightning.study``'s sweep: a grid of methods × step sizes run through the CLI, read
back, summarised over seeds and reported; its SLURM form; gradient descent's stability limit from the Hessian."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import CONFIGS, ROOT

from gf_lightning.study.methods import LABELS as STUDY_LABELS
from gf_lightning.study.methods import METHODS
from gf_lightning.study.methods import label as grid_label
from gf_lightning.study.methods import label as study_label
from gf_lightning.study.sweep import cells as sweep_cells
from gf_lightning.study.sweep import records as sweep_records
from gf_lightning.study.sweep import runner as sweep_runner
from gf_lightning.study.sweep import stability
from gf_lightning.study.sweep.grid import LR_KEY, SEED_KEY, Plan

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")

_spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

#: exp3 shrunk: 160 training samples in batches of 64, 32 hidden units, 2 epochs (a run: the CLI's start-up and ~0.1 s)
TINY = ["--grid", "data.init_args.n_samples=200", "data.init_args.batch_size=64", "model.net.init_args.m=32",
        "--max-epochs", "2", "--no-hessian"]
#: a step SGD trains with, and one far beyond its stability limit (2/λ_max ≈ 0.2 here) that overflows float32 at the
#: second step (at 1e5 … 1e10 the first step can switch every ReLU unit off instead, and the net trains to a constant)
GOOD_LR, HUGE_LR = "0.1", "1e30"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """``sweep.py --methods sgd --lr 0.1,1e30`` on tiny exp3: two runs, at once."""
    out = tmp_path_factory.mktemp("sweep")
    argv = ["--config", str(CONFIGS / "exp3_sgd.yaml"), "--methods", "sgd", "--lr", f"{GOOD_LR},{HUGE_LR}", *TINY,
            "--jobs", "2", "--out", str(out)]
    assert script.main(argv) == 0
    return out


def _records(out: Path) -> dict[str, dict]:
    return {r["settings"][LR_KEY]: r for r in json.loads((out / "results.json").read_text())["records"]}


def test_a_huge_sgd_step_is_diverged_and_a_small_one_trained(swept):
    """SGD at 1e30 stops non-finite and is recorded ``diverged``; at 0.1 it trains; the report's observed limit is 0.1,
    with the divergence above it. Breakage: reading a failed run as an error (exit code only), or its last finite
    metrics as a result."""
    runs = _records(swept)
    assert runs[HUGE_LR]["status"] == "diverged", runs[HUGE_LR]["message"]
    assert "non-finite" in runs[HUGE_LR]["message"]
    assert runs[GOOD_LR]["status"] == "trained", runs[GOOD_LR]["message"]
    assert len(runs[GOOD_LR]["train_loss"]) == 2 and runs[GOOD_LR]["train_loss"][-1] < runs[GOOD_LR]["init_train_loss"]
    text = (swept / "sweep.md").read_text()
    assert (
        "largest stable SGD step observed (every seed trained): Δt = 0.1; above it SGD diverged at Δt = 1e+30" in text
    )
    (cell,) = [c for c in json.loads((swept / "results.json").read_text())["cells"] if c["lr"] == float(HUGE_LR)]
    assert cell["status"] == "diverged" and cell["final"] is None


def test_the_table_and_figure_are_written(swept):
    """``sweep.md`` has the per-method table (largest Δt that trains, best Δt, its metric) and the commands;
    ``sweep.png`` is a PNG. Breakage: a report that drops the method's row, or a figure never saved."""
    png = swept / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = (swept / "sweep.md").read_text()
    header = (
        "| method | Δt tried | largest Δt that trains | best Δt | final test loss at best Δt | best test loss there |"
    )
    assert header in text
    row = next(line for line in text.splitlines() if line.startswith("| SGD |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    final = _records(swept)[GOOD_LR]["val"]["val/loss"][-1]
    assert cells[1:5] == ["0.1, 1e+30", "0.1", "0.1", f"{final:.3g}"]
    assert text.count("python -m gf_lightning fit --config") >= 3  # the example and both points' commands


def test_a_rerun_skips_the_points_already_done(swept, capsys):
    """The same sweep again runs nothing: every point's folder keeps its run (its start time, its record) and no new
    folder appears. Breakage: deciding "done" by the folder's existence alone or not at all (the runs are redone)."""
    runs = swept / "runs"
    before = {p: p.read_text() for p in runs.glob("*/started")}
    folders = sorted(p.relative_to(runs) for p in runs.rglob("version_*"))
    argv = ["--config", str(CONFIGS / "exp3_sgd.yaml"), "--methods", "sgd", "--lr", f"{GOOD_LR},{HUGE_LR}", *TINY,
            "--jobs", "2", "--out", str(swept)]
    assert script.main(argv) == 0
    assert "2 done before (skipped), 0 to run" in capsys.readouterr().err
    assert {p: p.read_text() for p in runs.glob("*/started")} == before and len(before) == 2
    assert sorted(p.relative_to(runs) for p in runs.rglob("version_*")) == folders


def _dense_lambda_max(loss_fn, params) -> float:
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]

    def of_flat(w):
        pieces, i = [], 0
        for s in shapes:
            n = math.prod(s)
            pieces.append(w[i:i + n].reshape(s))
            i += n
        return loss_fn(pieces)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(of_flat, flat, vectorize=True).double()).max().item()


def test_lambda_max_matches_a_dense_eigendecomposition():
    """Power iteration with Hessian-vector products gives the Hessian's largest eigenvalue of a small network's loss, as
    the dense Hessian's eigen-decomposition does (float64, 1e-6). Breakage: a wrong product (a gradient without its
    graph, a missing term), or stopping before convergence."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]

    def loss_of(pieces):
        out = torch.func.functional_call(net, dict(zip(names, pieces)), (x,))
        return torch.nn.functional.mse_loss(out, y)

    dense = _dense_lambda_max(loss_of, params)
    found = stability.lambda_max(lambda: torch.nn.functional.mse_loss(net(x), y), params, iters=2000, tol=1e-12)
    assert found.converged
    assert found.value == pytest.approx(dense, rel=1e-6)


def test_lambda_max_is_the_largest_eigenvalue_not_the_largest_in_magnitude():
    """A loss that curves down (−3) more than up (+1): λ_max is +1, the limit of gradient descent, not −3. Breakage:
    plain power iteration, which returns the eigenvalue of largest magnitude."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    a = torch.tensor([1.0, -3.0, 0.25], dtype=torch.float64)
    found = stability.lambda_max(lambda: 0.5 * (a * w * w).sum(), [w], iters=5000, tol=1e-12)
    assert found.value == pytest.approx(1.0, rel=1e-6)


def test_the_initial_state_is_the_runs_start_and_gives_the_sgd_limit(monkeypatch):
    """The point's model and data, built in-process from its command line: the training loss at the initial weights is
    the MSE over all 160 training samples, λ_max the top eigenvalue of that loss's dense Hessian, and the SGD limit
    2/(s·λ_max) for a model that feeds the optimizer s·∇L (here s = 8). Breakage: the loss on a subset or with another
    objective, a limit that ignores the gradient scale (particle time: s = m)."""
    from gf_lightning.module import GradientFlowModule

    monkeypatch.setattr(GradientFlowModule, "gradient_scale", property(lambda self: 8.0), raising=False)
    plan = Plan.build(CONFIGS / "exp3_sgd.yaml", ["sgd"], "0.1", TINY[1:4], out="/tmp/unused")
    (point,) = plan.points()
    state = stability.initial_state(list(point.args), [], samples=0, iters=500, tol=1e-7)
    cli = stability.build(list(point.args), "test")
    cli.datamodule.setup("fit")
    x, y = cli.datamodule.tensors["x_train"], cli.datamodule.tensors["y_train"]
    net = cli.model.net
    assert len(x) == 160 and state.samples == 160 and state.converged
    assert state.train_loss == pytest.approx(torch.nn.functional.mse_loss(net(x), y).item(), rel=1e-5)
    names = [n for n, _ in net.named_parameters()]

    def loss_of(pieces):
        return torch.nn.functional.mse_loss(torch.func.functional_call(net, dict(zip(names, pieces)), (x,)), y)

    assert state.lambda_max == pytest.approx(_dense_lambda_max(loss_of, list(net.parameters())), rel=1e-4)
    assert state.gradient_scale == 8.0
    assert state.sgd_limit == pytest.approx(2.0 / (8.0 * state.lambda_max))


def test_a_method_replaces_the_configs_optimizer_entirely():
    """From exp3's ExpSAV config (C = 1, λ = 0), ``sav`` is SAV with SAV's own C = 100, λ = 4 (not the config's), the
    point's Δt, and ``--method-args eta=0.9``; ``config`` keeps the config's ExpSAV. Breakage: overriding the class
    alone (jsonargparse then keeps the config's C and lam)."""
    plan = Plan.build(CONFIGS / "exp3_expsav.yaml", ["sav", "sgd", "config"], "0.5", method_args=["eta=0.9"],
                      out="/tmp/unused")
    probe = [torch.nn.Parameter(torch.zeros(1))]
    built = {p.method: stability.build(list(p.args), p.name).model.optimizer(probe) for p in plan.points()}
    sav = built["sav"].defaults
    assert type(built["sav"]).__name__ == "SAV"
    assert (sav["lr"], sav["C"], sav["lam"], sav["eta"], sav["variant"]) == (0.5, 100.0, 4.0, 0.9, "seed")
    assert type(built["sgd"]).__name__ == "SGD" and built["sgd"].defaults["lr"] == 0.5
    cfg = built["config"].defaults
    assert type(built["config"]).__name__ == "ExpSAV" and (cfg["lr"], cfg["C"], cfg["lam"]) == (0.5, 1.0, 0.0)


#: the methods whose optimizer takes a closure that returns the loss (IEQ full recomputes its residual every batch, and
#: says so in the README)
SCALAR_METHODS = [m for m, spec in METHODS.items() if spec.class_path.startswith("gf_lightning.optim.") and m != "ieq"]


@pytest.mark.parametrize("method", SCALAR_METHODS)
def test_a_method_whose_energy_may_rise_between_steps_is_labelled_a_restart(method):
    """Six steps of the method on a loss that jumps up by 2 between steps: the logged modified energy rises between
    steps exactly for the restart forms, and exactly those carry "restart" (or "Res") in their label — the sweep's and
    the reproduction's alike. Breakage: SAV's default (``variant: seed``, which resets ``r`` every step) labelled plain
    "SAV", read as a scheme whose curve never rises (tried: fails)."""
    init = METHODS[method].optimizer(0.1)
    module, _, name = init["class_path"].rpartition(".")
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))
    opt = getattr(importlib.import_module(module), name)([w], **init["init_args"])
    energies = []
    for k in range(6):
        def closure(k=k):
            opt.zero_grad()
            loss = (w**2).sum() + 2.0 * k
            loss.backward()
            return loss

        opt.step(closure)
        energies.append(float(opt.stats["energy/modified"]))
    rose = any(b > a for a, b in zip(energies, energies[1:]))
    text = grid_label(method)
    assert rose == ("restart" in text or "Res" in text), (text, energies)
    if method in STUDY_LABELS:
        assert study_label(method) == text


def test_the_grid_is_the_cartesian_product_with_one_folder_per_point():
    """``--grid`` axes (any key, log-spaced or listed values) times the methods and seeds: every combination once, each
    with its own folder and its values in its command line. Breakage: a product that drops an axis, or folder names that
    collide (two points would share a run)."""
    plan = Plan.build(CONFIGS / "exp3_sgd.yaml", ["sgd", "adam"], "1e-3:1e-1:3",
                      ["model.net.init=fan_in,kaiming", "model.optimizer.weight_decay=0,0.1"], ["0", "1"], out="/tmp/x")
    points = plan.points()
    assert len(points) == 2 * 3 * 2 * 2 * 2
    assert len({p.name for p in points}) == len(points)
    assert len({p.settings for p in points if p.method == "sgd"}) == 24
    assert [a.values for a in plan.axes if a.key == LR_KEY] == [("0.001", "0.01", "0.1")]
    for p in points:
        assert f"--model.net.init_args.init={p.values['model.net.init_args.init']}" in p.args
        assert f"--{SEED_KEY}={p.seed}" in p.args
        assert f'"lr": {p.lr}' in next(a for a in p.args if a.startswith("--model.optimizer="))


def _record(point, status, metric, seconds=None, train=(0.5,)):
    return sweep_records.RunRecord(point.name, point.method, point.values, point.lr, point.seed, list(point.args),
                                   status=status, train_loss=list(train), val={"val/loss": list(metric)},
                           val_seconds=list(seconds or range(1, len(metric) + 1)), init_train_loss=1.0)


def test_the_report_gives_mean_and_spread_over_seeds():
    """Three seeds per step: the cell's final metric is their mean ± sample deviation; a step where one seed diverged is
    diverged, not trained; largest Δt that trains and best Δt follow. Breakage: a summary over the last seed only, or
    one that counts a step as training when a seed diverged."""
    plan = Plan.build(CONFIGS / "exp3_sgd.yaml", ["sgd"], "0.01,0.1,1", seeds=["0", "1", "2"], out="/tmp/x")
    points = plan.points()
    finals = {"0.01": [0.3, 0.5, 0.4], "0.1": [0.1, 0.2, 0.3], "1": [0.05, 0.05, math.nan]}
    records = {}
    for p in points:
        v = finals[p.values[LR_KEY]][int(p.seed)]
        status = "diverged" if v != v else "trained"
        records[p.name] = _record(p, status, [0.9, v], seconds=[1.0, 2.0 + int(p.seed)])
    cells = {c.lr: c for c in sweep_cells.cells(points, records, "val/loss", target=0.45)}
    assert cells[0.1].final.mean == pytest.approx(0.2) and cells[0.1].final.sd == pytest.approx(0.1)
    assert cells[0.1].final.n == 3 and cells[0.1].status == "trained"
    assert cells[1.0].status == "diverged" and cells[1.0].counts == {"trained": 2, "diverged": 1}
    assert cells[0.01].seconds is None  # seed 1 ends at 0.5: not every seed reached 0.45
    (summary,) = sweep_cells.summaries(list(cells.values()), "val/loss")
    assert (summary.largest_trained, summary.best_lr) == (0.1, 0.1)
    assert summary.fastest.mean == pytest.approx(3.0) and summary.fastest_lr == 0.1


def test_a_step_that_ends_worse_on_held_out_data_than_it_started_does_not_train():
    """Adam at Δt = 1 on exp3 learns the training set and ends with a held-out loss 10⁵ times the untrained network's:
    it is *worse*, not *trains*, and the largest Δt that trains stops below it. Breakage: judging by the training loss
    alone."""
    plan = Plan.build(CONFIGS / "exp3_sgd.yaml", ["adam"], "0.01,1", out="/tmp/x")
    points = plan.points()
    finals = {0.01: 0.001, 1.0: 1500.0}
    records = {p.name: _record(p, "trained", [0.5, finals[p.lr]]) for p in points}
    initial = {p.name: 0.01 for p in points}  # the untrained network's held-out loss
    cells = {c.lr: c for c in sweep_cells.cells(points, records, "val/loss", target=None, initial=initial)}
    assert (cells[0.01].status, cells[1.0].status) == ("trained", "worse")
    assert "worse than at the start" in cells[1.0].outcome
    (summary,) = sweep_cells.summaries(list(cells.values()), "val/loss")
    assert summary.largest_trained == 0.01
    better = {c.lr: c for c in sweep_cells.cells(points, {p.name: _record(p, "trained", [0.5, 0.05]) for p in points},
                                                     "val/loss", target=None, initial={p.name: 0.1 for p in points})}
    assert all(c.status == "trained" for c in better.values())  # better than the start: trains


@pytest.mark.parametrize("case", ["trained", "frozen", "diverged", "error"])
def test_a_finished_run_is_read_back_as_trained_frozen_diverged_or_error(case, tmp_path):
    """The outcome from the folder a run leaves: exit 0 and a training loss 10 % below the initial one: trained; 0.5 %
    below: frozen; exit 1 with the CLI's non-finite line: diverged; exit 2: error, with the CLI's line. Breakage: frozen
    judged on the held-out metric, or every non-zero exit taken for a divergence."""
    from torch.utils.tensorboard import SummaryWriter

    plan = Plan.build(CONFIGS / "exp3_sgd.yaml", ["sgd"], "0.1", out=tmp_path)
    (point,) = plan.points()
    folder = sweep_runner.prepare(point)
    logs = folder / "lightning_logs" / "exp3" / "sgd" / "version_0"
    writer = SummaryWriter(str(logs))
    final = {"trained": 0.9, "frozen": 0.995}.get(case, 0.95)
    for step, (train, val) in enumerate([(0.99, 0.5), (final, 0.4)]):
        writer.add_scalar("train/loss", train, step)
        writer.add_scalar("val/loss", val, step)
    writer.close()
    code, line = {
        "diverged": (1, "gf_lightning: training went non-finite (loss = nan) with SGD at epoch 1, step 7"),
        "error": (2, "gf_lightning: error: model.optimizer.init_args.lr must be > 0; got -1"),
    }.get(case, (0, ""))
    (folder / "log.txt").write_text(f"Seed set to 0\n{line}\n")
    (folder / "started").write_text("0\n")
    (folder / "exit_code").write_text(f"{code}\n")
    record = sweep_records.collect(point, init_train_loss=1.0)
    assert record.status == case
    if line:
        assert record.message == line
    assert record.val["val/loss"] == pytest.approx([0.5, 0.4])


def test_the_slurm_script_parses_and_runs_every_point_once(tmp_path, capsys):
    """``--slurm`` writes a job array (bash syntax checked with ``bash -n``) with one task per point, each the point's
    exact command in the point's folder, every point once; one task run as SLURM would, then ``--report-only``, gives
    that point's outcome by the same report code. Breakage: a task list that repeats or drops a point, unquoted JSON in
    a command, or a task whose run the report cannot read."""
    out = tmp_path / "sw"
    argv = [
        "--config",
        str(CONFIGS / "exp3_sgd.yaml"),
        "--methods",
        "sgd",
        "sav",
        "--lr",
        "1e-2:1:3",
        "--seeds",
        "0",
        "1",
        *TINY,
        "--slurm",
        "--sbatch",
        "time=0:10:00",
        "--out",
        str(out),
    ]
    assert script.main(argv) == 0
    path = out / "sweep.sbatch"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    tasks = re.findall(r"^  (\d+)\) run (\S+) \"\$PYTHON\" (.*) ;;$", text, flags=re.M)
    points = Plan.load(out).points()
    assert len(points) == 12 and "#SBATCH --array=0-11" in text and "#SBATCH --time=0:10:00" in text
    assert sorted(int(i) for i, _, _ in tasks) == list(range(12))
    by_folder = {shlex.split(folder)[0]: shlex.split(cmd) for _, folder, cmd in tasks}
    assert sorted(by_folder) == sorted(str(sweep_records.point_folder(p)) for p in points)
    for p in points:
        assert by_folder[str(sweep_records.point_folder(p))] == ["-m", "gf_lightning", "fit", *p.args]
    assert not (out / "runs").exists()

    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "PYTHON": sys.executable}
    task = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert task.returncode == 0, task.stderr[-2000:]
    capsys.readouterr()
    assert script.main(["--report-only", "--out", str(out)]) == 0
    assert "1 of 12 points have an outcome; 11 not run" in capsys.readouterr().err
    first = tasks[0][1]
    (record,) = [r for r in json.loads((out / "results.json").read_text())["records"]]
    assert Path(shlex.split(first)[0]).name == record["name"] and record["status"] == "trained"


@pytest.mark.parametrize("args, setting, given", [
    (["--methods", "sgd", "foo"], "--methods", "'foo'"),
    (["--grid", "model.net.init_args.m"], "--grid", "'model.net.init_args.m'"),
    (["--grid", "model.net.init_args.m=8,,16"], "--grid model.net.init_args.m", "'8,,16'"),
    (["--lr", "1e2:1e-3:5"], "--lr", "'1e2:1e-3:5'"),
    (["--method-args", "momentum=0.9"], "--method-args", "'momentum'"),
    (["--grid", "model.net.init_args.widthh=3"], "the CLI refuses it", "widthh"),
    (["--metric", "val/acc"], "--metric", "val/acc"),
    (["--seeds", "0", "-1"], "--seeds", "'-1'"),
    (["--grid", "seed_everything=4294967296"], "--grid seed_everything", "'4294967296'"),
])
def test_bad_input_is_one_line_naming_the_setting_what_was_given_and_what_is_allowed(args, setting, given, tmp_path,
                                                                                       capsys):
    """An unknown method, a malformed axis, an empty value, a backwards range, a method setting no method takes, a key
    the CLI does not know, a metric the config's validation never logs (accuracy on a regression): exit 2 and one line
    that names the setting, what was given and what is allowed; nothing
    runs. Breakage: a traceback, or a sweep that starts and fails in every run."""
    base = {"--methods": ["sav"], "--lr": ["0.1"]}
    given_keys = [a for a in args if a.startswith("--")]
    argv = ["--config", str(CONFIGS / "exp3_sgd.yaml"), "--out", str(tmp_path / "sw"), "--no-hessian"]
    for key, value in base.items():
        if key not in given_keys:
            argv += [key, *value]
    code = script.main(argv + args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sweep: error: ") and setting in err and given in err and "allowed" in err
    assert not (tmp_path / "sw" / "runs").exists()


def test_sweeps_compared_side_by_side(tmp_path, capsys):
    """Two sweeps (SGD and Adam, each at one step) over two initialisations × two seeds, compared by
    ``scripts/compare_sweeps.py``: each entry's final mean and standard deviation are those of its two seeds' runs (read
    here from the runs' own records), the ranks order each panel by that mean, and the last column is the second panel's
    mean over the first's. Breakage caught: the panels or the seeds mixed up (the means differ), the ranks or the ratio
    reversed."""
    import statistics

    from gf_lightning.study.sweep import compare

    grid = ["--grid", *TINY[1:4], "model.net.init_args.init=fan_in,public", *TINY[4:], "--seeds", "0", "1"]
    folders = []
    for method, lr in (("sgd", "0.1"), ("adam", "0.01")):
        out = tmp_path / method
        assert script.main(["--config", str(CONFIGS / "exp3_sgd.yaml"), "--methods", method, "--lr", lr, *grid,
                            "--jobs", "2", "--out", str(out)]) == 0
        folders.append(str(out))
    expected = {}
    for folder in folders:
        for r in json.loads((Path(folder) / "results.json").read_text())["records"]:
            init = r["settings"]["model.net.init_args.init"]
            expected.setdefault((Path(folder).name, f"init={init}"), []).append(r["val"]["val/loss"][-1])
    assert all(len(v) == 2 for v in expected.values()) and len(expected) == 4

    cmp = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare_sweeps.py")
    module = importlib.util.module_from_spec(cmp)
    cmp.loader.exec_module(module)
    assert module.main([*folders, "--out", str(tmp_path / "cmp"), "--title", "t"]) == 0
    entries = [e for f in folders for e in compare.load(f)[0]]
    for e in entries:
        values = expected[e.row, e.panel]
        assert e.final.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert e.final.sd == pytest.approx(statistics.stdev(values), rel=1e-9)
    place = compare.ranks(entries, "val/loss")
    for panel in ("init=fan_in", "init=public"):
        order = sorted(("sgd", "adam"), key=lambda row: statistics.fmean(expected[row, panel]))
        assert [place[row, panel] for row in order] == [1, 2]
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    row = next(line for line in text.splitlines() if line.startswith("| sgd |"))
    ratio = statistics.fmean(expected["sgd", "init=public"]) / statistics.fmean(expected["sgd", "init=fan_in"])
    assert row.strip("| ").split(" | ")[-1] == f"{ratio:.3g}×"
    assert module.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "cmp2")]) == 2
    assert "no sweep results to compare" in capsys.readouterr().err
