"""Every bad input stops the run before any work, with one line that names the setting and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gf_lightning.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]

# (config, extra arguments, words the message must contain)
CASES = {
    "unknown optimizer": ("exp1_sgd", ["--model.optimizer.class_path=torch.optim.Nope"], ["torch.optim.Nope"]),
    "sgd lr <= 0": ("exp1_sgd", ["--model.optimizer.init_args.lr=-1"], ["model.optimizer", "-1"]),
    "sav lr = 0": ("exp1_sav", ["--model.optimizer.init_args.lr=0"], ["lr", "> 0"]),
    "sav C <= 0": ("exp1_sav", ["--model.optimizer.init_args.C=-5"], ["C", "> 0"]),
    "sav lam < 0": ("exp1_sav", ["--model.optimizer.init_args.lam=-1"], ["lam", ">= 0"]),
    "sav eta > 1": ("exp1_sav", ["--model.optimizer.init_args.eta=1.5"], ["eta", "(0, 1]"]),
    "sav L + C <= 0": ("exp1_sav", ["--model.optimizer.init_args.C=1e-9", "--model.optimizer.class_path=gf_lightning.optim.SAV"],
                       None),  # placeholder, replaced below
    "expsav unknown variant": ("exp1_expsav", ["--model.optimizer.init_args.variant=fancy"],
                               ["variant", "'seed'", "'restart'", "'vanilla'", "'relax'"]),
    "ieq_adaptive relax": ("exp1_ieq_adaptive", ["--model.optimizer.init_args.variant=relax"], ["variant", "'seed'", "'restart'"]),
    "ieq_adaptive eps <= 0": ("exp1_ieq_adaptive", ["--model.optimizer.init_args.eps=0"], ["eps", "> 0"]),
    "ieq unknown solver": ("exp1_ieq", ["--model.optimizer.init_args.solver=qr"], ["solver", "'auto'"]),
    "net m <= 0": ("exp1_sgd", ["--model.net.init_args.m=0"], ["model.net.m", "positive integer"]),
    "net unknown init": ("exp1_sgd", ["--model.net.init_args.init=xavier"], ["model.net.init", "fan_in", "kaiming"]),
    "net d differs from data": ("exp1_sgd", ["--model.net.init_args.d=39"], ["model.net.init_args.d", "39", "40"]),
    "net k differs from data": ("exp1_sgd", ["--model.net.init_args.k=3"], ["model.net.init_args.k", "3", "1"]),
    "task differs from data": ("exp1_sgd", ["--model.task=classification"], ["model.task", "regression"]),
    "unknown task": ("exp1_sgd", ["--model.task=segmentation"], ["model.task", "regression", "classification"]),
    "batch larger than training set": ("exp1_sgd", ["--data.init_args.batch_size=9000"], ["data.batch_size", "8000"]),
    "batch size 0": ("exp1_sgd", ["--data.init_args.batch_size=0"], ["data.batch_size", "positive integer"]),
    "too few samples": ("exp1_sgd", ["--data.init_args.n_samples=1"], ["data.n_samples", ">= 2"]),
    "train fraction": ("exp1_sgd", ["--data.init_args.train_fraction=1.5"], ["data.train_fraction", "(0, 1)"]),
    "negative input std": ("exp3_sgd", ["--data.init_args.std=-0.2"], ["data.std", "> 0"]),
    "steps per call 0": ("exp1_sgd", ["--data.init_args.steps_per_call=0"], ["data.steps_per_call", "positive integer"]),
    "checkpoint cadence inside a call": ("exp1_sgd", ["--checkpoint.every_n_train_steps=10"],
                                         ["every_n_train_steps=10", "data.steps_per_call=32", "multiple"]),
    "guard cadence": ("exp1_sgd", ["--model.check_finite_every_n_steps=0"], ["model.check_finite_every_n_steps", ">= 1"]),
    # (16-mixed on a CPU becomes bf16-mixed, which the methods accept; its refusal on a GPU is test_optim's no-closure case)
    "16-bit precision": ("exp1_sav", ["--trainer.precision=16-true"], ["trainer.precision", "16-true", "32-true", "bf16-mixed"]),
    "key that does not exist": ("exp1_sgd", ["--model.optimizer.init_args.momentun=0.9"], ["momentun"]),
    "top-level key that does not exist": ("exp1_sgd", ["--model.nope=1"], ["nope"]),
    "mnist more samples than the files": ("exp4_sgd", ["--data.init_args.n_train=70000"], ["data.n_train", "70000", "60000"]),
}
del CASES["sav L + C <= 0"]  # a first-step error, tested in test_optim


def run(config: str, extra: list[str], tmp_path: Path) -> int:
    return cli_main(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), f"--trainer.default_root_dir={tmp_path}",
                     "--trainer.max_epochs=1", "--progress_bar.refresh_rate=0", "--data.init_args.data_dir=../shared/data"
                     if config.startswith("exp4") else "--trainer.enable_model_summary=false", *extra])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_a_clear_message(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config, extra, words = CASES[case]
    if config.startswith("exp4") and not (ROOT.parent / "shared/data/MNIST/raw").is_dir():
        pytest.skip("MNIST files not at ../shared/data")
    with pytest.raises(SystemExit) as exc:
        run(config, extra, tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err[-800:]}"
    assert not list(tmp_path.rglob("*.ckpt")), "no work should have started"


def test_missing_mnist_files_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        run("exp4_sgd", [f"--data.init_args.data_dir={tmp_path}", "--data.init_args.download=false"], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "MNIST" / "raw") in err and "train-images-idx3-ubyte" in err and "data.download" in err
