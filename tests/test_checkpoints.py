"""Checkpoints survive crashes, full disks and non-finite runs; corrupted ones are refused (gf_lightning.checkpointing).

Each crash leaves the previous ``last.ckpt`` loadable, and a resume from it ends bit for bit where an uninterrupted run
with the same settings ends. Small runs: exp1 ExpSAV (its state holds ``log r`` and counters) at SMALL_EXP1's size, 3
epochs of 2 steps, without a logger."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import callback_arg
from support import SMALL_EXP1, cli_args, subprocess_env
from test_reliability import assert_same_state

from gf_lightning.checkpointing import DIGEST_KEY, SafeCheckpointIO, load_checkpoint, nonfinite_entry
from gf_lightning.cli import cli_main
from gf_lightning.errors import NonFiniteError

EPOCHS = 3
#: a step checkpoint after every optimizer step (one mini-batch per training_step call)
EVERY_STEP = ("--data.init_args.steps_per_call=1", "--checkpoint.every_n_train_steps=1")


def fit_args(root: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    """exp1 with ExpSAV, small, without a logger."""
    return cli_args("exp1_expsav", root, "--trainer.logger=false", *SMALL_EXP1, *extra, epochs=epochs)


def checkpoints(root: Path) -> dict[str, Path]:
    """Every file in the run's checkpoint folder (hidden ones included), by name."""
    (folder,) = {p.parent for p in root.rglob("*.ckpt")}
    return {p.name: p for p in folder.iterdir()}


def run_subprocess(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gf_lightning", *fit_args(root, *extra)], cwd=root.parent,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``straight(*extra)``: the final ``last.ckpt`` of an uninterrupted run with these settings (run once each)."""
    runs: dict[tuple[str, ...], dict] = {}

    def get(*extra: str) -> dict:
        if extra not in runs:
            root = tmp_path_factory.mktemp("straight")
            cli_main(fit_args(root, *extra))
            runs[extra] = load_checkpoint(checkpoints(root)["last.ckpt"])
        return runs[extra]

    return get


def assert_resume_is_exact(ckpt: Path, reference: dict, root: Path, *extra: str) -> None:
    """Resume from ``ckpt`` (into a fresh folder) to the end, and compare with the uninterrupted run."""
    cli_main(fit_args(root, *extra, f"--ckpt_path={ckpt}"))
    resumed = load_checkpoint(checkpoints(root)["last.ckpt"])
    assert (
        (resumed["epoch"], resumed["global_step"])
        == (reference["epoch"], reference["global_step"])
        == (EPOCHS - 1, 2 * EPOCHS)
    )
    assert_same_state(reference, resumed)


def test_sigkill_while_writing_last_ckpt_keeps_the_previous_one(tmp_path: Path, straight) -> None:
    """SIGKILL half-way through writing epoch 1's ``last.ckpt`` (half the bytes on disk): ``last.ckpt`` is still epoch
    0's, complete, and the resume from it is exact.

    Catches: writing the checkpoint in place, or renaming a temporary file from another folder (a copy across
    filesystems), instead of writing beside it and renaming — tried by writing straight into the target: ``last.ckpt``
    is left half-written and is refused as unreadable."""
    root = tmp_path / "killed"
    killer = ('--trainer.plugins={"class_path": "helpers.KillMidCheckpointWrite", '
              '"init_args": {"name": "last.ckpt", "nth": 2}}')
    proc = run_subprocess(root, killer)
    assert proc.returncode == -9, proc.stderr[-2000:]
    files = checkpoints(root)
    assert load_checkpoint(files["last.ckpt"])["epoch"] == 0
    (partial,) = [p for name, p in files.items() if name.startswith(".last.ckpt.")]  # the kill hit the write window
    assert 0 < partial.stat().st_size < files["last.ckpt"].stat().st_size
    assert_resume_is_exact(files["last.ckpt"], straight(), tmp_path / "resumed")


@pytest.mark.parametrize("name", ["epoch0001.ckpt", "last.ckpt"])
def test_full_disk_keeps_the_previous_checkpoints(
    name: str, tmp_path: Path, straight, capsys: pytest.CaptureFixture
) -> None:
    """The disk is full while epoch 1's ``name`` is written (the kernel's EFBIG, from ``RLIMIT_FSIZE``): the run stops
    with one line naming the newest file that was written, no partial or empty file is left, the previous ``last.ckpt``
    is whole, and the resume from it is exact.

    Catches: a write in place that leaves a truncated or 0-byte file where the previous one was (tried by writing
    straight
    into the target: ``last.ckpt`` is lost), and a full disk that ends in a traceback."""
    root = tmp_path / "full"
    full = '--trainer.plugins={"class_path": "helpers.FullDiskOnWrite", "init_args": {"name": "%s", "nth": %d}}'
    code, err = _run_that_fails(fit_args(root, full % (name, 2 if name == "last.ckpt" else 1)), capsys)
    lines = [line for line in err.splitlines() if line.startswith("gf_lightning:")]
    assert code == 1 and len(lines) == 1 and "could not write checkpoint" in lines[0] and "Traceback" not in err, err
    files = checkpoints(root)
    # epoch 1 wrote nothing (its epoch file failed first), or its epoch file but not its last.ckpt: nothing partial or
    # empty
    newest = "last.ckpt" if name == "epoch0001.ckpt" else "epoch0001.ckpt"
    assert set(files) == {"last.ckpt", "epoch0000.ckpt" if name == "epoch0001.ckpt" else "epoch0001.ckpt"}
    assert lines[0].endswith(f"Last good checkpoint: {files[newest]}")
    assert load_checkpoint(files["last.ckpt"])["epoch"] == 0
    assert_resume_is_exact(files["last.ckpt"], straight(), tmp_path / "resumed")


def _run_that_fails(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    return exc.value.code, capsys.readouterr().err


def test_corrupted_checkpoint_is_refused(tmp_path: Path, straight, capsys: pytest.CaptureFixture) -> None:
    """8 zeroed bytes in the middle of ``last.ckpt`` (which ``torch.load`` reads without complaint, with other weights):
    ``--ckpt_path`` refuses it with one line that names the file, exit 2, before any work; ``epoch0001.ckpt`` beside it
    resumes exactly.

    Catches: a checkpoint loaded without its checksum checked (tried by skipping the comparison in ``load_checkpoint``:
    the run resumes from the changed weights and exits 0)."""
    root = tmp_path / "run"
    cli_main(fit_args(root, epochs=2))
    files = checkpoints(root)
    good = torch.load(files["last.ckpt"], weights_only=False)
    data = bytearray(files["last.ckpt"].read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(8)
    files["last.ckpt"].write_bytes(data)
    bad = torch.load(files["last.ckpt"], weights_only=False)  # silently different
    assert any(not torch.equal(bad["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])

    code, err = _run_that_fails(fit_args(tmp_path / "resumed", f"--ckpt_path={files['last.ckpt']}"), capsys)
    lines = [line for line in err.splitlines() if line.startswith("gf_lightning:")]
    assert code == 2 and len(lines) == 1 and str(files["last.ckpt"]) in lines[0] and "corrupted" in lines[0], err
    assert not (tmp_path / "resumed").exists()  # refused before any work
    assert_resume_is_exact(files["epoch0001.ckpt"], straight(), tmp_path / "resumed")


@pytest.mark.parametrize("kind", ["truncated", "empty", "folder"])
def test_unreadable_ckpt_path_is_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--ckpt_path`` to a truncated file, an empty file or a folder: one line naming it, exit 2, nothing written.

    Catches: Lightning's own read of ``--ckpt_path`` (for the hyperparameters), which raises with a traceback on a
    truncated or empty file (tried by dropping the check before it)."""
    path = tmp_path / "given.ckpt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # the first half of a real checkpoint
        SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 0}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, err = _run_that_fails(fit_args(tmp_path / "run", f"--ckpt_path={path}"), capsys)
    lines = err.strip().splitlines()
    assert (
        code == 2 and "Traceback" not in err and str(path) in lines[-1] and lines[-1].startswith("gf_lightning: error:")
    )
    assert sum(line.startswith("gf_lightning") for line in lines) == 1
    assert not (tmp_path / "run").exists()


SAVE_PATHS = {
    # a step checkpoint right after a weight went to +Inf (the loss of that step was finite)
    "every_n_train_steps": (EVERY_STEP, callback_arg("PoisonBeforeSave", epoch=2, when="batch")),
    # the module stops the run at the next check, and ModelCheckpoint then saves on the exception
    "save_on_exception": (
        ("--checkpoint.save_on_exception=true",),
        callback_arg("PoisonBeforeSave", epoch=2, when="batch"),
    ),
    # the end-of-epoch save (top-k file, then last.ckpt), after the module's own end-of-epoch check
    "save_last": (("--checkpoint.save_last=true",), callback_arg("PoisonBeforeSave", epoch=2, when="epoch")),
}


@pytest.mark.parametrize("path", list(SAVE_PATHS))
def test_no_save_path_writes_non_finite_weights(
    path: str, tmp_path: Path, straight, capsys: pytest.CaptureFixture
) -> None:
    """A weight goes to +Inf in epoch 2 just before a save: the run stops (exit 1) with a message that names a file that
    is good — it loads, finite, epoch 1 — and every file in the checkpoint folder is finite; the resume is exact.

    Catches: a save path that writes the Inf weights (tried by dropping the guard and the writer's check: step and
    end-of-epoch saves write Inf into ``last.ckpt`` and the message calls it good; ``save_on_exception`` writes Inf into
    ``last.ckpt``), and a message that names a file that was never written."""
    settings, poison = SAVE_PATHS[path]
    root = tmp_path / "run"
    code, err = _run_that_fails(fit_args(root, *settings, poison), capsys)
    line = err.strip().splitlines()[-1]
    assert code == 1 and "non-finite" in line and "ExpSAV" in line and "epoch 2" in line, err
    named = Path(line.rsplit("Last good checkpoint: ", 1)[1])
    assert named.parent == checkpoints(root)["last.ckpt"].parent
    for file in checkpoints(root).values():
        ckpt = load_checkpoint(file)
        assert nonfinite_entry(ckpt) is None and ckpt["epoch"] <= 1, file
    assert load_checkpoint(named)["epoch"] == 1
    assert_resume_is_exact(named, straight(*settings), tmp_path / "resumed", *settings)


def test_collapsed_auxiliary_variable_is_saved_and_resumed(tmp_path: Path) -> None:
    """``log r = −∞`` (an auxiliary variable that collapsed to 0, a documented state) is no NaN/Inf to refuse: it is
    saved, loads, and resumes to the uninterrupted run's state — weights and optimizer state (``log r`` still −∞, the
    step counter), not only the epoch. Catches: a non-finite check that refuses it (tried by allowing no −∞: the run
    stops at epoch 0); a resume that drops the optimizer's state (tried: ``load_state_dict`` without its global scalars,
    which restarts ``r`` at √… of the loss and moves the weights, passed the epoch-only check and fails here)."""
    root = tmp_path / "run"
    cli_main(fit_args(root, callback_arg("CollapseAuxiliary"), epochs=2))
    ckpt = load_checkpoint(checkpoints(root)["last.ckpt"])
    (state,) = ckpt["optimizer_states"][0]["state"].values()
    assert state["log_r"].item() == -math.inf and ckpt["epoch"] == 1
    cli_main(fit_args(tmp_path / "resumed", f"--ckpt_path={checkpoints(root)['last.ckpt']}", epochs=3))
    cli_main(fit_args(tmp_path / "straight", callback_arg("CollapseAuxiliary"), epochs=3))
    resumed = load_checkpoint(checkpoints(tmp_path / "resumed")["last.ckpt"])
    straight = load_checkpoint(checkpoints(tmp_path / "straight")["last.ckpt"])
    assert resumed["epoch"] == straight["epoch"] == 2
    (state,) = resumed["optimizer_states"][0]["state"].values()
    assert state["log_r"].item() == -math.inf and state["step"].item() == 2 * EPOCHS
    assert_same_state(straight, resumed)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["NaN", "+Inf"])
def test_a_non_finite_auxiliary_variable_is_never_written(value: float, tmp_path: Path, straight) -> None:
    """A checkpoint whose ``log r`` is NaN or +Inf (``r`` infinite) is refused by the writer, and no file appears; −∞ (a
    collapsed ``r``, the test above) is the one non-finite value allowed. Catches: a check that lets every infinity of
    ``log r`` through, not only −∞ (tried: fails the +Inf case)."""
    ckpt = {**straight(), "optimizer_states": [copy.deepcopy(straight()["optimizer_states"][0])]}
    (state,) = ckpt["optimizer_states"][0]["state"].values()
    state["log_r"].fill_(value)
    target = tmp_path / "bad.ckpt"
    with pytest.raises(NonFiniteError, match="'log_r'.*" + ("NaN" if math.isnan(value) else "Inf")):
        SafeCheckpointIO().save_checkpoint(ckpt, target)
    assert not list(tmp_path.iterdir())


def test_save_last_link_is_a_complete_file(tmp_path: Path) -> None:
    """``checkpoint.save_last=link``: ``last.ckpt`` is put in place by a rename (a hard link to the newest epoch file),
    so it never dangles and stays complete after the epoch file it stood for is removed.

    Catches: Lightning's remove-then-symlink ``last.ckpt`` (tried with the plain ``ModelCheckpoint``: a symbolic link,
    which dangles once its epoch file is removed)."""
    root = tmp_path / "run"
    cli_main(fit_args(root, "--checkpoint.save_last=link", epochs=2))
    files = checkpoints(root)
    assert sorted(files) == ["epoch0001.ckpt", "last.ckpt"] and not files["last.ckpt"].is_symlink()
    files["epoch0001.ckpt"].unlink()
    ckpt = load_checkpoint(files["last.ckpt"])
    assert ckpt["epoch"] == 1 and DIGEST_KEY in ckpt
