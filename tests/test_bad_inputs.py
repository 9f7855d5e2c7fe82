"""Every bad input, once: the library refuses it with a ``GFConfigError`` or ``GFStepError`` that names the setting and
what is allowed; the command line stops before any work, with one line, exit 2.

Two tables, one test each: :data:`LIBRARY` (the optimizers as a user calls them in plain PyTorch) and :data:`CLI` (the
settings of a run). An optimizer setting appears in one of them, not both: the CLI table keeps one of them, to show how
the command line words the library's message. A CLI case's name says what the input did before it was refused where that
was worse than a clear message (a traceback, a run on mismatched labels, a NaN blamed on the optimizer); a case may
prepare files in the test's folder (``{tmp}`` in its arguments): spoilt MNIST files, config files, read-only folders.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import cli_args
from test_data import write_idx

from gf_lightning.cli import cli_main
from gf_lightning.components import TwoLayerNet
from gf_lightning.errors import GFConfigError, GFStepError
from gf_lightning.module import GradientFlowModule
from gf_lightning.optim import AEGD, AEGDM, IEQ, SAV, AdaptiveSAV, ExpSAV, IEQAdaptive
from gf_lightning.optim import ieq as ieq_module


def p():
    return torch.nn.Parameter(torch.ones(3))


def step(opt, returned):
    """A step whose closure back-propagates a fine loss and returns ``returned``."""
    (param,) = opt.param_groups[0]["params"]

    def closure():
        opt.zero_grad()
        (param**2).sum().backward()
        return returned

    return lambda: opt.step(closure)


def constant_loss(value):
    opt = SAV([param := p()], C=100.0)

    def closure():
        opt.zero_grad()
        loss = (param * 0).sum() + value
        loss.backward()
        return loss

    return lambda: opt.step(closure)


def ieq_step(closure_of=lambda net, x, y: net(x) - y, gram=None, groups=None, monkeypatch=None, **kw):
    torch.manual_seed(0)
    net = TwoLayerNet(4, 9, 1).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    opt = IEQ(groups(net) if groups else net.parameters(), **kw)
    return lambda: opt.step(lambda: closure_of(net, x, y), gram_fn=(lambda: gram(net, x)) if gram else None)


#: what → (a call that must raise, the exception, words the message must contain)
LIBRARY = {
    "SAV lr = 0": (lambda: SAV([p()], lr=0.0), GFConfigError, ["lr", "> 0", "0.0"]),
    "SAV lr < 0": (lambda: SAV([p()], lr=-1.0), GFConfigError, ["lr", "> 0", "-1.0"]),
    "SAV lr NaN": (lambda: SAV([p()], lr=float("nan")), GFConfigError, ["lr", "finite"]),
    "SAV lr inf": (lambda: SAV([p()], lr=float("inf")), GFConfigError, ["lr", "finite"]),
    "ExpSAV lr = 0": (lambda: ExpSAV([p()], lr=0), GFConfigError, ["lr", "> 0"]),
    "IEQAdaptive lr < 0": (lambda: IEQAdaptive([p()], lr=-0.1), GFConfigError, ["lr", "> 0"]),
    "IEQ lr = 0": (lambda: IEQ([p()], lr=0.0), GFConfigError, ["lr", "> 0"]),
    "lr a string": (lambda: SAV([p()], lr="0.1"), GFConfigError, ["lr", "'0.1'"]),
    "SAV C = 0": (lambda: SAV([p()], C=0.0), GFConfigError, ["C", "> 0"]),
    "ExpSAV C < 0": (lambda: ExpSAV([p()], C=-1.0), GFConfigError, ["C", "> 0"]),
    "SAV lam < 0": (lambda: SAV([p()], lam=-1.0), GFConfigError, ["lam", ">= 0"]),
    "ExpSAV lam < 0": (lambda: ExpSAV([p()], lam=-1e-6), GFConfigError, ["lam", ">= 0"]),
    "IEQAdaptive eps = 0": (lambda: IEQAdaptive([p()], eps=0.0), GFConfigError, ["eps", "> 0"]),
    "SAV unknown variant": (
        lambda: SAV([p()], variant="nope"),
        GFConfigError,
        ["variant", "'seed'", "'relax'", "'nope'"],
    ),
    "ExpSAV variant case": (lambda: ExpSAV([p()], variant="Seed"), GFConfigError, ["variant", "'Seed'"]),
    "IEQAdaptive relax": (
        lambda: IEQAdaptive([p()], variant="relax"),
        GFConfigError,
        ["variant", "'seed'", "'restart'"],
    ),
    "SAV eta = 0": (lambda: SAV([p()], eta=0.0), GFConfigError, ["eta", "(0, 1]"]),
    "ExpSAV eta > 1": (lambda: ExpSAV([p()], eta=1.5), GFConfigError, ["eta", "(0, 1]"]),
    "SAV particles = 0": (lambda: SAV([p()], particles=0), GFConfigError, ["particles", ">= 1", "0"]),
    "AdaptiveSAV particles 1.5": (
        lambda: AdaptiveSAV([p()], particles=1.5),
        GFConfigError,
        ["particles", ">= 1", "1.5"],
    ),
    "IEQAdaptive group particles": (
        lambda: IEQAdaptive([{"params": [p()]}, {"params": [p()], "particles": 9}]),
        GFConfigError,
        ["particles", "whole optimizer", "particles=9"],
    ),
    "IEQ unknown solver": (lambda: IEQ([p()], solver="lu"), GFConfigError, ["solver", "'auto'", "'cg'"]),
    "IEQ max_dense = 0": (lambda: IEQ([p()], max_dense=0), GFConfigError, ["max_dense", ">= 1"]),
    "IEQ cg_tol = 0": (lambda: IEQ([p()], cg_tol=0.0), GFConfigError, ["cg_tol", "> 0"]),
    "IEQ cg_tol = 1 (zero CG iterations: the weights never moved)": (
        lambda: IEQ([p()], cg_tol=1.0),
        GFConfigError,
        ["cg_tol", "(0, 1)", "never move", "1.0"],
    ),
    "IEQ cg_max_iter = 0": (lambda: IEQ([p()], cg_max_iter=0), GFConfigError, ["cg_max_iter", ">= 1"]),
    "IEQ unknown distributed": (lambda: IEQ([p()], distributed="rank"), GFConfigError, ["distributed", "'block'"]),
    "IEQ max_jacobian_bytes = 0": (
        lambda: IEQ([p()], max_jacobian_bytes=0),
        GFConfigError,
        ["max_jacobian_bytes", ">= 1"],
    ),
    "IEQ row_fraction = 0": (lambda: IEQ([p()], row_fraction=0.0), GFConfigError, ["row_fraction", "(0, 1]"]),
    "IEQ adaptive_lr not a flag": (lambda: IEQ([p()], adaptive_lr="yes"), GFConfigError, ["adaptive_lr", "'yes'"]),
    "IEQ lr_grow < 1": (lambda: IEQ([p()], lr_grow=0.5), GFConfigError, ["lr_grow=0.5", "lr_grow >= 1"]),
    "IEQ lr_shrink = 1": (lambda: IEQ([p()], lr_shrink=1.0), GFConfigError, ["lr_shrink=1.0", "(0, 1)"]),
    "IEQ max_retries = 0": (lambda: IEQ([p()], max_retries=0), GFConfigError, ["max_retries", ">= 1"]),
    "IEQ parameter above max_dense": (
        ieq_step(solver="parameter", max_dense=5),
        GFConfigError,
        ["max_dense=5", "54 x 54"],
    ),
    "IEQ row subset with the closed form": (
        ieq_step(gram=lambda net, x: net.jacobian_gram(x), row_fraction=0.5),
        GFConfigError,
        ["row_fraction=0.5", "allowed: 1.0"],
    ),
    "every group empty": (lambda: SAV([{"params": []}]), GFConfigError, ["every parameter group is empty"]),
    # per-group settings: lr (and lam) are a group's own, validated as strictly; C, variant, eta, eps, the solver are
    # the whole optimizer's, and a group that sets another value would be ignored by the step, so it is refused
    "group lr = 0": (lambda: SAV([{"params": [p()]}, {"params": [p()], "lr": 0.0}]), GFConfigError, ["lr", "> 0"]),
    "group lam < 0": (lambda: SAV([{"params": [p()]}, {"params": [p()], "lam": -1.0}]), GFConfigError, ["lam", ">= 0"]),
    "group C": (
        lambda: SAV([{"params": [p()]}, {"params": [p()], "C": 5.0}]),
        GFConfigError,
        ["C", "whole optimizer", "C=5.0", "C=100.0", "lr, lam"],
    ),
    "group variant": (
        lambda: ExpSAV([{"params": [p()], "variant": "relax"}, {"params": [p()]}]),
        GFConfigError,
        ["variant", "'relax'", "'seed'"],
    ),
    "group eps": (lambda: IEQAdaptive([{"params": [p()]}, {"params": [p()], "eps": 1.0}]), GFConfigError, ["eps"]),
    "group solver": (lambda: IEQ([{"params": [p()]}, {"params": [p()], "solver": "cg"}]), GFConfigError, ["solver"]),
    "added group C": (lambda: SAV([p()]).add_param_group({"params": [p()], "C": 1.0}), GFConfigError, ["C", "whole"]),
    # steps
    "SAV without closure": (
        lambda: SAV([p()]).step(),
        GFStepError,
        ["closure", "16-bit mixed precision", "gradient scaler"],
    ),
    "ExpSAV without closure": (lambda: ExpSAV([p()]).step(), GFStepError, ["closure", "gradient scaler"]),
    "IEQAdaptive without closure": (lambda: IEQAdaptive([p()]).step(), GFStepError, ["closure", "gradient scaler"]),
    "IEQ without closure": (lambda: IEQ([p()]).step(), GFStepError, ["closure", "gradient scaler"]),
    "closure returns None": (lambda: step(SAV([p()]), None)(), GFStepError, ["closure", "NoneType"]),
    "closure returns a string": (lambda: step(ExpSAV([p()]), "x")(), GFStepError, ["closure", "str"]),
    "closure returns a vector": (lambda: step(IEQAdaptive([p()]), torch.ones(2))(), GFStepError, ["closure", "(2,)"]),
    "SAV L + C = 0": (constant_loss(-100.0), GFStepError, ["L + C > 0", "C = 100", "choose C > 100"]),
    "SAV L + C < 0": (constant_loss(-150.0), GFStepError, ["L + C > 0", "choose C > 150"]),
    "IEQ closure returns None": (ieq_step(lambda net, x, y: None), GFStepError, ["must return the residual"]),
    "IEQ residual detached": (ieq_step(lambda net, x, y: (net(x) - y).detach()), GFStepError, ["no autograd graph"]),
    "IEQ gram of the wrong shape": (
        ieq_step(gram=lambda net, x: torch.eye(3, dtype=torch.float64)),
        GFStepError,
        ["gram_fn", "(6, 6)", "(3, 3)"],
    ),
    "IEQ cholesky above max_dense": (ieq_step(solver="cholesky", max_dense=5), GFConfigError, ["max_dense=5", "6 x 6"]),
    # torch's optimizers from a plain callable (the command line's are checked before torch sees them, too)
    "module: SGD lr NaN": (
        lambda: GradientFlowModule(TwoLayerNet(3, 4, 1), lambda ps: torch.optim.SGD(ps, lr=float("nan"))),
        GFConfigError,
        ["model.optimizer.init_args.lr", "finite number > 0", "nan"],
    ),
    "module: Adam eps = 0 (torch allows it)": (
        lambda: GradientFlowModule(TwoLayerNet(3, 4, 1), lambda ps: torch.optim.Adam(ps, eps=0.0)),
        GFConfigError,
        ["model.optimizer.init_args.eps", "> 0"],
    ),
    "module: particle time without a width": (
        lambda: GradientFlowModule(torch.nn.Linear(3, 1), particle_time=True),
        GFConfigError,
        ["model.particle_time", "m particles", "Linear"],
    ),
    "IEQ closed form, two lrs": (
        ieq_step(
            gram=lambda net, x: net.jacobian_gram(x),
            groups=lambda net: [{"params": [net.W], "lr": 0.1}, {"params": [net.a], "lr": 0.2}],
        ),
        GFConfigError,
        ["gram_fn", "lr", "0.1", "0.2"],
    ),
    "AEGD(M) lr zero": (lambda: AEGD([p()], lr=0.0), GFConfigError, ["lr must be a finite number > 0; got 0.0"]),
    "AEGD(M) lr negative": (lambda: AEGDM([p()], lr=-0.1), GFConfigError, ["lr must be a finite number > 0; got -0.1"]),
    "AEGD(M) lr nan": (
        lambda: AEGD([p()], lr=float("nan")),
        GFConfigError,
        ["lr must be a finite number > 0; got nan"],
    ),
    "AEGD(M) lr bool": (lambda: AEGD([p()], lr=True), GFConfigError, ["lr must be a finite number > 0; got True"]),
    "AEGD(M) c zero": (lambda: AEGD([p()], c=0.0), GFConfigError, ["c must be a finite number > 0; got 0.0"]),
    "AEGD(M) c negative": (lambda: AEGDM([p()], c=-1.0), GFConfigError, ["c must be a finite number > 0; got -1.0"]),
    "AEGD(M) c inf": (lambda: AEGD([p()], c=float("inf")), GFConfigError, ["c must be a finite number > 0; got inf"]),
    "AEGD(M) momentum one": (
        lambda: AEGDM([p()], momentum=1.0),
        GFConfigError,
        ["momentum must be a finite number in [0, 1); got 1.0"],
    ),
    "AEGD(M) momentum negative": (
        lambda: AEGDM([p()], momentum=-0.1),
        GFConfigError,
        ["momentum must be a finite number in [0, 1); got -0.1"],
    ),
    "AEGD(M) momentum nan": (
        lambda: AEGDM([p()], momentum=float("nan")),
        GFConfigError,
        ["momentum must be a finite number in [0, 1); got nan"],
    ),
    "AEGD(M) dampening": (
        lambda: AEGDM([p()], dampening=1.5),
        GFConfigError,
        ["dampening must be a finite number in [0, 1]; got 1.5"],
    ),
    "AEGD(M) weight_decay": (
        lambda: AEGD([p()], weight_decay=-1e-4),
        GFConfigError,
        ["weight_decay must be a finite number >= 0; got -0.0001"],
    ),
    "AEGD(M) decoupled": (
        lambda: AEGD([p()], decoupled_weight_decay="yes"),
        GFConfigError,
        ["decoupled_weight_decay must be true or false; got 'yes'"],
    ),
    "AEGD(M) group momentum": (
        lambda: AEGDM([{"params": [p()], "momentum": 1.2}]),
        GFConfigError,
        ["momentum must be a finite number in [0, 1); got 1.2"],
    ),
    "AEGD(M) added group lr": (
        lambda: AEGD([p()]).add_param_group({"params": [p()], "lr": -1.0}),
        GFConfigError,
        ["lr must be a finite number > 0; got -1.0"],
    ),
    "AEGD(M) group c": (
        lambda: AEGDM([{"params": [p()]}, {"params": [p()], "c": 2.0}]),
        GFConfigError,
        [
            "c is a setting of the whole optimizer, not of a parameter group: a group has c=2.0 while the optimizer "
            "has c=1.0; per-group values are allowed for lr, weight_decay, momentum, dampening"
        ],
    ),
    "AEGD(M) no parameters": (
        lambda: AEGD([{"params": []}]),
        GFConfigError,
        ["AEGD: every parameter group is empty; give it at least one parameter"],
    ),
    "AdaptiveSAV betas=(0.9, 1.0)": (
        lambda: AdaptiveSAV([p()], betas=(0.9, 1.0)),
        GFConfigError,
        ["betas", "[0, 1)", "1.0"],
    ),
    "AdaptiveSAV betas=(1.5, 0.999)": (
        lambda: AdaptiveSAV([p()], betas=(1.5, 0.999)),
        GFConfigError,
        ["betas", "[0, 1)", "1.5"],
    ),
    "AdaptiveSAV betas=(-0.1, 0.999)": (
        lambda: AdaptiveSAV([p()], betas=(-0.1, 0.999)),
        GFConfigError,
        ["betas", "[0, 1)", "-0.1"],
    ),
    "AdaptiveSAV betas=(0.9, math.nan)": (
        lambda: AdaptiveSAV([p()], betas=(0.9, math.nan)),
        GFConfigError,
        ["betas", "[0, 1)", "nan"],
    ),
    "AdaptiveSAV betas=(0.9,)": (lambda: AdaptiveSAV([p()], betas=(0.9,)), GFConfigError, ["betas", "two numbers"]),
    "AdaptiveSAV betas=0.9": (lambda: AdaptiveSAV([p()], betas=0.9), GFConfigError, ["betas", "two numbers"]),
    "AdaptiveSAV betas=('0.9', '0.999')": (
        lambda: AdaptiveSAV([p()], betas=("0.9", "0.999")),
        GFConfigError,
        ["betas", "two numbers"],
    ),
    "AdaptiveSAV eps=0.0": (lambda: AdaptiveSAV([p()], eps=0.0), GFConfigError, ["eps", "> 0", "0.0"]),
    "AdaptiveSAV eps=-1e-8": (lambda: AdaptiveSAV([p()], eps=-1e-8), GFConfigError, ["eps", "> 0"]),
    "AdaptiveSAV eps=math.inf": (lambda: AdaptiveSAV([p()], eps=math.inf), GFConfigError, ["eps", "finite"]),
    "AdaptiveSAV variant='seed'": (
        lambda: AdaptiveSAV([p()], variant="seed"),
        GFConfigError,
        ["variant", "'vanilla', 'restart', 'relax'", "'seed'"],
    ),
    "AdaptiveSAV variant='adam'": (
        lambda: AdaptiveSAV([p()], variant="adam"),
        GFConfigError,
        ["variant", "'relax'", "'adam'"],
    ),
    "AdaptiveSAV C=0.0": (lambda: AdaptiveSAV([p()], C=0.0), GFConfigError, ["C", "> 0"]),
    "AdaptiveSAV C=-1.0": (lambda: AdaptiveSAV([p()], C=-1.0), GFConfigError, ["C", "> 0"]),
    "AdaptiveSAV lam=-1.0": (lambda: AdaptiveSAV([p()], lam=-1.0), GFConfigError, ["lam", ">= 0"]),
    "AdaptiveSAV lr=0.0": (lambda: AdaptiveSAV([p()], lr=0.0), GFConfigError, ["lr", "> 0"]),
    "AdaptiveSAV lr=math.nan": (lambda: AdaptiveSAV([p()], lr=math.nan), GFConfigError, ["lr", "finite"]),
    "AdaptiveSAV eta=0.0": (lambda: AdaptiveSAV([p()], eta=0.0), GFConfigError, ["eta", "(0, 1]"]),
    "AdaptiveSAV eta=1.5": (lambda: AdaptiveSAV([p()], eta=1.5), GFConfigError, ["eta", "(0, 1]"]),
}


@pytest.mark.parametrize("case", LIBRARY)
def test_library_refuses_bad_input(case: str):
    call, error, words = LIBRARY[case]
    with pytest.raises(error) as info:
        call()
    assert "\n" not in str(info.value), f"not one line: {info.value}"
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_global_ddp_solve_needs_the_closed_form(monkeypatch):
    """Under DDP (faked: a world of two) the generic paths have no cross-rank Jacobian: the global solve asks for
    gram_fn and names the option; and nothing moved."""
    monkeypatch.setattr(ieq_module, "world_size", lambda: 2)
    with pytest.raises(GFConfigError, match="distributed='block'"):
        ieq_step()()


def write(name: str, data: bytes):
    """A case's preparation: the file ``name`` in the test's folder, with ``data``."""
    return lambda tmp: (tmp / name).write_bytes(data)


#: MNIST from tmp_path/data: tiny IDX files (test_data.write_idx, 30 train and 12 test images), which a case then spoils
TINY_MNIST = ["--data.init_args.data_dir={tmp}/data", "--data.init_args.download=false", "--data.init_args.n_train=20",
              "--data.init_args.n_test=10", "--data.init_args.batch_size=4"]


def corrupt_idx(how: str):
    def prepare(tmp: Path) -> None:
        raw = tmp / "data" / "MNIST" / "raw"
        write_idx(raw)
        if how == "swap_labels":  # the t10k labels (12) under the train name (30 images)
            (raw / "train-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
        elif how == "truncate":
            data = (raw / "train-images-idx3-ubyte").read_bytes()
            (raw / "train-images-idx3-ubyte").write_bytes(data[: len(data) // 2])
        elif how == "magic":  # a labels file under the images name
            data = (raw / "t10k-images-idx3-ubyte").read_bytes()
            (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">I", 2049) + data[4:])
        elif how == "empty":
            (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
        elif how == "label":
            data = bytearray((raw / "train-labels-idx1-ubyte").read_bytes())
            data[8 + 5] = 12
            (raw / "train-labels-idx1-ubyte").write_bytes(bytes(data))
        elif how == "rows":  # the same bytes, read as 14 x 56 images
            data = (raw / "train-images-idx3-ubyte").read_bytes()
            (raw / "train-images-idx3-ubyte").write_bytes(data[:8] + struct.pack(">II", 14, 56) + data[16:])

    return prepare


#: folders a case made read-only, made writable again after it
_READ_ONLY: list[Path] = []


def read_only(name: str):
    """A case's preparation: the folder ``name``, which this process cannot write into: mode 0o555, and for root (whom
    the mode does not stop) the immutable attribute (``chattr +i``); skipped where neither stops a write."""

    def prepare(tmp: Path) -> None:
        folder = tmp / name
        folder.mkdir()
        _READ_ONLY.append(folder)
        folder.chmod(0o555)
        if os.access(folder, os.W_OK) and shutil.which("chattr"):
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if os.access(folder, os.W_OK):
            pytest.skip(f"cannot make a folder read-only for this user (uid {os.getuid()}) here")

    return prepare


def _make_writable_again() -> None:
    while _READ_ONLY:
        folder = _READ_ONLY.pop()
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


#: (config, extra arguments, words the message must contain[, a preparation of the test's folder]); ``{tmp}`` in an
#: argument is that folder
CLI = {
    "unknown optimizer": ("exp1_sgd", ["--model.optimizer.class_path=torch.optim.Nope"], ["torch.optim.Nope"]),
    "objective not an Objective": (
        "exp1_sgd",
        ["--model.objective=torch.nn.MSELoss"],
        ["model.objective=torch.nn.MSELoss", "allowed: an Objective"],
    ),
    "objective of the other task": (
        "exp1_sgd",
        ["--model.objective=gf_lightning.components.CrossEntropy"],
        ["model.objective", "classification objective", "SinCosRegression", "RelativeError"],
    ),
    "standardize not a bool": (
        "exp1_sgd",
        ["--data.init_args.standardize=maybe"],
        ["data.init_args.standardize=maybe", "true or false"],
    ),
    "standardize one sample": (
        "exp1_sgd",
        [
            "--data.init_args.standardize=true",
            "--data.init_args.n_samples=2",
            "--data.init_args.train_fraction=0.5",
            "--data.init_args.batch_size=1",
        ],
        ["data.standardize", "1 training samples"],
    ),
    "sgd lr <= 0": ("exp1_sgd", ["--model.optimizer.init_args.lr=-1"], ["model.optimizer", "-1"]),
    "an optimizer setting": (
        "exp1_sav",
        ["--model.optimizer.init_args.C=-5"],
        ["model.optimizer.init_args.C must be a finite number > 0; got -5"],
    ),
    "net m <= 0": ("exp1_sgd", ["--model.net.init_args.m=0"], ["model.net.m", "positive integer"]),
    "net unknown init": ("exp1_sgd", ["--model.net.init_args.init=xavier"], ["model.net.init", "fan_in", "kaiming"]),
    "net d differs from data": ("exp1_sgd", ["--model.net.init_args.d=39"], ["model.net.init_args.d", "39", "40"]),
    "net k differs from data": ("exp1_sgd", ["--model.net.init_args.k=3"], ["model.net.init_args.k", "3", "1"]),
    "task differs from data": ("exp1_sgd", ["--model.task=classification"], ["model.task", "regression"]),
    "unknown task": ("exp1_sgd", ["--model.task=segmentation"], ["model.task", "regression", "classification"]),
    "batch larger than training set": (
        "exp1_sgd",
        ["--data.init_args.batch_size=9000"],
        ["data.batch_size", "9000", "8000"],
    ),
    "batch size 0": ("exp1_sgd", ["--data.init_args.batch_size=0"], ["data.batch_size", "positive integer"]),
    "too few samples": ("exp1_sgd", ["--data.init_args.n_samples=1"], ["data.n_samples", ">= 2"]),
    "train fraction": ("exp1_sgd", ["--data.init_args.train_fraction=1.5"], ["data.train_fraction", "(0, 1)"]),
    "train fraction at its bound": (
        "exp1_sgd",
        ["--data.init_args.train_fraction=1.0"],
        ["data.train_fraction", "(0, 1)"],
    ),
    "negative input std": ("exp3_sgd", ["--data.init_args.std=-0.2"], ["data.std", "> 0"]),
    "steps per call 0": (
        "exp1_sgd",
        ["--data.init_args.steps_per_call=0"],
        ["data.steps_per_call", "positive integer"],
    ),
    "checkpoint cadence inside a call": (
        "exp1_sgd",
        ["--checkpoint.every_n_train_steps=10"],
        ["every_n_train_steps=10", "data.steps_per_call=32", "multiple"],
    ),
    "guard cadence": (
        "exp1_sgd",
        ["--model.check_finite_every_n_steps=0"],
        ["model.check_finite_every_n_steps", ">= 1"],
    ),
    # (16-mixed on a CPU becomes bf16-mixed, which the methods accept; its refusal on a GPU is test_optim's no-closure
    # case)
    "16-bit precision": (
        "exp1_sav",
        ["--trainer.precision=16-true"],
        ["trainer.precision", "16-true", "32-true", "bf16-mixed", "without a closure"],
    ),
    "IEQ in bf16-mixed": (
        "exp1_ieq",
        ["--trainer.precision=bf16-mixed"],
        ["trainer.precision", "'bf16-mixed'", "IEQ", "32-true", "three significant digits"],
    ),
    "key that does not exist": (
        "exp1_sgd",
        ["--model.optimizer.init_args.momentun=0.9"],
        ["model.optimizer.init_args.momentun", "did you mean model.optimizer.init_args.momentum?"],
    ),
    "top-level key that does not exist": ("exp1_sgd", ["--model.nope=1"], ["nope"]),
    "mnist more samples than the files": (
        "exp4_sgd",
        ["--data.init_args.n_train=70000"],
        ["data.n_train", "70000", "60000"],
    ),
    # --- issue 13
    # --------------------------------------------------------------------------------------------------------- MNIST
    # files (tiny ones in tmp_path/data): each caught by its header, size and count before training, naming the file
    "mnist t10k labels under the train name (trained on mismatched labels)": (
        "exp4_sgd",
        TINY_MNIST,
        ["train-labels-idx1-ubyte", "12 labels", "30 images"],
        corrupt_idx("swap_labels"),
    ),
    "mnist images file truncated (traceback)": (
        "exp4_sgd",
        TINY_MNIST,
        ["train-images-idx3-ubyte", "truncated", "30 images"],
        corrupt_idx("truncate"),
    ),
    "mnist wrong magic number (traceback)": (
        "exp4_sgd",
        TINY_MNIST,
        ["t10k-images-idx3-ubyte", "magic number 2049", "2051"],
        corrupt_idx("magic"),
    ),
    "mnist empty labels file (traceback)": (
        "exp4_sgd",
        TINY_MNIST,
        ["t10k-labels-idx1-ubyte", "empty"],
        corrupt_idx("empty"),
    ),
    "mnist label out of range (index error mid-step)": (
        "exp4_sgd",
        TINY_MNIST,
        ["train-labels-idx1-ubyte", "label 12", "0 … 9"],
        corrupt_idx("label"),
    ),
    "mnist images of another size (shape error)": (
        "exp4_sgd",
        TINY_MNIST,
        ["train-images-idx3-ubyte", "14 x 56", "28 x 28"],
        corrupt_idx("rows"),
    ),
    # data that overflow: blamed on the optimizer at step 1 before
    "input std so large the squares overflow": (
        "exp3_sgd",
        ["--data.init_args.std=1e30"],
        ["data.std = 1e+30", "x_train", "overflow"],
    ),
    "quadratic targets overflow float32": ("exp2_sgd", ["--data.init_args.high=1e30"], ["data.high = 1e+30", "finite"]),
    "train fraction leaves no sample to train (said 'allowed: 1 … 0')": (
        "exp1_sgd",
        ["--data.init_args.n_samples=2", "--data.init_args.train_fraction=0.1"],
        ["data.train_fraction = 0.1", "data.n_samples = 2", "0 samples to train", "0.5 … 0.5"],
    ),
    # torch's optimizers, as strictly as the project's (lr = nan trained to a NaN at step 2)
    "sgd lr NaN": (
        "exp1_sgd",
        ["--model.optimizer.init_args.lr=.nan"],
        ["model.optimizer.init_args.lr", "finite number > 0", "nan"],
    ),
    "sgd lr = 0 (trains nothing)": ("exp1_sgd", ["--model.optimizer.init_args.lr=0"], ["init_args.lr", "> 0", "0.0"]),
    "sgd momentum < 0 (torch's message named no path)": (
        "exp1_sgd",
        ["--model.optimizer.init_args.momentum=-0.5"],
        ["model.optimizer.init_args.momentum", "[0, 1)", "-0.5"],
    ),
    "sgd weight decay < 0": (
        "exp1_sgd",
        ["--model.optimizer.init_args.weight_decay=-1"],
        ["model.optimizer.init_args.weight_decay", ">= 0"],
    ),
    "adam beta >= 1": (
        "exp1_adam",
        ["--model.optimizer.init_args.betas=[0.9,1.5]"],
        ["model.optimizer.init_args.betas", "[0, 1)", "1.5"],
    ),
    "adam eps = 0": ("exp1_adam", ["--model.optimizer.init_args.eps=0"], ["model.optimizer.init_args.eps", "> 0"]),
    # trainer flags that Lightning refused with a traceback, or (manual optimization) at the start of fit
    "max epochs < -1": ("exp1_sgd", ["--trainer.max_epochs=-5"], ["trainer.max_epochs=-5", "-1 (no limit)"]),
    "validation every 0 epochs (ZeroDivisionError)": (
        "exp1_sgd",
        ["--trainer.check_val_every_n_epoch=0"],
        ["trainer.check_val_every_n_epoch=0", ">= 1"],
    ),
    # a flag no check above knows: Lightning's own refusal (MisconfigurationException), as one line
    "a flag only Lightning checks": (
        "exp1_sgd",
        ["--trainer.limit_train_batches=-1"],
        ["trainer:", "limit_train_batches", "[0.0, 1.0]"],
    ),
    "gpu without a GPU": (
        "exp1_sgd",
        ["--trainer.accelerator=gpu"],
        ["trainer.accelerator='gpu'", "allowed here", "cpu"],
        lambda tmp: torch.cuda.is_available() and pytest.skip("this machine has a GPU"),
    ),
    "unknown accelerator": ("exp1_sgd", ["--trainer.accelerator=abacus"], ["trainer.accelerator='abacus'", "cpu"]),
    "zero devices": ("exp1_sgd", ["--trainer.devices=0"], ["trainer.devices", "0", ">= 1", "'auto'"]),
    "zero nodes": ("exp1_sgd", ["--trainer.num_nodes=0"], ["trainer.num_nodes=0", ">= 1"]),
    "unknown strategy": ("exp1_sgd", ["--trainer.strategy=foo"], ["trainer.strategy='foo'", "ddp", "auto"]),
    "max time not DD:HH:MM:SS": ("exp1_sgd", ["--trainer.max_time=abc"], ["trainer.max_time='abc'", "DD:HH:MM:SS"]),
    "gradient clipping with manual optimization": (
        "exp1_sgd",
        ["--trainer.gradient_clip_val=1"],
        ["trainer.gradient_clip_val=1.0", "manual optimization", "null or 0"],
    ),
    "gradient accumulation with manual optimization": (
        "exp1_sgd",
        ["--trainer.accumulate_grad_batches=2"],
        ["trainer.accumulate_grad_batches=2", "manual optimization", "allowed: 1"],
    ),
    # output folders: a traceback at the first write, or at the first checkpoint after an epoch of work
    "output folder read-only": (
        "exp1_sgd",
        ["--trainer.default_root_dir={tmp}/ro"],
        ["trainer.default_root_dir=", "/ro'", "not writable"],
        read_only("ro"),
    ),
    "output path is a file": (
        "exp1_sgd",
        ["--trainer.default_root_dir={tmp}/a_file"],
        ["trainer.default_root_dir=", "a_file", "is a file", "a folder"],
        lambda tmp: (tmp / "a_file").write_text("x"),
    ),
    "checkpoint folder read-only": (
        "exp1_sgd",
        ["--checkpoint.dirpath={tmp}/ro/ckpts"],
        ["checkpoint.dirpath=", "ro/ckpts", "not writable"],
        read_only("ro"),
    ),
    # the network against the data: a net without .d/.k failed with a shape error at the first step
    "net input size differs from data (no .d)": (
        "exp1_sgd",
        [
            "--model.net.class_path=torch.nn.Linear",
            "--model.net.init_args.in_features=3",
            "--model.net.init_args.out_features=1",
        ],
        ["model.net (Linear)", "(40,)", "2x40 and 3x1"],
    ),
    "net output size differs from data (no .k)": (
        "exp1_sgd",
        [
            "--model.net.class_path=torch.nn.Linear",
            "--model.net.init_args.in_features=40",
            "--model.net.init_args.out_features=3",
        ],
        ["model.net (Linear)", "(2, 3)", "(2, 1)"],
    ),
    # what jsonargparse refuses, worded as one readable line that names the setting and what is allowed
    "lr not a number": (
        "exp1_sgd",
        ["--model.optimizer.init_args.lr=abc"],
        ["model.optimizer.init_args.lr=abc", "allowed: a number"],
    ),
    "m not an integer": (
        "exp1_sgd",
        ["--model.net.init_args.m=1.5"],
        ["model.net.init_args.m=1.5", "allowed: an integer"],
    ),
    "precision unknown": (
        "exp1_sgd",
        ["--trainer.precision=abc"],
        ["trainer.precision=abc", "'32-true'", "'bf16-mixed'"],
    ),
    "unknown network class": (
        "exp1_sgd",
        ["--model.net.class_path=foo.Bar"],
        ["model.net", "'foo.Bar'", "No module named 'foo'", "dotted import path"],
    ),
    "unknown data class": (
        "exp1_sgd",
        ["--data.class_path=gf_lightning.data.Nope"],
        ["data", "'gf_lightning.data.Nope'", "dotted import path"],
    ),
    "misspelled trainer key": (
        "exp1_sgd",
        ["--trainer.max_epochz=3"],
        ["--trainer.max_epochz", "not a setting", "did you mean trainer.max_epochs"],
    ),
    # argparse would take a key that begins a longer one for the longer one
    "truncated key": (
        "exp1_sgd",
        ["--checkpoint.dirpat=out"],
        ["--checkpoint.dirpat", "not a setting", "did you mean checkpoint.dirpath"],
    ),
    "truncated optimizer key": (
        "exp1_sgd",
        ["--model.optimizer.init_args.l=0.1"],
        ["model.optimizer.init_args.l", "not a setting", "did you mean model.optimizer.init_args.lr"],
    ),
    "misspelled key in a config file": (
        "exp1_sgd",
        ["--config={tmp}/typo.yaml"],
        ["trainer.max_epochz", "not a setting", "did you mean trainer.max_epochs"],
        write("typo.yaml", b"trainer:\n  max_epochz: 3\n"),
    ),
    "config file YAML syntax error": (
        "exp1_sgd",
        ["--config={tmp}/bad.yaml"],
        ["bad.yaml", "not valid YAML at line 2", "expected ',' or ']'"],
        write("bad.yaml", b"a: [1, 2\n"),
    ),
    "config file missing": (
        "exp1_sgd",
        ["--config={tmp}/nothere.yaml"],
        ["--config", "nothere.yaml", "does not exist"],
    ),
    "config file empty (said 'Unexpected config:')": (
        "exp1_sgd",
        ["--config={tmp}/empty.yaml"],
        ["empty.yaml", "empty", "YAML mapping"],
        write("empty.yaml", b""),
    ),
    "config file a YAML list": (
        "exp1_sgd",
        ["--config={tmp}/list.yaml"],
        ["list.yaml", "holds a list", "YAML mapping"],
        write("list.yaml", b"- 1\n- 2\n"),
    ),
    "config file not UTF-8 (traceback)": (
        "exp1_sgd",
        ["--config={tmp}/latin1.yaml"],
        ["latin1.yaml", "not UTF-8", "0xe9", "line 2"],
        write("latin1.yaml", "seed_everything: 0\n# caf\u00e9\n".encode("latin-1")),
    ),
    # --- issue 29
    # ---------------------------------------------------------------------------------------------------------
    "seed below numpy's range (traceback)": (
        "exp1_sgd",
        ["--seed_everything=-1"],
        ["seed_everything=-1", "0 to 4294967295"],
    ),
    "seed above numpy's range (traceback)": (
        "exp1_sgd",
        ["--seed_everything=4294967296"],
        ["seed_everything=4294967296", "0 to 4294967295"],
    ),
    "a key twice in a config file (the last one kept silently)": (
        "exp1_sgd",
        ["--config={tmp}/twice.yaml"],
        ["twice.yaml", "'max_epochs'", "lines 2 and 3", "each key once"],
        write("twice.yaml", b"trainer:\n  max_epochs: 1\n  max_epochs: 5\n"),
    ),
    "Burgers PINN with ReLU (trained without the viscous term)": (
        "paper/burgers",
        ["--model.net.init_args.activation=relu"],
        ["model.net (MLP with activation 'relu')", "u_xx = 0", "viscous term", "tanh"],
    ),
}


def fit_args(config: str, extra: list[str], tmp_path: Path, data_dir: Path | None = None) -> list[str]:
    data = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
    return cli_args(config, tmp_path, *data, *extra, epochs=1)


def run(config: str, extra: list[str], tmp_path: Path, data_dir: Path | None = None) -> int:
    return cli_main(fit_args(config, extra, tmp_path, data_dir))


@pytest.mark.parametrize("case", CLI)
def test_cli_refuses_bad_input_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            request: pytest.FixtureRequest) -> None:
    config, extra, words, *prepare = CLI[case]
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    own_data = any(arg.startswith("--data.init_args.data_dir") for arg in extra)
    data_dir = request.getfixturevalue("mnist_dir") if config.startswith("exp4") and not own_data else None
    try:
        for step in prepare:
            step(tmp_path)
        with pytest.raises(SystemExit) as exc:
            run(config, extra, tmp_path, data_dir)
    finally:
        _make_writable_again()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gf_lightning: error: ") and len(err.strip().splitlines()) == 1, err[-800:]
    for word in words:
        assert word in err, f"{word!r} not in: {err[-800:]}"
    assert not list(tmp_path.rglob("*.ckpt")), "no work should have started"


def test_the_command_line_exits_2_with_the_message_on_stderr(tmp_path: Path) -> None:
    """``python -m gf_lightning`` as a user runs it, from another directory: exit status 2, the message as the last line
    on stderr (Lightning's "Seed set to 0" may come before it), no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "gf_lightning", *fit_args("exp1_sav", ["--model.optimizer.init_args.lam=-1"], tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "gf_lightning: error: model.optimizer.init_args.lam must be a finite number >= 0; got -1.0"
    ), proc.stderr[-2000:]


def test_missing_mnist_files_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        run("exp4_sgd", [f"--data.init_args.data_dir={tmp_path}", "--data.init_args.download=false"], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "MNIST" / "raw") in err and "train-images-idx3-ubyte" in err and "data.download" in err
