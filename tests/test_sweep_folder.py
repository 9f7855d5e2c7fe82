"""A sweep's folder: one sweep at a time in it (a lock that its holder's death lets go), a copied sweep reported where
it is now, and a folder that is not a sweep's (a file, a broken plan.json or initial.json, no point finished) answered
in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fit_children, kill_all, running, wait_until
from support import CONFIGS, ROOT, subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")

_spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

#: exp3 shrunk: 160 training samples, 32 hidden units, SGD at one step
GRID = ["--config", str(CONFIGS / "exp3_sgd.yaml"), "--methods", "sgd", "--lr", "0.1", "--grid",
        "data.init_args.n_samples=200", "data.init_args.batch_size=64", "model.net.init_args.m=32", "--no-hessian"]
#: seconds a process may take to start (imports, first epoch) or to stop, on a busy 2-core machine
START_S, STOP_S = 240, 90


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished sweep of one point (2 epochs)."""
    out = tmp_path_factory.mktemp("swept") / "sw"
    assert script.main([*GRID, "--max-epochs", "2", "--out", str(out)]) == 0
    return out


def test_a_second_sweep_into_the_same_folder_is_refused_until_the_first_dies(tmp_path, capsys):
    """While a sweep runs, a second one into its ``--out`` exits 2 with one line naming the holder, and writes nothing
    (before: both ran every point into the same folders); once the first is SIGKILLed, its lock is not in the way."""
    out = tmp_path / "sw"
    argv = [*GRID, "--max-epochs", "1000000", "--out", str(out)]
    first = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), *argv], cwd=tmp_path,
                             env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    runs: list[int] = []
    try:
        runs = wait_until(lambda: fit_children(first.pid), START_S, "the first sweep's run")
        assert script.main([*argv, "--slurm"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("sweep: error: --out: "), err
        assert f"is in use by another sweep (pid {first.pid}, since " in err and "allowed" in err
        assert not (out / "sweep.sbatch").exists()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=STOP_S)
        wait_until(lambda: not any(running(pid) for pid in runs), STOP_S, "the first sweep's run to end")
    finally:
        kill_all([*runs, first.pid])
        first.wait()
    assert script.main([*argv, "--slurm"]) == 0
    assert (out / "sweep.sbatch").is_file()


def test_report_only_on_a_copy_writes_into_the_copy(swept, tmp_path):
    """``--report-only --out B`` on a copy B of sweep A writes B's report from B's runs and leaves every file of A as it
    was (before: it followed plan.json's recorded folder and rewrote A's report)."""
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in swept.rglob("*") if p.is_file()}
    for name in ("results.json", "sweep.md", "sweep.png"):
        (copy / name).unlink()
    assert script.main(["--report-only", "--out", str(copy), "--no-hessian"]) == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in swept.rglob("*") if p.is_file()} == before
    results = json.loads((copy / "results.json").read_text())
    assert results["plan"]["out"] == str(copy.resolve()) and [r["status"] for r in results["records"]] == ["trained"]
    text = (copy / "sweep.md").read_text()
    # the report names the runs relative to its own folder (the copy's), and nothing of A
    assert "--trainer.default_root_dir=runs/" in text and f"{swept}/runs" not in text


def _finished_nothing(folder: Path) -> None:
    for path in folder.glob("runs/*/*"):
        if path.name in ("exit_code", "result.json"):
            path.unlink()


#: what → (how the copy of a finished sweep is spoiled, the arguments before --out COPY (or a function of COPY
#: giving them), exit code, words of its one line)
SPOILED = {
    "plan.json truncated": (lambda f: (f / "plan.json").write_text((f / "plan.json").read_text()[:200]),
                            ["--report-only"], 2, ["plan.json", "is not a sweep's plan", "JSONDecodeError", "allowed"]),
    "plan.json not an object": (lambda f: (f / "plan.json").write_text("[]"), ["--report-only"], 2,
                                ["plan.json", "is not a sweep's plan", "allowed"]),
    "initial.json truncated": (lambda f: (f / "initial.json").write_text((f / "initial.json").read_text()[:50]),
                               ["--report-only"], 0, ["initial.json is not a sweep's initial states", "computing"]),
    "initial.json not an object": (lambda f: (f / "initial.json").write_text("[1, 2]"), ["--report-only"], 0,
                                   ["initial.json is not a sweep's initial states", "computing"]),
    "stopped before any point finished": (_finished_nothing, ["--report-only"], 2,
                                          ["--report-only: none of the 1 points", "has finished", "allowed"]),
    "--out is a file": (lambda f: (shutil.rmtree(f), f.write_text("x")), GRID, 2, ["--out", "is a file", "allowed"]),
    "--report-only --out is a file": (lambda f: (shutil.rmtree(f), f.write_text("x")), ["--report-only"], 2,
                                      ["--out", "is a file", "allowed"]),
    "--from-results truncated": (lambda f: (f / "results.json").write_text((f / "results.json").read_text()[:300]),
                                 lambda f: ["--from-results", str(f / "results.json")], 2,
                                 ["--from-results", "is not a sweep's results.json", "JSONDecodeError", "allowed"]),
    "--from-results another file": (lambda f: (f / "results.json").write_text('{"plan": 3}'),
                                    lambda f: ["--from-results", str(f / "results.json")], 2,
                                    ["--from-results", "is not a sweep's results.json", "allowed"]),
}


@pytest.mark.parametrize("case", SPOILED)
def test_a_folder_that_is_not_a_sweeps_is_answered_in_one_line(case, swept, tmp_path, capsys):
    """A broken plan.json: exit 2, one line (before: a JSONDecodeError or TypeError traceback); a broken initial.json:
    one line, and the initial state computed again (before: an AttributeError traceback, or nothing said); a sweep with
    no finished point: one line (before: a matplotlib traceback drawing nothing); ``--out`` a file: one line (before: a
    FileExistsError traceback); a --from-results file that is not a sweep's results.json: one line (before: a
    JSONDecodeError or TypeError traceback)."""
    spoil, argv, code, words = SPOILED[case]
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    spoil(copy)
    capsys.readouterr()
    argv = argv(copy) if callable(argv) else argv
    assert script.main([*argv, "--out", str(copy), "--no-hessian"]) == code
    err = capsys.readouterr().err.strip()
    said = [line for line in err.splitlines() if all(word in line for word in words)]
    assert len(said) == 1 and "Traceback" not in err, err
    if code:
        assert err.splitlines() == said and said[0].startswith("sweep: error: "), err
