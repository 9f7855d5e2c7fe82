"""What TensorBoard shows, read back with TensorBoard's own reader: run folders named after experiment and method, one
step axis for loss and energy, the custom-scalars layout, the hyperparameters with their metrics, and no duplicate or
meaningless tag."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import hparams_tab_columns
from support import QUIET, cli_args, version_dirs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from gf_lightning.cli import cli_main
from gf_lightning.study.events import read_scalars

#: exp3 with 64 hidden units, 2 epochs of 4 optimizer steps (one training_step call each, at steps_per_call 32)
SMALL = ["--model.net.init_args.m=64", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1", *QUIET,
         "--checkpoint.save_last=false", "--checkpoint.save_top_k=0"]
STEPS = 8
ENERGY = {"energy/true", "energy/modified", "energy/violations", "optim/effective_lr", "energy/true_log10",
          "energy/modified_log10"}
EVAL = {"train/loss", "val/loss", "val/rel_err"}

# run → (config, extra arguments, the run's folder under lightning_logs/, its method, its scalar tags — exactly)
RUNS = {
    "sgd": ("exp3_sgd", [], "exp3/sgd", "SGD", EVAL),
    "sav": ("exp3_sav", [], "exp3/sav", "SAV", EVAL | ENERGY | {"energy/restart_rises"}),
    "expsav-relax": ("exp3_expsav", ["--model.optimizer.init_args.variant=relax"], "exp3/expsav-relax", "ExpSAV",
                     EVAL | ENERGY | {"optim/xi"}),
    "ieq": ("exp3_ieq", [], "exp3/ieq", "IEQ", EVAL | ENERGY | {"optim/solver"}),
    "ieq_adaptive-named": ("exp3_ieq_adaptive", ["--run_name=mine", "--experiment=study"], "study/mine", "IEQAdaptive",
                           EVAL | ENERGY),
    "mnist-sav": ("exp4_sav_large_step", ["--data.init_args.n_train=1024", "--data.init_args.n_test=256"],
                  "exp4/sav_large_step", "SAV", {"train/loss", "val/loss", "val/acc", "energy/restart_rises"} | ENERGY),
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory, mnist_dir):
    """All runs into one root, as a user runs the experiments side by side; ``sgd`` twice."""
    root = tmp_path_factory.mktemp("logs")
    for name, (config, extra, _, _, _) in [*RUNS.items(), ("sgd", RUNS["sgd"])]:
        data = [f"--data.init_args.data_dir={mnist_dir}"] if config.startswith("exp4") else []
        cli_main(cli_args(config, root, *SMALL, *data, *extra))
    return root


def events(folder: Path) -> EventAccumulator:
    """The run's one event file, for what is not a scalar (the layout, the hyperparameters); the scalars:
    :func:`~gf_lightning.study.events.read_scalars`."""
    (path,) = folder.glob("events.out.tfevents*")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_runs_are_named_after_experiment_and_method(logs: Path) -> None:
    """Breakage: Lightning's default ``lightning_logs/version_N``, under which six methods are six numbers."""
    folders = {str(d.relative_to(logs / "lightning_logs")) for d in version_dirs(logs)}
    expected = {f"{path}/version_0" for _, _, path, _, _ in RUNS.values()} | {"exp3/sgd/version_1"}
    assert folders == expected


@pytest.mark.parametrize("run", RUNS)
def test_scalars_share_one_step_axis_and_say_one_thing_each(run: str, logs: Path) -> None:
    """Each run's tags are exactly its table's (no ``energy/r``, ``energy/log_r`` or ``energy/q_norm`` repeating the
    modified energy, no ``val/mse`` repeating the loss, no ``optim/solve_failures`` that is always 0, no ``hp_metric``),
    and the epoch metrics stand at the optimizer step, the energy's axis: ``train/loss`` and ``val/…`` at steps 4 and 8,
    ``energy/…`` at 1 … 8. Breakage: Lightning's own step for epoch metrics, which counts training_step calls (1 an
    epoch here) and adds an ``epoch`` tag (tried: fails)."""
    _, _, path, _, tags = RUNS[run]
    scalars = read_scalars(logs / "lightning_logs" / path / "version_0")
    assert set(scalars) == tags
    for tag in tags:
        steps = [p.step for p in scalars[tag]]
        assert steps == ([4, 8] if tag.split("/")[0] in ("train", "val") else list(range(1, STEPS + 1))), tag


@pytest.mark.parametrize("run", RUNS)
def test_layout_and_hyperparameters(run: str, logs: Path) -> None:
    """The custom-scalars layout puts train beside val loss and modified beside true energy, each chart naming tags the
    run has (energy charts aside, for SGD); the HParams tab gets the run's method, experiment, ``lr`` and batch size,
    with its final losses, its quality measure and (energy methods) its violation count as metrics; ``hparams.yaml``
    holds the same. Breakage: Lightning's default, an empty ``hparams.yaml`` and no HParams session; lists that differ
    between runs (seen in a browser: the tab then showed IEQ's columns only, without ``C``, ``lam`` or ``variant``)."""
    config, _, path, method, tags = RUNS[run]
    folder = logs / "lightning_logs" / path / "version_0"
    acc = events(folder)
    (event,) = acc.Tensors("custom_scalars__config__")  # the layout travels as a string tensor
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["loss: train and val"] == [r"^train/loss$", r"^val/loss$"]
    assert charts["energy: modified and true"] == [r"^energy/modified$", r"^energy/true$"]
    assert charts["energy (log10): modified and true"] == [r"^energy/modified_log10$", r"^energy/true_log10$"]
    if "energy/true" in tags:
        assert all(pattern.strip("^$") in tags for patterns in charts.values() for pattern in patterns)

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {key: value.string_value or value.number_value for key, value in start.hparams.items()}
    experiment, name = path.split("/")
    assert hparams["method"] == method and hparams["experiment"] == experiment and hparams["run"] == name
    assert hparams["batch_size"] == 256 and hparams["lr"] > 0
    # every run lists the same hyperparameters and metrics: TensorBoard takes the tab's columns from one run's lists
    assert set(hparams) == {"experiment", "run", "method", "variant", "lr", "C", "c", "lam", "eta", "eps", "momentum",
                            "solver", "batch_size", "seed", "params"}
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in info.metric_infos}
    assert metrics == {"val/loss", "val/rel_err", "val/rel_l2", "val/acc", "train/loss", "energy/violations"}
    quality = "val/acc" if config.startswith("exp4") else "val/rel_err"
    assert {"val/loss", quality, "train/loss"} <= tags and ("energy/violations" in tags) == ("energy/true" in tags)
    saved = (folder / "hparams.yaml").read_text()
    assert f"method: {method}" in saved and "batch_size: 256" in saved


def test_the_hparams_tab_opens_on_method_variant_lr_lam_seed(logs: Path) -> None:
    """TensorBoard's own HParams backend over the logdir of six methods, two experiments: the columns the tab shows when
    it opens (TensorBoard 2.21's rule: the first five hyperparameters marked ``differs``, the first five metrics) are
    method, variant, lr, lam and seed, and the held-out loss, the three quality measures and the energy violations; one
    row per run folder. Breakage: torch's ``hparams`` summary, under which the tab opened on C, batch_size, c, eps, eta
    (the first five by name) and hid method, variant, lr, lam and seed (tried: fails)."""
    tab = hparams_tab_columns(logs / "lightning_logs")
    assert sorted(tab.hparams) == ["lam", "lr", "method", "seed", "variant"]
    assert tab.metrics == ["val/loss", "val/rel_err", "val/rel_l2", "val/acc", "energy/violations"]
    assert tab.rows == len(version_dirs(logs))


def test_energies_have_their_log10_beside_them(logs: Path) -> None:
    """``energy/true_log10`` and ``energy/modified_log10`` are log10 of ``energy/true`` and ``energy/modified`` at the
    same steps, where those are positive. Breakage: a log10 tag that is not the energy's (another tag's, or ln)."""
    for path in ("exp3/sav", "exp3/ieq", "exp3/expsav-relax"):
        scalars = read_scalars(logs / "lightning_logs" / path / "version_0")
        for tag in ("energy/true", "energy/modified"):
            plain = {p.step: p.value for p in scalars[tag] if p.value > 0}
            logged = {p.step: p.value for p in scalars[f"{tag}_log10"]}
            assert plain and logged.keys() == plain.keys(), (path, tag)
            assert all(logged[k] == pytest.approx(math.log10(v), rel=1e-6, abs=1e-6) for k, v in plain.items()), (
                path,
                tag,
            )
