"""The Burgers PINN race runner (gf_lightning.study.paper.race) with a budget of seconds: every method records its error
against its training time, the report's table reads the records as stated, and a bad setting stops in one line."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
from helpers import as_foreground_job, children, kill_all, running, wait_until
from support import ROOT, subprocess_env

from gf_lightning.errors import GFConfigError
from gf_lightning.study.paper.race import METHODS, RaceRun, RaceSettings, check, report, run_race, table

TINY_CONFIG = """
model:
  net:
    class_path: gf_lightning.components.MLP
    init_args: {d: 2, k: 1, width: 8, depth: 2, activation: tanh, init: xavier}
data:
  class_path: gf_lightning.data.BurgersCollocation
  init_args: {n_x: 10, n_t: 6, n_initial: 20, n_boundary: 6, eval_nx: 32, eval_nt: 12}
"""


def test_race_records_every_method_within_its_budget(tmp_path):
    """Catches a method of the race that does not train (the error never falls), a clock that overruns its budget by
    more than a step, records out of time order, and a report without a figure or a table row per method."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    settings = RaceSettings(config=str(config), dtypes=("float64",), seeds=(0,), budget=1.5, every=0.2, ieq_lr=10.0)
    runs = run_race(settings, tmp_path / "out", log=lambda _: None)
    assert [r.method for r in runs] == list(METHODS)
    for run in runs:
        times = [t for t, _ in run.points]
        assert times == sorted(times) and times[0] == 0.0 and len(times) >= 2, run.method
        assert settings.budget <= times[-1] < settings.budget + 1.0, run.method
        assert all(math.isfinite(e) for _, e in run.points), run.method
        assert min(e for _, e in run.points[1:]) < run.points[0][1], run.method
    saved = json.loads((tmp_path / "out" / "race.json").read_text())
    assert len(saved["runs"]) == len(METHODS) and saved["settings"]["budget"] == 1.5
    report(tmp_path / "out")
    assert (tmp_path / "out" / "race.png").stat().st_size > 0
    rows = (tmp_path / "out" / "race.md").read_text().splitlines()
    assert sum(row.startswith("| ieq") for row in rows) == 2


def test_table_reads_first_times_and_best_errors():
    """Catches a table whose times are not the first record at or below each threshold, 0.1 … 1e-4 (median over
    seeds, '—' when the median seed never gets there) or whose best error is not the median of the seeds' minima."""
    runs = [RaceRun("adam", "float32", 0, [(0.0, 1.0), (2.0, 5e-3), (30.0, 2e-3), (40.0, 8e-4)]),
            RaceRun("adam", "float32", 1, [(0.0, 1.0), (4.0, 9e-3), (50.0, 9e-4)]),
            RaceRun("adam", "float32", 2, [(0.0, 1.0), (8.0, 1e-2)])]
    row = table(runs).splitlines()[2]
    assert row == "| adam | float32 | 3 | 4.0 s | 4.0 s | 50 s | — | 0.0009 | 0 |"


@pytest.mark.parametrize("change, words", [
    ({"methods": ("adam", "sgd")}, ["methods", "sgd", "lbfgs"]),
    ({"budget": 0}, ["budget", "> 0"]),
    ({"config": "nowhere.yaml"}, ["config", "nowhere.yaml"]),
])
def test_bad_race_settings_stop_in_one_line(change, words):
    """Catches a race that starts on a bad setting, or refuses it without naming the setting and what is allowed."""
    with pytest.raises(GFConfigError) as err:
        check(RaceSettings(**change))
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_race_script_refuses_in_one_line(tmp_path):
    """Catches the script printing a traceback for a bad method."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "pinn_race.py"), "--out", str(tmp_path),
                          "--methods", "sgd"], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "sgd" in out.stderr, out.stderr


def test_race_resumes_only_missing_runs_and_refuses_other_settings(tmp_path):
    """Catches a race that runs again what its race.json already holds (a cut-short race starts over), one that adds
    runs measured under other settings into the same record, runs in worker processes that are lost or doubled, and a
    CPU clock that does not stop at its budget."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "out"
    first = RaceSettings(config=str(config), methods=("adam",), dtypes=("float64",), seeds=(0,), budget=0.3,
                         every=0.1, clock="cpu")
    [kept] = run_race(first, out, log=lambda _: None)
    assert first.budget <= kept.points[-1][0] < first.budget + 1.0
    more = RaceSettings(**{**first.__dict__, "seeds": (0, 1, 2), "methods": ("adam", "ieq-adaptive"), "jobs": 2})
    runs = run_race(more, out, log=lambda _: None)
    assert sorted((r.method, r.seed) for r in runs) == [(m, s) for m in ("adam", "ieq-adaptive") for s in (0, 1, 2)]
    assert next(r for r in runs if (r.method, r.seed) == ("adam", 0)).points == kept.points
    adaptive = [r for r in runs if r.method == "ieq-adaptive"]
    assert all(r.final_lr is not None and r.final_lr > 0 for r in adaptive)
    assert len(json.loads((out / "race.json").read_text())["runs"]) == 6
    with pytest.raises(GFConfigError, match="budget"):
        run_race(RaceSettings(**{**first.__dict__, "budget": 0.5}), out, log=lambda _: None)


def test_race_report_of_an_empty_folder_is_one_line(tmp_path):
    """Catches ``--report-only`` on a folder with no race.json ending in a FileNotFoundError traceback."""
    proc = subprocess.run([sys.executable, "-m", "gf_lightning.study", "pinn-race", "--out", str(tmp_path),
                           "--report-only"], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "race.json" in proc.stderr, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_race_leaves_no_worker_behind(sig, tmp_path):
    """A race on two worker processes, stopped by SIGTERM or Ctrl-C while its runs train: it exits ``128 + signal`` in
    one line, and its workers end with it (before: the pool's ``with`` block waited for the running runs, up to their
    budget, and a Ctrl-C printed a KeyboardInterrupt traceback from every worker)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    proc = subprocess.Popen([sys.executable, "-m", "gf_lightning.study", "pinn-race", "--out", str(tmp_path / "out"),
                             "--config", str(config), "--jobs", "2", "--budget", "120", "--methods", "adam", "lbfgs",
                             "--dtypes", "float64", "--seeds", "0"], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground_job)
    try:
        spawned = lambda: [c for c, argv in children(proc.pid).items() if any(b"spawn_main" in a for a in argv)]  # noqa: E731
        workers = wait_until(lambda: len(spawned()) == 2 and spawned(), 120, "the race's two workers")
        time.sleep(3)  # (their imports done: the runs train)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        wait_until(lambda: not any(running(w) for w in workers), 30, f"the workers {workers} to end")
    finally:
        kill_all([proc.pid])
        proc.wait()
    lines = err.strip().splitlines()
    assert proc.returncode == 128 + sig and len(lines) == 1 and "interrupted" in lines[0], err
