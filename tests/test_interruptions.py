"""Runs and sweeps cut short, through real signals on real processes: an interrupted ``fit`` exits non-zero in one line
and resumes from the checkpoint it names; a sweep records such a run as not done and runs it again; a sweep that is
stopped, however, leaves no run training behind, and ends in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import as_foreground_job, fit_children, kill_all, running, wait_until
from support import CONFIGS, ROOT, SMALL_EXP1, cli_args, subprocess_env

from gf_lightning.cli import cli_main
from gf_lightning.study.sweep import records as sweep_records
from gf_lightning.study.sweep import runner as sweep_runner
from gf_lightning.study.sweep.grid import Plan

#: exp3 shrunk (160 training samples, 32 hidden units) and run for as long as it takes to be stopped
ENDLESS = 1_000_000
SWEEP = ["--config", str(CONFIGS / "exp3_sgd.yaml"), "--methods", "sgd", "--grid", "data.init_args.n_samples=200",
         "data.init_args.batch_size=64", "model.net.init_args.m=32", "--max-epochs", str(ENDLESS), "--no-hessian"]
#: seconds a process may take to start (imports, first epoch) or to stop, on a busy 2-core machine
START_S, STOP_S = 240, 90


def _sweep(out: Path, *extra: str) -> subprocess.Popen:
    """``scripts/sweep.py`` in a session (and process group) of its own, as a shell runs a job."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), *SWEEP, "--out", str(out), *extra],
                            cwd=out.parent, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=as_foreground_job)


def _script():
    """``scripts/sweep.py`` as a module, to call its ``main`` here."""
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(sweep_pid: int, count: int) -> list[int]:
    """The sweep's ``count`` run processes, or [] while it has another number."""
    found = fit_children(sweep_pid)
    return found if len(found) == count else []


def _training(out: Path, runs: int) -> list[Path]:
    """The point folders under ``out`` whose run has written its first events (Lightning's handlers are set by then)."""
    found = [p for p in (out / "runs").glob("*") if list(p.glob("lightning_logs/*/*/version_*/events.*"))]
    return found if len(found) >= runs else []


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_fit_exits_non_zero_in_one_line_and_resumes_from_its_checkpoint(sig, code, tmp_path):
    """``fit`` signalled after its first checkpoint: exit ``128 + signal`` (SIGTERM gave 0 before: Lightning's handler
    ends the run as if finished), one line that says it was interrupted and names ``--ckpt_path=…last.ckpt``; that
    checkpoint resumes (checksum checked) and the resumed run goes on from the epoch after it to the end."""
    root = tmp_path / "run"
    args = cli_args("exp1_sgd", root, *SMALL_EXP1)
    proc = subprocess.Popen([sys.executable, "-m", "gf_lightning", *args, f"--trainer.max_epochs={ENDLESS}"],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_foreground_job)
    try:
        wait_until(lambda: list(root.glob("lightning_logs/*/*/version_*/checkpoints/last.ckpt")), START_S,
                   "the run's first checkpoint")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=STOP_S)
    finally:
        kill_all([proc.pid])
        proc.wait()
    assert proc.returncode == code, err[-2000:]
    said = [line for line in err.splitlines() if "interrupt" in line.lower()]
    assert len(said) == 1 and said[0].startswith("gf_lightning: interrupted by ") and "Traceback" not in err, err
    assert "the run is not finished" in said[0]
    ckpt = Path(re.search(r"--ckpt_path=(\S+)$", said[0]).group(1))
    # the checkpoint it last wrote: last.ckpt, or the epoch's own file when that was written after it
    assert ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints" and ckpt.is_file()
    epoch = torch.load(ckpt, weights_only=False)["epoch"]
    cli = cli_main([*args, f"--trainer.max_epochs={epoch + 3}", f"--ckpt_path={ckpt}"])
    assert cli.trainer.current_epoch == epoch + 3 and cli.trainer.global_step > 0


#: how the sweep is stopped: (signal, to its whole process group)
STOPS = {
    "SIGTERM": (signal.SIGTERM, False), "SIGINT": (signal.SIGINT, False), "SIGKILL": (signal.SIGKILL, False),
    "group SIGTERM": (signal.SIGTERM, True), "group Ctrl-C": (signal.SIGINT, True),
    "group SIGKILL": (signal.SIGKILL, True),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_a_stopped_sweep_leaves_no_run_behind(how, tmp_path):
    """A sweep whose run trains, stopped by SIGTERM, Ctrl-C or SIGKILL, sent to it alone or to its process group: the
    run ends within a bounded time (before: each run had a session of its own and the sweep no handler for SIGTERM, so
    SIGTERM, SIGKILL and group signals left it training as an orphan); a sweep that can answer exits ``128 + signal``
    with one line, no traceback (before: Ctrl-C gave a KeyboardInterrupt traceback)."""
    sig, group = STOPS[how]
    out = tmp_path / "sw"
    proc = _sweep(out, "--lr", "0.1")
    runs: list[int] = []
    try:
        wait_until(lambda: _training(out, 1), START_S, "the run to train")
        runs = wait_until(lambda: _runs(proc.pid, 1), 10, "the run's process")
        (os.killpg if group else os.kill)(proc.pid, sig)
        wait_until(lambda: not any(running(pid) for pid in runs), STOP_S, f"the runs {runs} to end")
        _, err = proc.communicate(timeout=STOP_S)
    finally:
        kill_all([*runs, proc.pid])
        proc.wait()
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, err[-2000:]
        assert "Traceback" not in err, err
        said = [line for line in err.splitlines() if "interrupted" in line]
        assert said == [err.strip().splitlines()[-1]] and said[0].startswith("sweep: interrupted by "), err


def test_a_run_cut_short_by_sigterm_is_not_done_and_runs_again(tmp_path, capsys):
    """A sweep's run SIGTERMed after its first epoch: the sweep records it as an error with the run's own line (before:
    exit 0, "trained", and skipped by every later call), and the next call of the same sweep runs it again."""
    out = tmp_path / "sw"
    proc = _sweep(out, "--lr", "0.1", "--checkpoints")
    runs: list[int] = []
    try:
        wait_until(lambda: list(out.glob("runs/*/lightning_logs/*/*/version_*/checkpoints/last.ckpt")), START_S,
                   "the run's first checkpoint")
        runs = wait_until(lambda: _runs(proc.pid, 1), 10, "the run's process")
        os.kill(runs[0], signal.SIGTERM)
        _, err = proc.communicate(timeout=STOP_S)
    finally:
        kill_all([*runs, proc.pid])
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    (folder,) = (out / "runs").iterdir()
    record = json.loads((folder / "result.json").read_text())
    assert record["status"] == "error" and record["exit_code"] == 143, record["message"]
    assert record["message"].startswith("gf_lightning: interrupted by SIGTERM")
    (point,) = Plan.load(out).points()
    assert sweep_records.done(point) is None
    assert _script().main([*SWEEP, "--lr", "0.1", "--checkpoints", "--out", str(out), "--slurm"]) == 0
    assert "1 points, 0 done before (skipped), 1 to write for SLURM" in capsys.readouterr().err


def test_a_run_that_logged_fewer_epochs_than_asked_is_incomplete(tmp_path):
    """A run folder that exited 0 after 2 of its 5 epochs (as a SIGTERMed run did before): read back as an error,
    "incomplete: 2 of 5 epochs", and not done even where an older ``result.json`` says "trained". Breakage: taking exit
    0 for a finished run."""
    from torch.utils.tensorboard import SummaryWriter

    (point,) = Plan.build(CONFIGS / "exp3_sgd.yaml", ["sgd"], "0.1", max_epochs=5, out=tmp_path).points()
    folder = sweep_runner.prepare(point)
    logs = folder / "lightning_logs" / "exp3" / "sgd" / "version_0"
    writer = SummaryWriter(str(logs))
    for epoch, loss in enumerate([0.9, 0.5]):
        writer.add_scalar("train/loss", loss, epoch)
        writer.add_scalar("val/loss", loss, epoch)
    writer.close()
    (logs / "config.yaml").write_text("trainer:\n  max_epochs: 5\n  max_steps: -1\n")
    for name, text in (("log.txt", "Seed set to 0\n"), ("started", "0\n"), ("exit_code", "0\n")):
        (folder / name).write_text(text)
    record = sweep_records.collect(point, init_train_loss=1.0)
    assert (record.status, record.message) == ("error", "incomplete: 2 of 5 epochs done (run again)")
    record.status = "trained"  # as the code before this check recorded it
    record.save(folder)
    assert sweep_records.done(point) is None


def test_a_reproduction_stopped_by_sigterm_exits_non_zero(tmp_path):
    """``scripts/reproduce.py`` (its runs train in its own process with ``--jobs 1``) SIGTERMed while exp1's SGD trains:
    exit 143 and the run's one line (before: Lightning's handler ended the run, the script went on and exited 0)."""
    args = ["--experiment", "1", "--methods", "sgd", "--jobs", "1", "--threads", "1", "--progress-every", "0", "--out",
            str(tmp_path / "r")]
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "reproduce.py"), *args],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(" epoch " in line for line in lines), START_S, "the run's first epoch")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_S)
        reader.join(timeout=STOP_S)
    finally:
        kill_all([proc.pid])
        proc.wait()
    err = "".join(lines)
    assert proc.returncode == 143, err[-2000:]
    said = [line for line in err.splitlines() if "interrupt" in line.lower()]
    assert len(said) == 1 and said[0].startswith("gf_lightning: interrupted by SIGTERM") and "Traceback" not in err
