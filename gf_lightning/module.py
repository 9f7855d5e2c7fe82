"""One ``LightningModule`` for every method: manual optimization, the optimizer injected from the config."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from .checkpointing import last_good_checkpoint
from .components.objectives import DEFAULT_OBJECTIVES, Objective
from .data.batching import Batch
from .errors import GFConfigError, NonFiniteError
from .metrics import RatioOfSums, RelativeError, RelativeL2Error
from .optim.base import EnergyOptimizer
from .optim.distributed import gather_rows
from .resume import CHECKPOINT_KEY as RUN_CHECKPOINT_KEY
from .resume import override_optimizer_groups
from .validation import check_net_accepts, check_torch_optimizer, check_torch_settings

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
#: where a checkpoint keeps the training epoch's running (loss sum, sample count)
EPOCH_SUMS_KEY = "gf_lightning_epoch_sums"

#: precisions each kind of optimizer accepts, and why the others are refused
ENERGY_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")
ENERGY_REASON = "16-bit mixed precision with a gradient scaler steps the optimizer without a closure"
RESIDUAL_PRECISIONS = ("32-true", "32", "64-true", "64")
RESIDUAL_REASON = (
    "its energy is ½‖q‖² of the residual itself, which 16-bit precision computes to about three significant digits"
)


def _default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


class GradientFlowModule(L.LightningModule):
    """Trains ``net`` with the injected optimizer: SGD, Adam, or one of :mod:`gf_lightning.optim`.

    Args:
        net: the network (a plain ``nn.Module``; :class:`~gf_lightning.components.TwoLayerNet` in the configs).
        optimizer: a callable that builds the optimizer from the parameters; in YAML
            ``{class_path: gf_lightning.optim.ExpSAV, init_args: {lr: 0.1, C: 1.0}}``.
        objective: the training objective (:mod:`gf_lightning.components.objectives`): the loss and IEQ's residual form.
            ``None``: the task's default, :class:`~gf_lightning.components.MeanSquaredError` for regression,
            :class:`~gf_lightning.components.CrossEntropy` for classification.
        task: ``"regression"`` or ``"classification"``; ``None`` takes the objective's, or the data module's.
        particle_time: time is the paper's particle time (Ma, Mao & Shen 2024), for a network of ``m`` particles (its
            hidden units, ``net.m``): the velocity is ``N = m ∇L`` and every inner product of velocities is the particle
            average ``⟨u, v⟩ = (1/m) Σ_k u_k·v_k``, so ``⟨N, N⟩ = m‖∇L‖²`` is the flow's energy rate. The optimizers see
            ``m ∇L``; those that form inner products of it (the SAV family, Alg. 5's ``v``, IEQ adaptive) average them
            over the particles (their ``particles`` setting). Hence, exactly: SGD at ``lr`` is SGD at ``m·lr``; the SAV
            family at ``lr, lam`` is the same scheme at ``m·lr, lam/m``; the adaptive family at ``lr, lam, eps`` is the
            same at ``√m·lr, lam/m, eps/m``. IEQ (full) gets the residual ``√m · q``, its flow at ``m·Δt`` (its logged
            energies are then ``m`` times the loss).
        check_finite_every_n_steps: how often the training loss is checked for NaN/Inf (a host sync each time);
            the parameters are checked before every validation and checkpoint regardless.

    Metrics (TensorBoard groups them by prefix), all against the optimizer step: ``train/loss`` (the objective, averaged
    over the epoch's batches by their sizes), ``val/loss`` (the objective on the held-out batches) and ``val/rel_err`` (regression:
    ``Σ(f − y)² / Σy²``, which a network predicting zero scores 1; for a PDE's objective ``val/rel_l2 = ‖u − u*‖/‖u*‖``
    instead) or ``val/acc`` (classification), per epoch; every
    ``log_every_n_steps`` optimizer steps the optimizer's ``energy/…`` and ``optim/…`` scalars.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = _default_optimizer,
        objective: Objective | None = None,
        task: str | None = None,
        particle_time: bool = False,
        check_finite_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        if task not in (None, "regression", "classification"):
            raise GFConfigError(f"model.task must be 'regression' or 'classification' (or null: from the data); got {task!r}")
        if objective is not None and not isinstance(objective, Objective):
            raise GFConfigError(
                f"model.objective must be a gf_lightning.components objective (MeanSquaredError, RelativeError, "
                f"CrossEntropy, or a subclass of Objective); got {type(objective).__name__}"
            )
        if objective is not None and task is not None and objective.task != task:
            raise GFConfigError(f"model.task is {task!r} but model.objective ({objective!r}) is a {objective.task} objective")
        if not isinstance(particle_time, bool):
            raise GFConfigError(f"model.particle_time must be true or false; got {particle_time!r}")
        if particle_time and not isinstance(getattr(net, "m", None), int):
            raise GFConfigError(
                f"model.particle_time needs a network of m particles, the hidden units of a two-layer net (TwoLayerNet, "
                f"its m); {type(net).__name__} has no such count"
            )
        if not isinstance(check_finite_every_n_steps, int) or check_finite_every_n_steps < 1:
            raise GFConfigError(f"model.check_finite_every_n_steps must be an integer >= 1; got {check_finite_every_n_steps!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "objective"], logger=False)
        self.automatic_optimization = False
        self.net = net
        self.optimizer = optimizer
        self.objective = objective
        self.task = task or (objective.task if objective is not None else None)
        self.particle_time = particle_time
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self._optimizer_class = self._validate_optimizer()
        self._residual = getattr(self._optimizer_class, "closure_returns", "loss") == "residual"
        self._epoch_loss: Tensor | None = None  # Σ batch loss × batch size over the epoch, and the sample count
        self._epoch_count = 0
        self.eval_loss = MeanMetric()  # an objective that is a mean of per-sample terms
        self.eval_ratio = RatioOfSums()  # one that is a ratio of sums (RelativeError)
        self.eval_rel = RelativeError()
        self.eval_rel_l2 = RelativeL2Error()  # objectives with a solution (BurgersPINN): ‖u − u*‖ / ‖u*‖
        self.eval_acc: Metric | None = None

    def _validate_optimizer(self) -> type:
        """Build the optimizer once on a throw-away copy of the parameters, so a bad setting fails before any work."""
        probe = [nn.Parameter(p.detach().clone()) for p in self.net.parameters()]
        try:
            check_torch_settings(self.optimizer)  # SGD, Adam: lr, momentum, betas, … as strictly as the project's own
            opt = self.optimizer(probe)
            check_torch_optimizer(opt)
        except GFConfigError as err:
            raise GFConfigError(f"model.optimizer.init_args.{err}") from None
        except (ValueError, TypeError) as err:
            raise GFConfigError(f"model.optimizer: {err}") from None
        return type(opt)

    # -- set-up --------------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # the energy/… scalars are logged every log_every_n_steps optimizer steps, inside training_step: Lightning's warning
        # that an epoch has fewer training_step calls than that (one, at data.steps_per_call 32) does not apply
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval",
                                category=PossibleUserWarning)
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None and hasattr(dm, "dims"):
            if self.objective is not None and self.objective.task != dm.task:
                raise GFConfigError(
                    f"model.objective ({self.objective!r}) is a {self.objective.task} objective but the data "
                    f"({type(dm).__name__}) are {dm.task}; allowed: "
                    + ("MeanSquaredError, RelativeError" if dm.task == "regression" else "CrossEntropy")
                )
            if self.task is None:
                self.task = dm.task
            elif self.task != dm.task:
                raise GFConfigError(f"model.task is {self.task!r} but the data ({type(dm).__name__}) is {dm.task!r}")
            d, k = dm.dims
            for name, want in (("d", d), ("k", k)):
                have = getattr(self.net, name, want)
                if have != want:
                    raise GFConfigError(
                        f"model.net.init_args.{name} = {have} does not match the data ({type(dm).__name__}: {name} = {want})"
                    )
            if hasattr(dm, "tensors"):  # any network, with or without .d/.k: one forward of two inputs
                check_net_accepts(self.net, dm.tensors["x_train"], k, type(dm).__name__)
        self.task = self.task or "regression"
        if self.objective is None:
            self.objective = DEFAULT_OBJECTIVES[self.task]()
        elif self.objective.task != self.task:
            raise GFConfigError(
                f"model.objective ({self.objective!r}) is a {self.objective.task} objective but the data are {self.task}"
            )
        self.objective.check_net(self.net)  # e.g. a PINN's network must have second derivatives
        if self.task == "classification" and self.eval_acc is None:
            self.eval_acc = MulticlassAccuracy(num_classes=getattr(self.net, "k", 10), average="micro")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.particle_time and "particles" in getattr(self._optimizer_class, "shared_settings", ()):
            return self.optimizer(self.parameters(), particles=self.net.m)  # inner products as particle averages
        return self.optimizer(self.parameters())

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        allowed, reason = (RESIDUAL_PRECISIONS, RESIDUAL_REASON) if self._residual else (ENERGY_PRECISIONS, ENERGY_REASON)
        if issubclass(self._optimizer_class, EnergyOptimizer) and precision not in allowed:
            raise GFConfigError(
                f"trainer.precision={precision!r} is not supported by {self._optimizer_class.__name__}; allowed: "
                f"{', '.join(a for a in allowed if '-' in a)} ({reason})"
            )
        per_call = getattr(self.trainer.datamodule, "steps_per_call", 1)
        for ckpt in self.trainer.checkpoint_callbacks:
            every = getattr(ckpt, "_every_n_train_steps", 0) or 0
            if per_call > 1 and every % per_call:
                # Lightning looks at global_step only between calls: a checkpoint every 10 steps at 8 steps a call would
                # land every 40
                raise GFConfigError(
                    f"checkpoint every_n_train_steps={every} is not a multiple of data.steps_per_call={per_call}: "
                    "checkpoints are taken between training_step calls; use a multiple, or data.steps_per_call=1"
                )

    # -- the step ------------------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def gradient_scale(self) -> float:
        """What the gradient the optimizers see is multiplied by: the width ``m`` in particle time, else 1."""
        return float(self.net.m) if self.particle_time else 1.0

    def _shard_loss(self, out: Tensor, y: Tensor, total: int) -> Tensor:
        """This rank's term of the global batch's loss (:meth:`Objective.shard_loss`). DDP averages the ranks' gradients
        and the optimizers average the ranks' losses, so both are then the global batch's, whatever each rank's share —
        one sample more, or none, in an epoch's last batch."""
        return self.objective.shard_loss(out, y, total)

    def training_step(self, batch: Batch | tuple | list, batch_idx: int) -> None:
        """One optimizer step per mini-batch: ``batch`` is one :class:`~gf_lightning.data.Batch` (or ``(x, y)``), or a
        list of them when the data module hands several mini-batches to each call (``data.steps_per_call``), which
        spreads Lightning's per-call cost over them."""
        opt = self.optimizers()
        max_steps = self.trainer.max_steps
        for minibatch in batch if isinstance(batch, list) else (batch,):
            if 0 <= max_steps <= self.global_step:  # trainer.max_steps counts optimizer steps, even inside a call
                break
            x, y = minibatch
            # a (x, y) pair from another data module: the ranks hold equal shares, as DistributedSampler makes them
            total = minibatch.total if isinstance(minibatch, Batch) else len(x) * self.trainer.world_size
            self._step(opt, x, y, total)

    def _step(self, opt, x: Tensor, y: Tensor, total: int) -> None:
        objective, scale = self.objective, self.gradient_scale
        if self._residual:
            forward: dict[str, Tensor] = {}
            # particle time: √m q is the residual whose flow runs m times faster (see the class's docstring)
            q_scale = objective.residual_scale(y) * math.sqrt(scale) if scale != 1.0 else objective.residual_scale(y)

            def closure() -> Tensor:
                opt.zero_grad()
                out = objective.predict(self.net, x)
                forward.setdefault("out", out)  # (the first call's: an adaptive step calls again at trial weights)
                return objective.residual(out, y, q_scale)

            gram, gram_fn = getattr(self.net, "jacobian_gram", None), None
            operator, jacobian_fn = getattr(self.net, "jacobian_operator", None), None
            if gram is not None and type(objective).predict is Objective.predict:  # q is an affine map of net(x)
                inputs = x
                if self.trainer.world_size > 1 and opt.optimizer.defaults.get("distributed") == "global":
                    inputs = gather_rows(x).rows  # the global batch, rank-major, as the optimizer gathers q

                def gram_fn() -> Tensor:
                    g = gram(inputs)
                    return g if isinstance(q_scale, float) and q_scale == 1.0 else g * q_scale**2

                if operator is not None:

                    def jacobian_fn():
                        return operator(inputs, scale=q_scale)

            elif gram is None and hasattr(objective, "jacobian"):  # dense rows of J for the exact solves (torch.func)

                def jacobian_fn():
                    return objective.jacobian(self.net, x, y, q_scale)

            opt.step(closure=closure, gram_fn=gram_fn, jacobian_fn=jacobian_fn)
            loss = self._shard_loss(forward["out"].detach(), y, total)
        else:

            def closure() -> Tensor:
                opt.zero_grad()
                loss = self._shard_loss(objective.predict(self.net, x), y, total)
                # particle time: the optimizer sees m ∇L beside L itself
                self.manual_backward(loss * scale if scale != 1.0 else loss)
                return loss

            loss = opt.step(closure=closure).detach()
        self._epoch_loss.add_(loss, alpha=total / self.trainer.world_size)  # Σ this rank's samples' losses
        self._epoch_count += len(x)
        if self.global_step % self.check_finite_every_n_steps == 0:
            self._check_finite(loss=loss)
        every = self.trainer.log_every_n_steps
        if self.loggers and every and self.global_step % every == 0:  # after every log_every_n_steps-th step
            stats = getattr(opt.optimizer, "stats", None)
            if stats:
                # (self.log would build a result entry per key and step, which costs more than the step itself here)
                self._write({name: float(value) for name, value in stats.items()})

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch_count = 0

    def on_train_start(self) -> None:
        # a resume from a step checkpoint (checkpoint.every_n_train_steps) starts inside an epoch, where Lightning does not
        # call on_train_epoch_start: continue that epoch's sums (all ranks', held by rank 0) from the checkpoint
        if self._epoch_loss is None:
            loss_sum, count = self._resumed_epoch_sums if self._resumed_epoch_sums and self.global_rank == 0 else (0.0, 0)
            self._epoch_loss = torch.tensor(loss_sum, dtype=torch.float64, device=self.device)
            self._epoch_count = count

    def _global_epoch_sums(self) -> tuple[float, int]:
        """The training epoch's (loss sum, sample count) so far, over all ranks."""
        sums = torch.stack([self._epoch_loss, self._epoch_loss.new_tensor(float(self._epoch_count))])
        loss_sum, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        return loss_sum, int(count)

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        loss_sum, count = self._global_epoch_sums()  # each sample once, whatever the ranks' shares
        mean = loss_sum / max(count, 1)
        # the same value on every rank; sync_dist only says so to Lightning
        self.log("train/loss", mean, on_step=False, on_epoch=True, sync_dist=True, logger=False)
        self._write({"train/loss": mean})

    def _write(self, metrics: dict[str, float]) -> None:
        """Write scalars to the loggers at the optimizer step, the one x-axis of every scalar of the run. (Lightning's own
        step for epoch metrics counts ``training_step`` calls, one an epoch at ``data.steps_per_call`` 32.) Metrics go
        through ``self.log(..., logger=False)`` too, for the progress bar, callbacks and ``callback_metrics``; loggers
        write on rank 0 only."""
        if self.trainer.sanity_checking:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # -- checkpoints: the run's settings travel with its state (gf_lightning.resume) ---------------------------------------
    #: set by the CLI: the settings that define this run, stored in every checkpoint
    run_settings: dict | None = None
    #: set by the CLI on ``--resume_with_changes``: the changed settings, ``{name: (checkpoint's, new)}``
    resume_changes: dict | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_settings is not None:
            checkpoint[RUN_CHECKPOINT_KEY] = self.run_settings
        if self._epoch_loss is not None:  # the current epoch's sums, for a resume from inside it (on_train_start)
            checkpoint[EPOCH_SUMS_KEY] = self._global_epoch_sums()  # every rank builds the checkpoint; rank 0 writes it

    #: the current epoch's (loss sum, sample count) from the checkpoint resumed from
    _resumed_epoch_sums: tuple[float, int] | None = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_epoch_sums = checkpoint.get(EPOCH_SUMS_KEY)
        self._epoch_loss = None  # on_train_start takes the sums above
        if self.resume_changes:
            override_optimizer_groups(checkpoint, self.resume_changes)

    # -- evaluation ----------------------------------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch | tuple[Tensor, Tensor], prefix: str) -> None:
        x, y = batch
        if len(x) == 0:  # this rank's part of the held-out set's last batch, under DDP: nothing to count
            return
        out = self.objective.predict(self.net, x)
        # metric objects: Lightning computes them once per epoch, synchronised across ranks, and resets them
        # while fitting, _write_eval writes them to the loggers at the optimizer step; in validate and test, Lightning
        # does, and returns and prints them
        to_logger = not self._fitting
        loss_metric = self._eval_loss_metric
        if self.objective.per_sample:
            loss_metric.update(self.objective.loss(out, y), weight=x.shape[0])
        else:
            loss_metric.update(**vars(self.objective.ratio(out, y)))
        self.log(f"{prefix}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=prefix == "val", logger=to_logger)
        if self.task == "classification":
            self.eval_acc.update(out, y)
            self.log(f"{prefix}/acc", self.eval_acc, on_step=False, on_epoch=True, logger=to_logger)
        elif self._solution is None:  # (the loss is the mean squared error)
            self.eval_rel.update(out, y)
            self.log(f"{prefix}/rel_err", self.eval_rel, on_step=False, on_epoch=True, logger=to_logger)
        else:  # a PDE's objective: its predicted solution against the exact one, at the rows that have one
            u, u_exact = self._solution(out, y)
            self.eval_rel_l2.update(u, u_exact)
            self.log(f"{prefix}/rel_l2", self.eval_rel_l2, on_step=False, on_epoch=True, logger=to_logger)

    @property
    def _solution(self):
        """The objective's ``solution(pred, y) -> (u, u*)`` when it has one (:class:`~gf_lightning.components.BurgersPINN`),
        else ``None``: validation then logs ``val/rel_l2 = ‖u − u*‖/‖u*‖`` over those rows in place of ``val/rel_err``."""
        return getattr(self.objective, "solution", None)

    def _fresh_eval_metrics(self) -> None:
        # validate/test run under inference_mode, and metric state reset there becomes inference tensors that a later
        # fit's validation (under no_grad) could not update: recreate it as normal tensors
        with torch.inference_mode(False):
            for metric in (self.eval_loss, self.eval_ratio, self.eval_rel, self.eval_rel_l2, self.eval_acc):
                if metric is not None:
                    metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._fresh_eval_metrics()
        if not self.trainer.sanity_checking:
            self._check_finite()

    def on_validation_epoch_end(self) -> None:
        self._write_eval("val")

    def on_test_epoch_end(self) -> None:
        self._write_eval("test")

    @property
    def _fitting(self) -> bool:
        return self.trainer.state.fn == TrainerFn.FITTING

    def _write_eval(self, prefix: str) -> None:
        """While fitting, the evaluation's metrics, synchronised across ranks, to the loggers (see :meth:`_write`)."""
        loss_metric = self._eval_loss_metric
        if not self._fitting or self.trainer.sanity_checking or not self.loggers or not loss_metric.update_called:
            return
        if self.task == "classification":
            quality = (f"{prefix}/acc", self.eval_acc)
        else:
            pde = self._solution is not None
            quality = (f"{prefix}/rel_l2", self.eval_rel_l2) if pde else (f"{prefix}/rel_err", self.eval_rel)
        metrics = {f"{prefix}/loss": float(loss_metric.compute()), quality[0]: float(quality[1].compute())}
        self._write(metrics)

    @property
    def _eval_loss_metric(self) -> Metric:
        return self.eval_loss if self.objective.per_sample else self.eval_ratio

    def on_test_epoch_start(self) -> None:
        self._fresh_eval_metrics()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -- the non-finite guard --------------------------------------------------------------------------------------------------
    def _check_finite(self, loss: Tensor | None = None) -> None:
        """Stop with a message when the loss or a parameter is NaN/Inf, before a checkpoint can store it."""
        what = None
        if loss is not None and not math.isfinite(value := loss.item()):
            what = f"loss = {value:.4g}"
        elif loss is None and not all(torch.isfinite(p).all() for p in self.net.parameters()):
            what = "a parameter is NaN or Inf"
        if what is not None:
            opt = self._optimizer_class.__name__
            ckpt = last_good_checkpoint(self.trainer) or "(none saved yet)"  # a file that was written, complete
            raise NonFiniteError(
                f"training went non-finite ({what}) with {opt} at epoch {self.current_epoch}, step {self.global_step}; "
                f"stopped before saving. Last good checkpoint: {ckpt}"
            )
