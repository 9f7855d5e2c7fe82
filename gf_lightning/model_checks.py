"""Whether a :class:`~gf_lightning.module.GradientFlowModule` can run as configured: its own settings, and how it fits
the data and the trainer. Each check raises :class:`~gf_lightning.errors.GFConfigError` with one line that names the
setting, what it was given and what is allowed; the command line runs the data and trainer checks before any work
(:meth:`~gf_lightning.cli.GFLightningCLI.before_fit`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from .components.objectives import DEFAULT_OBJECTIVES, Objective
from .errors import GFConfigError
from .optim.base import EnergyOptimizer
from .validation import check_torch_optimizer, check_torch_settings

#: precisions each kind of optimizer accepts, and why the others are refused
ENERGY_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")
ENERGY_REASON = "16-bit mixed precision with a gradient scaler steps the optimizer without a closure"
RESIDUAL_PRECISIONS = ("32-true", "32", "64-true", "64")
RESIDUAL_REASON = (
    "its energy is ½‖q‖² of the residual itself, which 16-bit precision computes to about three significant digits"
)


def check_settings(net: nn.Module, objective: Objective | None, task: str | None, particle_time: Any,
                   check_finite_every_n_steps: Any) -> None:
    """The module's own settings, each alone and against each other."""
    if task not in (None, "regression", "classification"):
        raise GFConfigError(
            f"model.task must be 'regression' or 'classification' (or null: from the data); got {task!r}"
        )
    if objective is not None and not isinstance(objective, Objective):
        raise GFConfigError(
            f"model.objective must be a gf_lightning.components objective (MeanSquaredError, RelativeError, "
            f"CrossEntropy, or a subclass of Objective); got {type(objective).__name__}"
        )
    if objective is not None and task is not None and objective.task != task:
        raise GFConfigError(
            f"model.task is {task!r} but model.objective ({objective!r}) is a {objective.task} objective"
        )
    if not isinstance(particle_time, bool):
        raise GFConfigError(f"model.particle_time must be true or false; got {particle_time!r}")
    if particle_time and not isinstance(getattr(net, "m", None), int):
        raise GFConfigError(
            f"model.particle_time needs a network of m particles, the hidden units of a two-layer net (TwoLayerNet, "
            f"its m); {type(net).__name__} has no such count"
        )
    if not isinstance(check_finite_every_n_steps, int) or check_finite_every_n_steps < 1:
        raise GFConfigError(
            f"model.check_finite_every_n_steps must be an integer >= 1; got {check_finite_every_n_steps!r}"
        )


def optimizer_class(optimizer, net: nn.Module) -> type:
    """Build the optimizer once on a throw-away copy of the parameters, so a bad setting fails before any work; its
    class."""
    probe = [nn.Parameter(p.detach().clone()) for p in net.parameters()]
    try:
        check_torch_settings(optimizer)  # SGD, Adam: lr, momentum, betas, … as strictly as the project's own
        opt = optimizer(probe)
        check_torch_optimizer(opt)
    except GFConfigError as err:
        raise GFConfigError(f"model.optimizer.init_args.{err}") from None
    except (ValueError, TypeError) as err:
        raise GFConfigError(f"model.optimizer: {err}") from None
    return type(opt)


def check_data(model: L.LightningModule, dm: Any) -> None:
    """The model against a data module of the project's (one with ``dims``): the task, the objective, the network's
    input and output sizes (``.d``/``.k``, and one forward of two training inputs), what the objective needs of the
    network."""
    if dm is None or not hasattr(dm, "dims"):
        return
    objective, task = model.objective, model.task
    if objective is not None and objective.task != dm.task:
        raise GFConfigError(
            f"model.objective ({objective!r}) is a {objective.task} objective but the data ({type(dm).__name__}) are "
            f"{dm.task}; allowed: " + ("MeanSquaredError, RelativeError" if dm.task == "regression" else "CrossEntropy")
        )
    if task is not None and task != dm.task:
        raise GFConfigError(f"model.task is {task!r} but the data ({type(dm).__name__}) is {dm.task!r}")
    problem = getattr(dm, "problem", None)  # rows that are not plain targets: only their objective reads them
    if objective is None and problem is not None:
        raise GFConfigError(
            f"data ({type(dm).__name__}) holds {problem.rows} whose y is ({', '.join(problem.y_columns)}): "
            f"model.objective must be {problem.objective}; got None"
        )
    check = getattr(objective, "check_data", None)  # the objective checks its data, never the reverse
    if check is not None:
        check(dm)
    d, k = dm.dims
    for name, want in (("d", d), ("k", k)):
        have = getattr(model.net, name, want)
        if have != want:
            raise GFConfigError(
                f"model.net.init_args.{name} = {have} does not match the data ({type(dm).__name__}: {name} = {want})"
            )
    if hasattr(dm, "tensors"):  # any network, with or without .d/.k: one forward of two inputs
        check_net_accepts(model.net, dm.tensors["x_train"], k, type(dm).__name__)
    (objective or DEFAULT_OBJECTIVES[dm.task]()).check_net(model.net)  # e.g. a PINN's network needs second derivatives


def check_trainer(model: L.LightningModule, trainer: L.Trainer, dm: Any) -> None:
    """What ``fit`` needs of the trainer: a precision the optimizer's energy survives, and checkpoints every so many
    steps that fall between ``training_step`` calls."""
    precision, cls = str(trainer.precision), model.optimizer_class
    residual = getattr(cls, "closure_returns", "loss") == "residual"
    allowed, reason = (RESIDUAL_PRECISIONS, RESIDUAL_REASON) if residual else (ENERGY_PRECISIONS, ENERGY_REASON)
    if issubclass(cls, EnergyOptimizer) and precision not in allowed:
        raise GFConfigError(
            f"trainer.precision={precision!r} is not supported by {cls.__name__}; allowed: "
            f"{', '.join(a for a in allowed if '-' in a)} ({reason})"
        )
    per_call = getattr(dm, "steps_per_call", 1)
    for ckpt in trainer.checkpoint_callbacks:
        every = getattr(ckpt, "_every_n_train_steps", 0) or 0
        if per_call > 1 and every % per_call:
            # Lightning looks at global_step only between calls: a checkpoint every 10 steps at 8 steps a call would
            # land every 40
            raise GFConfigError(
                f"checkpoint every_n_train_steps={every} is not a multiple of data.steps_per_call={per_call}: "
                "checkpoints are taken between training_step calls; use a multiple, or data.steps_per_call=1"
            )


def check_net_accepts(net: nn.Module, x: Tensor, k: int, data_name: str) -> None:
    """One forward pass of two training inputs, in eval mode and without gradients (no batch-norm statistics move): the
    network must take the data's inputs and give ``(batch, k)`` outputs. Catches a network of another input size that
    has no ``.d`` for the static check, before the first step raises a shape error."""
    x = x[:2]
    params = list(net.parameters())
    if params and params[0].is_floating_point():
        x = x.to(params[0].dtype)
    name = type(net).__name__
    modes = [m.training for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GFConfigError(
            f"model.net ({name}) does not accept the data's inputs ({data_name}: shape {tuple(x.shape[1:])} per "
            "sample): "
            f"{first}; allowed: a network whose input size is {tuple(x.shape[1:])} and output size {k}"
        ) from None
    finally:
        for m, mode in zip(net.modules(), modes):
            m.training = mode
    shape = tuple(out.shape) if isinstance(out, Tensor) else None
    if shape != (len(x), k):
        raise GFConfigError(
            f"model.net ({name}) maps the data's inputs of shape {tuple(x.shape)} to "
            f"{'outputs of shape ' + str(shape) if shape is not None else type(out).__name__}; the data "
            f"({data_name}) need outputs of shape {(len(x), k)} (k = {k})"
        )
