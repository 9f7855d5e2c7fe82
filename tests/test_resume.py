"""A resume continues the same run: settings that differ from the checkpoint's are refused (or, opted in, used
everywhere and recorded); a checkpoint of another optimizer or network is refused. One line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from support import cli_args, run_dir

from gf_lightning.checkpointing import DIGEST_KEY, state_digest
from gf_lightning.cli import cli_main


def fit_args(config: str, root: Path, *extra: str) -> list[str]:
    return cli_args(config, root, *extra)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``last.ckpt`` after 1 epoch of exp3 with SAV (the seed's settings) and with SGD."""
    out = {}
    for method in ("sav", "sgd"):
        root = tmp_path_factory.mktemp(method)
        cli_main(fit_args(f"exp3_{method}", root, "--trainer.max_epochs=1"))
        out[method] = run_dir(root) / "checkpoints" / "last.ckpt"
    return out


#: what → (checkpoint, config, extra arguments, words of the one-line message)
REFUSED = {
    "changed settings": (
        "sav",
        "exp3_sav",
        ["--model.optimizer.init_args.lr=0.05", "--model.optimizer.init_args.lam=0"],
        [
            "model.optimizer.init_args.lr: 0.01 in the checkpoint, 0.05 here",
            "model.optimizer.init_args.lam: 4.0 in the checkpoint, 0.0 here",
            "--resume_with_changes=true",
        ],
    ),
    "changed data": ("sav", "exp3_sav", ["--data.init_args.batch_size=128"], ["data.init_args.batch_size: 256", "128"]),
    "SAV checkpoint, SGD run": (
        "sav",
        "exp3_sgd",
        [],
        ["gf_lightning.optim.SAV", "torch.optim.SGD", "cannot continue"],
    ),
    "SGD checkpoint, SAV run": (
        "sgd",
        "exp3_sav",
        [],
        ["torch.optim.SGD", "gf_lightning.optim.SAV", "cannot continue"],
    ),
    "SAV checkpoint, ExpSAV run": (
        "sav",
        "exp3_sav",
        ["--model.optimizer.class_path=gf_lightning.optim.ExpSAV"],
        ["model.optimizer.class_path=gf_lightning.optim.SAV", "ExpSAV", "cannot continue"],
    ),
    "another width": ("sav", "exp3_sav", ["--model.net.init_args.m=64"], ["another shape", "net.W", "(41, 64)"]),
    "opting in cannot change the optimizer": ("sav", "exp3_sgd", ["--resume_with_changes=true"], ["cannot continue"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_resume_that_cannot_continue_the_run_is_refused(case, checkpoints, tmp_path, capsys):
    """Breakage each catches: the code before mixed the checkpoint's lr/lam with the new config's C/variant/eta, ran SAV
    from an SGD checkpoint with SGD's lr and λ = 0, and raised a KeyError traceback the other way round."""
    ckpt, config, extra, words = REFUSED[case]
    with pytest.raises(SystemExit) as exc:
        cli_main(fit_args(config, tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={checkpoints[ckpt]}", *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gf_lightning: error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_opting_in_uses_the_new_settings_everywhere_and_records_them(checkpoints, tmp_path):
    """``--resume_with_changes=true``: the loaded optimizer takes the new lr and λ (not the checkpoint's), the run's
    config.yaml and its next checkpoint record them, and the steps are those of the new settings: the same as a resume
    whose checkpoint had been saved with them. Breakage: loading the checkpoint's groups unchanged (lr stays 0.01)
    fails."""
    new = ["--model.optimizer.init_args.lr=0.05", "--model.optimizer.init_args.lam=0"]
    cli = cli_main(fit_args("exp3_sav", tmp_path / "a", "--trainer.max_epochs=2", f"--ckpt_path={checkpoints['sav']}",
                            "--resume_with_changes=true", *new))
    groups = cli.trainer.optimizers[0].param_groups
    assert groups[0]["lr"] == 0.05 and groups[0]["lam"] == 0.0
    folder = run_dir(tmp_path / "a")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (
        config["model"]["optimizer"]["init_args"]["lr"] == 0.05
        and config["model"]["optimizer"]["init_args"]["lam"] == 0
    )
    saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["gf_lightning_run"]["model.optimizer.init_args.lr"] == 0.05
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05

    # the same epoch by hand: the checkpoint's groups rewritten with the new values, then a plain resume
    edited = torch.load(checkpoints["sav"], weights_only=False)
    for group in edited["optimizer_states"][0]["param_groups"]:
        group.update(lr=0.05, lam=0.0)
    edited["gf_lightning_run"].update({"model.optimizer.init_args.lr": 0.05, "model.optimizer.init_args.lam": 0.0})
    edited[DIGEST_KEY] = state_digest(edited)  # signed again, as if written so
    path = tmp_path / "edited.ckpt"
    torch.save(edited, path)
    by_hand = cli_main(fit_args("exp3_sav", tmp_path / "b", "--trainer.max_epochs=2", f"--ckpt_path={path}", *new))
    for a, b in zip(cli.model.parameters(), by_hand.model.parameters()):
        assert torch.equal(a, b)


def test_the_same_settings_resume(checkpoints, tmp_path):
    """No change, no opt-in needed; a longer run (trainer.max_epochs) or another root is not a change of the run."""
    cli = cli_main(fit_args("exp3_sav", tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={checkpoints['sav']}"))
    assert cli.trainer.current_epoch == 2


def test_a_checkpoint_without_a_checksum_resumes_with_a_warning(checkpoints, tmp_path):
    """A checkpoint of plain Lightning, or of gf_lightning before checksums, has no digest: it is loaded, and the run
    says that its integrity could not be checked (a corrupted one with a digest is refused: test_checkpoints.py)."""
    old = torch.load(checkpoints["sav"], weights_only=False)
    del old[DIGEST_KEY]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with pytest.warns(UserWarning, match="integrity cannot be checked"):
        cli = cli_main(fit_args("exp3_sav", tmp_path / "run", "--trainer.max_epochs=2", f"--ckpt_path={path}"))
    assert cli.trainer.current_epoch == 2


def score_args(subcommand: str, config: str, root: Path, *extra: str) -> list[str]:
    return cli_args(config, root, *extra, subcommand=subcommand)


#: validate/test of exp3's SAV checkpoint: what → (subcommand, config, extra arguments, words of the one-line message)
NOT_ITS_RUN = {
    "another experiment's checkpoint": ("test", "exp2_sav", [],
                                        ["data.class_path: 'gf_lightning.data.GaussianRegression' in the checkpoint",
                                         "'gf_lightning.data.QuadraticRegression' here", "--resume_with_changes=true"]),
    "another data seed": ("validate", "exp3_sav", ["--data.init_args.seed=7"],
                          ["data.init_args.seed (else seed_everything): 0 in the checkpoint, 7 here"]),
    "another seed_everything, so another split": ("test", "exp3_sav", ["--seed_everything=3"],
                                                  ["data.init_args.seed (else seed_everything)",
                                                   "0 in the checkpoint, 3 here"]),
    "another data size": ("validate", "exp3_sav", ["--data.init_args.n_samples=2000"],
                          ["data.init_args.n_samples: 1000 in the checkpoint, 2000 here"]),
    "another width": ("test", "exp3_sav", ["--model.net.init_args.m=64"], ["another shape", "net.W", "(41, 64)"]),
}


@pytest.mark.parametrize("case", NOT_ITS_RUN)
def test_validate_and_test_refuse_to_score_a_checkpoint_on_another_runs_data(case, checkpoints, tmp_path, capsys):
    """``validate``/``test --ckpt_path`` with another experiment's data, a seed that draws another split, another data
    size, or a network of another shape: one line naming the setting and both values, exit 2, nothing scored. Breakage:
    the code before scored all of them silently (metrics of another split, or of exp2's data) but the width, a
    load_state_dict traceback."""
    subcommand, config, extra, words = NOT_ITS_RUN[case]
    with pytest.raises(SystemExit) as exc:
        cli_main(score_args(subcommand, config, tmp_path, f"--ckpt_path={checkpoints['sav']}", *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gf_lightning: error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def test_a_checkpoint_is_scored_on_its_runs_data_or_with_the_opt_in_and_a_line(checkpoints, tmp_path, capsys):
    """Settings of how it trained (the optimizer's step, the training batch) may differ: the test loss is the same as
    with the config unchanged. Opted in, another data seed is scored, with one line that names it, on another split
    (another loss)."""
    ckpt = f"--ckpt_path={checkpoints['sav']}"
    same = cli_main(score_args("test", "exp3_sav", tmp_path / "a", ckpt)).trainer.callback_metrics["test/loss"]
    trained_otherwise = cli_main(score_args("test", "exp3_sav", tmp_path / "b", ckpt, "--data.init_args.batch_size=64",
                                            "--model.optimizer.init_args.lr=0.5"))
    assert trained_otherwise.trainer.callback_metrics["test/loss"] == same
    assert "scoring" not in capsys.readouterr().err
    other = cli_main(score_args("test", "exp3_sav", tmp_path / "c", ckpt, "--data.init_args.seed=7",
                                "--resume_with_changes=true"))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "scoring" in line]
    assert line.startswith("gf_lightning: scoring ") and "(--resume_with_changes)" in line
    assert "data.init_args.seed (else seed_everything): 0 in the checkpoint, 7 here" in line
    assert other.trainer.callback_metrics["test/loss"] != same
