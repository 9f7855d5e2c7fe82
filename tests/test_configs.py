"""Every file under configs/ parses through the command line, and the experiment configs carry SPEC §3's settings (or,
beyond the seed's, the settings their documentation states)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support import CONFIGS, ROOT, cli_args

from gf_lightning.cli import cli_main

TRAINER_DIR = CONFIGS / "trainer"
PAPER_DIR = CONFIGS / "paper"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
TRAINER_CONFIGS = sorted(p for p in ALL_YAML if TRAINER_DIR in p.parents)
PAPER_CONFIGS = sorted(p for p in ALL_YAML if PAPER_DIR in p.parents)
EXPERIMENT_CONFIGS = sorted(p for p in ALL_YAML if p.parent == CONFIGS)  # the seed's experiments
EXP1_SGD = CONFIGS / "exp1_sgd.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")


def _ids(paths):
    return [str(p.relative_to(CONFIGS)) for p in paths]


# ----------------------------------------------------------------------------------------------------------------------
# SPEC §3, copied: per experiment (data class, d, m, k, epochs) and per method (optimizer, batch, hyperparameters)
# ----------------------------------------------------------------------------------------------------------------------
EXPERIMENTS = {
    "exp1": ("gf_lightning.data.SinCosRegression", 40, 1000, 1, 1000),
    "exp2": ("gf_lightning.data.QuadraticRegression", 40, 1000, 1, 100),
    "exp3": ("gf_lightning.data.GaussianRegression", 40, 1000, 1, 100),
    "exp4": ("gf_lightning.data.MNISTDataModule", 784, 100, 10, 50),
}
OPTIMIZERS = {
    "sgd": "torch.optim.SGD",
    "adam": "torch.optim.Adam",
    "sav": "gf_lightning.optim.SAV",
    "expsav": "gf_lightning.optim.ExpSAV",
    "ieq": "gf_lightning.optim.IEQ",
    "ieq_adaptive": "gf_lightning.optim.IEQAdaptive",
    "adaptive_sav": "gf_lightning.optim.AdaptiveSAV",
    "aegd": "gf_lightning.optim.AEGD",
    "aegdm": "gf_lightning.optim.AEGDM",
}
# (experiment, method) → (batch, {hyperparameter: value}); ε = 1e-8 is the seed's only stated IEQ-adaptive ε (exp1)
EPS = {"eps": 1e-8}
TABLE = {
    ("exp1", "sgd"): (256, {"lr": 0.01}),
    ("exp1", "adam"): (64, {"lr": 0.001}),
    ("exp1", "sav"): (256, {"lr": 0.5, "C": 100, "lam": 4}),
    ("exp1", "expsav"): (256, {"lr": 0.1, "C": 1, "lam": 1}),
    ("exp1", "ieq"): (64, {"lr": 0.1}),
    ("exp1", "ieq_adaptive"): (256, {"lr": 0.1, **EPS}),
    ("exp2", "sgd"): (64, {"lr": 0.01}),
    ("exp2", "adam"): (64, {"lr": 0.001}),
    ("exp2", "sav"): (64, {"lr": 0.01, "C": 1, "lam": 4}),
    # ("exp2", "expsav"): not run in the seed, no row to check
    ("exp2", "ieq"): (64, {"lr": 0.01}),
    ("exp2", "ieq_adaptive"): (64, {"lr": 0.01, **EPS}),
    ("exp3", "sgd"): (256, {"lr": 0.01}),
    ("exp3", "adam"): (256, {"lr": 0.001}),
    ("exp3", "sav"): (256, {"lr": 0.01, "C": 100, "lam": 4}),
    ("exp3", "expsav"): (256, {"lr": 0.01, "C": 1, "lam": 0}),
    ("exp3", "ieq"): (256, {"lr": 0.01}),
    ("exp3", "ieq_adaptive"): (256, {"lr": 0.01, **EPS}),
    ("exp4", "sgd"): (256, {"lr": 0.1}),
    ("exp4", "sav"): (256, {"lr": 0.1, "C": 100, "lam": 4}),
    ("exp4", "expsav"): (256, {"lr": 0.1, "C": 1, "lam": 1e-6}),
    ("exp4", "ieq"): (256, {"lr": 0.1}),
    ("exp4", "ieq_adaptive"): (256, {"lr": 0.1, **EPS}),
}
# Settings beyond the seed's (no SPEC §3 row): config → (the SPEC row it starts from, or None, what it changes, where
# the change is documented). docs/results.md states each; every config's header says what it changes.
RESULTS_MD = ROOT / "docs" / "results.md"
BEYOND_SEED = {
    ("exp2", "expsav"): (
        None,
        {"batch": 64, "lr": 5e-4, "C": 1, "lam": 0},
        ["ExpSAV — not in the seed — is run at Δt = 5e-4", "ExpSAV: batch 64, lr = 5e-4, C = 1, lam = 0, 100 epochs"],
    ),
    ("exp4", "sav_large_step"): ("sav", {"lr": 0.5, "lam": 0}, ["SAV at Δt = 0.5, λ = 0", "SAV at Δt = 0.5 and λ = 0"]),
    ("exp4", "expsav_restart"): (
        "expsav",
        {"lr": 0.5, "variant": "restart"},
        ["ExpSAV with restart at Δt = 0.5", "ExpSAV with restart", "at Δt = 0.5"],
    ),
    ("exp4", "ieq_adaptive_restart"): (
        "ieq_adaptive",
        {"lr": 0.5, "variant": "restart"},
        ["IEQ adaptive with restart at Δt = 0.5", "IEQ adaptive with restart", "at Δt = 0.5"],
    ),
    ("exp4", "ieq_small_step"): ("ieq", {"lr": 0.02}, ["IEQ (full) at Δt = 0.02", "IEQ (full) at Δt = 0.02"]),
}
EPOCH_OVERRIDES = {("exp2", "ieq"): 50}
# Methods the seed does not have, in every experiment with the seed's SAV batch and epochs: config name → (method, the
# settings its header states: the paper's Fig. 4 setting for the adaptive SAV family, the authors' defaults for AEGD(M))
PAPER_FIG4 = {"lr": 1.0, "C": 100, "lam": 4}
NEW_METHODS = {
    "asav": ("adaptive_sav", {**PAPER_FIG4, "variant": "vanilla"}),
    "aressav": ("adaptive_sav", {**PAPER_FIG4, "variant": "restart"}),
    "arelsav": ("adaptive_sav", {**PAPER_FIG4, "variant": "relax"}),
    "aegd": ("aegd", {"lr": 0.1, "c": 1.0}),
    "aegdm": ("aegdm", {"lr": 0.01, "c": 1.0, "momentum": 0.9}),
}
NEW = {(exp, name) for exp in EXPERIMENTS for name in NEW_METHODS}


def expected(key: tuple[str, str]) -> tuple[str, int, dict]:
    """``(method, batch, hyperparameters)`` a config must carry: its SPEC §3 row, or that row with the documented
    change."""
    if key in TABLE:
        return key[1], *TABLE[key]
    if key in NEW:
        method, hyper = NEW_METHODS[key[1]]
        return method, TABLE[key[0], "sav"][0], dict(hyper)
    base, change, _ = BEYOND_SEED[key]
    method = base or key[1]
    batch, hyper = TABLE[key[0], method] if base else (change["batch"], {})
    hyper = {**hyper, **change}
    return method, hyper.pop("batch", batch), hyper


def _key(path: Path) -> tuple[str, str]:
    exp, _, method = path.stem.partition("_")
    return exp, method


def _parse(path: Path, tmp_path: Path, *extra: str):
    """The CLI's own parse (and instantiation) of a config, without running a subcommand."""
    return cli_main(cli_args(path, tmp_path, *extra, subcommand=None), run=False)


def _print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", *args, "--print_config"])
    out, err = capsys.readouterr()
    assert info.value.code in (0, None), err
    return yaml.safe_load(out)


# ----------------------------------------------------------------------------------------------------------------------
def test_configs_exist():
    names = {p.name for p in EXPERIMENT_CONFIGS}
    assert "exp1_sgd.yaml" in names and len(EXPERIMENT_CONFIGS) >= 20


def test_every_experiment_config_is_in_the_table():
    """A config the tables do not know (a typo in a name, a new method) should be looked at, not silently pass."""
    found = {_key(p) for p in EXPERIMENT_CONFIGS}
    assert found - set(TABLE) - set(BEYOND_SEED) - NEW == set()
    assert (set(TABLE) | set(BEYOND_SEED) | NEW) - found == set(), "table rows without a config"


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=_ids(EXPERIMENT_CONFIGS))
def test_experiment_config_prints(path, capsys):
    cfg = _print_config(["--config", str(path)], capsys)
    exp, _ = _key(path)
    assert cfg["data"]["class_path"] == EXPERIMENTS[exp][0]
    assert cfg["model"]["optimizer"]["class_path"].rsplit(".", 1)[-1] in {
        c.rsplit(".", 1)[-1] for c in OPTIMIZERS.values()
    }


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=_ids(EXPERIMENT_CONFIGS))
def test_experiment_config_has_its_documented_settings(path, tmp_path):
    """SPEC §3's row, or, for a config beyond the seed's settings, that row with the change docs/results.md and the
    config's header state. Catches: a config whose numbers drift from SPEC §3 or from what the docs say it runs (tried:
    lr 0.5 → 0.4 in exp4_sav_large_step.yaml fails here)."""
    key = _key(path)
    exp, _ = key
    cli = _parse(path, tmp_path)  # also builds the model, the optimizer probe and the data module
    cfg = cli.config
    data_cls, d, m, k, epochs = EXPERIMENTS[exp]
    assert cfg.data.class_path == data_cls
    assert (cfg.model.net.init_args.d, cfg.model.net.init_args.m, cfg.model.net.init_args.k) == (d, m, k)
    assert isinstance(cfg.seed_everything, int) and not isinstance(cfg.seed_everything, bool)
    method, batch, hyper = expected(key)
    if key in BEYOND_SEED:
        results = " ".join(RESULTS_MD.read_text().split())  # as prose reads, whatever the line breaks
        header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
        in_results, *in_header = BEYOND_SEED[key][2]
        assert in_results in results, f"docs/results.md no longer says {in_results!r}"
        for words in in_header:
            assert words in header, f"{path.name}: the header no longer says {words!r}"
        assert "Not run in the seed" in header or "Not the seed's setting" in header
    if key in NEW:
        header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
        assert "Not in the seed" in header and "as the seed's SAV run" in header, path.name
    assert cfg.trainer.max_epochs == EPOCH_OVERRIDES.get(key, epochs)
    assert cfg.model.optimizer.class_path == OPTIMIZERS[method]
    assert cfg.data.init_args.batch_size == batch
    got = cfg.model.optimizer.init_args
    for name, want in hyper.items():
        if isinstance(want, str):
            assert getattr(got, name) == want, f"{path.name}: {name}"
            continue
        assert getattr(got, name) == pytest.approx(want, rel=1e-12, abs=0), f"{path.name}: {name}"
        assert isinstance(getattr(got, name), (int, float)), f"{path.name}: {name} parsed as {getattr(got, name)!r}"
    # the instantiated objects carry the same numbers
    assert cli.datamodule.batch_size == batch
    opt = cli.model.configure_optimizers()
    assert type(opt).__name__ == OPTIMIZERS[method].rsplit(".", 1)[-1]
    for name, want in hyper.items():
        assert opt.defaults[name] == (want if isinstance(want, str) else pytest.approx(want, rel=1e-12, abs=0)), name


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=_ids(TRAINER_CONFIGS))
def test_trainer_fragment_parses_with_exp1(path, capsys):
    fragment = yaml.safe_load(path.read_text()) or {}
    assert isinstance(fragment, dict), f"{path.name}: a --trainer fragment is a mapping of Trainer arguments"
    cfg = _print_config(["--config", str(EXP1_SGD), "--trainer", str(path)], capsys)
    for name, value in fragment.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            assert cfg["trainer"][name] == value, f"{path.name}: trainer.{name}"
    # the experiment's own settings are still there
    assert cfg["model"]["optimizer"]["class_path"] == "torch.optim.SGD"


# ----------------------------------------------------------------------------------------------------------------------
# configs/paper: Ma, Mao & Shen (2024) — ../shared/spec/ma-mao-shen-2024.md, its table of figures
# ----------------------------------------------------------------------------------------------------------------------
#: name → (data class, {data setting: value}, (d, m, k), (optimizer, lr)); every regression z-scores its inputs and
#: trains the relative error; every config runs the 1/m network with N(0, 1) weights in particle time
PAPER = {
    "ex1": (
        "gf_lightning.data.SinCosRegression",
        {"n_samples": 100_000, "batch_size": 256},
        (40, 1000, 1),
        ("torch.optim.SGD", 0.01),
    ),
    "ex2": (
        "gf_lightning.data.QuadraticRegression",
        {"n_samples": 10_000, "batch_size": 64, "high": 5.0},
        (40, 100, 1),
        ("torch.optim.SGD", 0.01),
    ),
    "ex3": (
        "gf_lightning.data.GaussianRegression",
        {"n_samples": 100_000, "batch_size": 256, "std": 0.2},
        (20, 10_000, 1),
        ("torch.optim.Adam", 0.001),
    ),
    "mnist": (
        "gf_lightning.data.MNISTDataModule",
        {"n_train": 60_000, "n_test": 10_000, "batch_size": 256},
        (784, 1000, 10),
        ("torch.optim.SGD", 0.01),
    ),
}


#: paper configs beyond the two-layer network, and the test file that checks each
PAPER_ELSEWHERE = {"burgers": "tests/test_burgers.py"}
TWO_LAYER_PAPER_CONFIGS = [PAPER_DIR / f"{name}.yaml" for name in PAPER]


def test_every_paper_config_is_in_the_table():
    assert {p.stem for p in PAPER_CONFIGS} == set(PAPER) | set(PAPER_ELSEWHERE)


@pytest.mark.parametrize("path", TWO_LAYER_PAPER_CONFIGS, ids=_ids(TWO_LAYER_PAPER_CONFIGS))
def test_paper_config_has_the_papers_settings(path, tmp_path):
    """The spec page's settings, parsed by the CLI: a config whose data, network or time convention drifts from the
    paper fails here (tried: ``standardize: false`` in ex2.yaml, ``particle_time: false`` in ex1.yaml)."""
    data_cls, data, (d, m, k), (optimizer, lr) = PAPER[path.stem]
    cli = _parse(path, tmp_path, *(["--data.init_args.download=false"] if "MNIST" in data_cls else []))
    cfg = cli.config
    assert cfg.data.class_path == data_cls
    for name, want in data.items():
        assert getattr(cfg.data.init_args, name) == want, name
    net = cfg.model.net.init_args
    assert (net.d, net.m, net.k, net.init, net.mean_field) == (d, m, k, "normal", True)
    assert cfg.model.particle_time is True and cli.model.gradient_scale == m
    assert (cfg.model.optimizer.class_path, cfg.model.optimizer.init_args.lr) == (optimizer, lr)
    if data_cls != "gf_lightning.data.MNISTDataModule":
        assert cfg.data.init_args.standardize is True
        assert cfg.model.objective.class_path == "gf_lightning.components.RelativeError"


@pytest.mark.parametrize("path", TWO_LAYER_PAPER_CONFIGS, ids=_ids(TWO_LAYER_PAPER_CONFIGS))
def test_paper_config_prints_with_another_method(path, capsys):
    """``--print_config`` checks the model's settings on a stand-in network; particle time needs a width there too
    (caught: it refused every paper config with "needs a network with a hidden width m")."""
    cfg = _print_config(["--config", str(path), "--model.optimizer=SAV", "--model.optimizer.C=100"], capsys)
    assert cfg["model"]["particle_time"] is True
    assert cfg["model"]["optimizer"]["class_path"] == "gf_lightning.optim.SAV"


# ----------------------------------------------------------------------------------------------------------------------
# the repository stands alone
# ----------------------------------------------------------------------------------------------------------------------
#: what a user who clones the repository reads: the README, the methods page, every config
STANDALONE = [ROOT / "README.md", ROOT / "docs" / "methods.md", *ALL_YAML]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_repository_stands_alone(path):
    """No path that climbs out of the repository (``../shared/spec/SPEC.md``, ``../shared/data``: a clone has neither),
    and every relative Markdown link names a file of the repository and, with ``#``, one of its headings. Breakage: the
    README's and the MNIST configs' paths into ``../shared`` (tried: fails for the README and 14 configs)."""
    text = path.read_text(encoding="utf-8")
    assert "../" not in text, [line for line in text.splitlines() if "../" in line][:3]
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.is_file() and ROOT in linked.parents, target
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, target
