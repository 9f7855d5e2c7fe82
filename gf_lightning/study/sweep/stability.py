"""Gradient descent's stability limit at the initial weights: ``2 / λ_max`` of the training loss's Hessian.

Gradient descent on a quadratic with Hessian ``H`` is stable for ``Δt < 2 / λ_max(H)``; near the initial weights the
loss is that quadratic, so a larger step grows along the top eigenvector at once. ``λ_max`` comes from power iteration
with Hessian-vector products (double back-propagation: the gradient's graph is built once, each product is one more
backward pass), never from the ``P × P`` Hessian itself. The model and data are built by the CLI from the sweep's
command line, so they are exactly the runs' own at step 0 (same seed, same initialisation, same data draw).

When the model feeds the optimizer ``s·∇L`` (``gradient_scale``: the width ``m`` in particle time), SGD's step is
``Δt·s·∇L`` and the limit is ``2 / (s·λ_max)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import GFConfigError
from .grid import SweepError


@dataclass(frozen=True)
class Eigen:
    """The largest eigenvalue found by power iteration, how many Hessian-vector products it took, and whether the
    Rayleigh quotient settled (relative change below the tolerance) within the allowed iterations."""

    value: float
    products: int
    converged: bool


def hessian_vector_product(loss_fn: Callable[[], Tensor],
                           params: Sequence[Tensor]) -> Callable[[list[Tensor]], list[Tensor]]:
    """``v ↦ H v`` for the Hessian ``H`` of ``loss_fn()`` in ``params``: the gradient with its graph, once; then one
    backward pass per product."""
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, out)]

    return hvp


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _power(op: Callable[[list[Tensor]], list[Tensor]], start: list[Tensor], iters: int, tol: float) -> Eigen:
    """The eigenvalue of largest magnitude of the symmetric operator ``op``, from ``start``."""
    norm = math.sqrt(_dot(start, start))
    v = [x / norm for x in start]
    value, previous = 0.0, math.nan
    for n in range(1, iters + 1):
        hv = op(v)
        value = _dot(v, hv)  # the Rayleigh quotient, v of unit length
        size = math.sqrt(_dot(hv, hv))
        if size == 0.0 or not math.isfinite(size):
            return Eigen(value if math.isfinite(size) else math.nan, n, size == 0.0)
        if abs(value - previous) <= tol * abs(value):
            return Eigen(value, n, True)
        previous = value
        v = [x / size for x in hv]
    return Eigen(value, iters, False)


def lambda_max(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], iters: int = 200, tol: float = 1e-5,
               seed: int = 0) -> Eigen:
    """The largest (most positive) eigenvalue of the Hessian of ``loss_fn()`` in ``params``.

    Power iteration finds the eigenvalue of largest *magnitude*. When that is negative (a loss that curves down more
    than up), a second run on ``H − μI`` (``μ`` that eigenvalue: every eigenvalue of the shifted operator is ``≥ 0``,
    the largest is ``λ_max − μ``) finds the largest one. The start vector is drawn with ``seed``."""
    params = [p for p in params if p.requires_grad]
    hvp = hessian_vector_product(loss_fn, params)
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    first = _power(hvp, start, iters, tol)
    if not first.value < 0:
        return first
    mu = first.value

    def shifted(v: list[Tensor]) -> list[Tensor]:
        return [h - mu * x for h, x in zip(hvp(v), v)]

    second = _power(shifted, start, iters, tol)
    return Eigen(second.value + mu, first.products + second.products, second.converged)


# -- the initial state of a sweep's point ------------------------------------------------------------------------------
@dataclass
class InitialState:
    """What the training loss is at the initial weights, and gradient descent's limit there, for one group of points
    (the
    settings that decide the weights and data: seed, network, data, …)."""

    group: list[list[str]]  #: [[key, value], …]: the grid's settings of this group
    args: list[str]  #: the command line the model and data were built from (after ``fit``)
    train_loss: float  #: the training loss over the whole training set at the initial weights
    lambda_max: float = math.nan  #: the largest eigenvalue of its Hessian (on ``samples`` training samples)
    gradient_scale: float = 1.0  #: what the model multiplies the gradient by before the optimizer sees it
    samples: int = 0
    products: int = 0  #: Hessian-vector products taken
    converged: bool = False
    seconds: float = 0.0
    task: str = "regression"
    error: str = ""  #: why λ_max could not be computed ('' when it was)
    #: the held-out metrics at the initial weights, as validation logs them (``val/loss``; ``val/rel_err``,
    #: ``val/rel_l2`` or ``val/acc``)
    val: dict[str, float] = field(default_factory=dict)

    @property
    def sgd_limit(self) -> float:
        """``2 / (gradient_scale · λ_max)``: the largest step at which gradient descent is stable at the initial
        weights."""
        if not self.lambda_max > 0:
            return math.inf if self.lambda_max == self.lambda_max else math.nan
        return 2.0 / (self.gradient_scale * self.lambda_max)


@contextlib.contextmanager
def quiet():
    """No output from building a CLI in this process: Lightning's info lines go to its loggers, the rest to
    stdout/stderr; what was written to stderr is yielded (a refusal's one line is in it)."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    err = io.StringIO()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            yield err
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def build(args: list[str], what: str):
    """The CLI of ``args`` (a point's command line after ``fit``), built in this process without running: the model, the
    data module and the trainer, in a scratch folder. A refusal raises :class:`SweepError` with the CLI's own line."""
    from ...cli import cli_main

    args = [a for a in args if not a.startswith("--trainer.default_root_dir=")]
    with tempfile.TemporaryDirectory(prefix="gf-sweep-") as scratch, quiet() as err:
        try:
            return cli_main([*args, f"--trainer.default_root_dir={scratch}", "--trainer.accelerator=cpu",
                             "--trainer.devices=1"], run=False)
        except SystemExit:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else "refused")
            raise SweepError(f"{what}: the CLI refuses it: {reason.partition('error:')[2].strip() or reason}") from None


def _objective(model, datamodule) -> Callable[[Tensor, Tensor], Tensor]:
    """The model's training loss ``(net output or input, target) → mean loss``, as its training step computes it."""
    task = getattr(model, "task", None) or getattr(datamodule, "task", "regression")
    model.task = task
    objective = getattr(model, "objective", None)
    if objective is None and hasattr(model, "objective"):
        from ... import module as module_

        defaults = getattr(module_, "DEFAULT_OBJECTIVES", None)
        objective = defaults[task]() if defaults else None
    if objective is not None:
        return lambda x, y: objective.loss(objective.predict(model.net, x), y)
    return lambda x, y: model.loss(model.net(x), y)


def logged_tags(model, datamodule) -> list[str]:
    """The held-out tags validation logs for this model and data (what :func:`_held_out` computes at the start)."""
    task = getattr(model, "task", None) or getattr(datamodule, "task", "regression")
    if task == "classification":
        return ["val/loss", "val/acc"]
    solution = getattr(getattr(model, "objective", None), "solution", None)
    return ["val/loss", "val/rel_err" if solution is None else "val/rel_l2"]


def _held_out(model, x: Tensor, y: Tensor, loss_of: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
    """The held-out metrics of the untrained model, over the whole held-out split in one batch (validation's default),
    as validation names them: an objective with an exact solution (a PDE's) compares its predicted solution with it."""
    objective = getattr(model, "objective", None)
    with torch.no_grad():
        out = {"val/loss": float(loss_of(x, y))}
        pred = objective.predict(model.net, x) if objective is not None else model.net(x)
        if model.task == "classification":
            out["val/acc"] = float((pred.argmax(dim=1) == y).double().mean())
        else:
            solution = getattr(objective, "solution", None)
            u, target = solution(pred, y) if solution is not None else (pred, y)
            rel = float((u - target).double().square().sum() / target.double().square().sum())
            if solution is None:
                out["val/rel_err"] = rel
            else:
                out["val/rel_l2"] = math.sqrt(rel)
    return out


def _whole_set(model) -> bool:
    """Whether the training loss must be taken over the whole set at once: an objective that is not a mean over samples
    (a PINN's sum of per-kind means) is another function on a subset or a chunk."""
    objective = getattr(model, "objective", None)
    return objective is not None and not getattr(objective, "per_sample", True)


def initial_state(args: list[str], group: list[list[str]], samples: int = 4096, iters: int = 200, tol: float = 1e-5,
                  hessian: bool = True) -> InitialState:
    """The training loss at the initial weights of the run ``args`` builds, and (``hessian``) ``λ_max`` of its Hessian
    on the first ``samples`` training samples (0, or an objective that is no mean over samples: all of them) and
    gradient descent's limit."""
    start = time.monotonic()
    what = "the point " + " ".join(f"{k}={v}" for k, v in group) if group else "the config"
    cli = build(args, what)
    model, dm = cli.model, cli.datamodule
    try:
        with quiet():
            dm.setup("fit")
    except GFConfigError as err:
        raise SweepError(f"{what}: the data refuse it: {err}") from None
    tensors = dm.tensors
    x, y = tensors["x_train"], tensors["y_train"]
    loss_of = _objective(model, dm)
    model.train()
    whole = _whole_set(model)
    size = len(x) if whole else 8192
    with torch.no_grad():
        chunks = [(len(xb), loss_of(xb, yb).double().item()) for xb, yb in zip(x.split(size), y.split(size))]
    state = InitialState(group, list(args), sum(n * v for n, v in chunks) / len(x), task=model.task,
                         gradient_scale=float(getattr(model, "gradient_scale", 1.0)),
                         val=_held_out(model, tensors["x_test"], tensors["y_test"], loss_of))
    if hessian:
        n = len(x) if samples <= 0 or whole else min(samples, len(x))
        xs, ys = x[:n], y[:n]
        try:
            eig = lambda_max(lambda: loss_of(xs, ys), list(model.net.parameters()), iters=iters, tol=tol)
            state.lambda_max, state.products, state.converged, state.samples = eig.value, eig.products, eig.converged, n
        except RuntimeError as err:  # a network without second derivatives, out of memory, …
            state.error = " ".join(str(err).split())[:200]
    else:
        state.error = "not computed (--no-hessian)"
    state.seconds = time.monotonic() - start
    return state
