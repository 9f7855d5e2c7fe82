"""One ``LightningModule`` for every method: manual optimization, the optimizer injected from the config."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from .components.objectives import DEFAULT_OBJECTIVES, Objective
from .data.batching import Batch
from .eval_metrics import EvalMetrics
from .ieq_closure import residual_step
from .metrics import EpochLoss
from .model_checks import check_settings, optimizer_class
from .nonfinite import NonFiniteGuard
from .resume import CHECKPOINT_KEY as RUN_CHECKPOINT_KEY
from .resume import override_optimizer_groups

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
#: where checkpoints of earlier versions kept the training epoch's running (loss sum, sample count)
EPOCH_SUMS_KEY = "gf_lightning_epoch_sums"
#: the state-dict entries of the training epoch's running loss (:class:`~gf_lightning.metrics.EpochLoss`)
EPOCH_LOSS_KEYS = ("train_loss.mean_value", "train_loss.weight")


def _default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


def with_epoch_loss(checkpoint: dict) -> dict:
    """``checkpoint`` with the epoch-loss entries that a checkpoint of an earlier version lacks (from its
    :data:`EPOCH_SUMS_KEY`, else zero)."""
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and not all(key in state for key in EPOCH_LOSS_KEYS):
        sums = checkpoint.get(EPOCH_SUMS_KEY) or (0.0, 0)
        state.update({key: torch.tensor(float(v), dtype=torch.float64) for key, v in zip(EPOCH_LOSS_KEYS, sums)})
    return checkpoint


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
            the parameters are checked before every validation and checkpoint regardless (:mod:`.nonfinite`).

    Metrics (TensorBoard groups them by prefix), all against the optimizer step: ``train/loss`` (the objective, averaged
    over the epoch's batches by their sizes), ``val/loss`` and ``val/rel_err``, ``val/rel_l2`` or ``val/acc`` per epoch
    (:class:`~gf_lightning.eval_metrics.EvalMetrics`); every ``log_every_n_steps`` optimizer steps the optimizer's
    ``energy/…`` and ``optim/…`` scalars. How the module fits the data and the trainer is checked by the command line
    before any work (:mod:`.model_checks`).
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
        check_settings(net, objective, task, particle_time, check_finite_every_n_steps)
        self.save_hyperparameters(ignore=["net", "optimizer", "objective"], logger=False)
        self.automatic_optimization = False
        self.net, self.optimizer, self.objective = net, optimizer, objective
        self.task = task or (objective.task if objective is not None else None)
        self.particle_time = particle_time
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self.optimizer_class = optimizer_class(optimizer, net)
        self.train_loss = EpochLoss()  # carried by checkpoints: a resume from inside an epoch continues its sums
        self._loss_epoch: int | None = None  # the epoch whose sums train_loss holds
        self.eval_metrics: EvalMetrics | None = None  # the task's, once the task is known (setup)
        self.finite_guard = NonFiniteGuard(check_finite_every_n_steps)

    @property
    def _residual(self) -> bool:
        return getattr(self.optimizer_class, "closure_returns", "loss") == "residual"

    # -- set-up --------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # the energy/… scalars are logged every log_every_n_steps optimizer steps, inside training_step: Lightning's
        # warning that an epoch has fewer training_step calls than that (one, at data.steps_per_call 32) does not apply
        warnings.filterwarnings(
            "ignore",
            message=r"The number of training batches \(\d+\) is smaller than the logging interval",
            category=PossibleUserWarning,
        )
        self.task = self.task or getattr(self.trainer.datamodule, "task", None) or "regression"
        if self.objective is None:
            self.objective = DEFAULT_OBJECTIVES[self.task]()
        if self.eval_metrics is None:
            self.eval_metrics = EvalMetrics(self.objective, self.task, getattr(self.net, "k", 10))

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.finite_guard]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.particle_time and "particles" in getattr(self.optimizer_class, "shared_settings", ()):
            return self.optimizer(self.parameters(), particles=self.net.m)  # inner products as particle averages
        return self.optimizer(self.parameters())

    # -- the step ------------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def gradient_scale(self) -> float:
        """What the gradient the optimizers see is multiplied by: the width ``m`` in particle time, else 1."""
        return float(self.net.m) if self.particle_time else 1.0

    def training_step(self, batch: Batch | tuple | list, batch_idx: int) -> None:
        """One optimizer step per mini-batch: ``batch`` is one :class:`~gf_lightning.data.Batch` (or ``(x, y)``), or a
        list of them when the data module hands several mini-batches to each call (``data.steps_per_call``), which
        spreads Lightning's per-call cost over them."""
        if self._loss_epoch != self.current_epoch:  # a new epoch, also where Lightning calls no on_train_epoch_start: a
            self.train_loss.reset()  # resume from a checkpoint taken after an epoch's last step begins the next one
            self._loss_epoch = self.current_epoch
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
        # each rank's loss is its term of the global batch's loss (Objective.shard_loss): DDP averages the ranks'
        # gradients and the optimizers average the ranks' losses, so both are then the global batch's
        objective, scale = self.objective, self.gradient_scale
        if self._residual:  # IEQ: the residual's closure, with the network's Gram matrix or Jacobian where it has one
            gather = self.trainer.world_size > 1 and opt.optimizer.defaults.get("distributed") == "global"
            step = residual_step(opt, self.net, objective, x, y, scale, gather)
            step.step(opt)
            loss = objective.shard_loss(step.out.detach(), y, total)
        else:

            def closure() -> Tensor:
                opt.zero_grad()
                loss = objective.shard_loss(objective.predict(self.net, x), y, total)
                # particle time: the optimizer sees m ∇L beside L itself
                self.manual_backward(loss * scale if scale != 1.0 else loss)
                return loss

            loss = opt.step(closure=closure).detach()
        self.train_loss.update(loss, total / self.trainer.world_size)  # Σ this rank's samples' losses, its share
        self.finite_guard.check_loss(self.trainer, loss)
        every = self.trainer.log_every_n_steps
        if self.loggers and every and self.global_step % every == 0:  # after every log_every_n_steps-th step
            stats = getattr(opt.optimizer, "stats", None)
            if stats:
                # (self.log would build a result entry per key and step, which costs more than the step itself here)
                self._write({name: float(value) for name, value in stats.items()})

    def _epoch_sums(self) -> Tensor:
        """The training epoch's ``[loss sum, sample count]`` so far, over all ranks."""
        return self.trainer.strategy.reduce(self.train_loss.sums(), reduce_op="sum")

    def on_train_epoch_end(self) -> None:
        loss_sum, count = self._epoch_sums().tolist()  # each sample once, whatever the ranks' shares
        mean = loss_sum / max(count, 1)
        # the same value on every rank; sync_dist only says so to Lightning
        self.log("train/loss", mean, on_step=False, on_epoch=True, sync_dist=True, logger=False)
        self._write({"train/loss": mean})

    def _write(self, metrics: dict[str, float]) -> None:
        """Write scalars to the loggers at the optimizer step, the one x-axis of every scalar of the run. (Lightning's
        own step for epoch metrics counts ``training_step`` calls, one an epoch at ``data.steps_per_call`` 32.) Metrics
        go through ``self.log(..., logger=False)`` too, for the progress bar, callbacks and ``callback_metrics``;
        loggers write on rank 0 only."""
        if self.trainer.sanity_checking:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # -- checkpoints: the run's settings travel with its state (gf_lightning.resume) -----------------------------------
    #: set by the CLI: the settings that define this run, stored in every checkpoint
    run_settings: dict | None = None
    #: set by the CLI on ``--resume_with_changes``: the changed settings, ``{name: (checkpoint's, new)}``
    resume_changes: dict | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_settings is not None:
            checkpoint[RUN_CHECKPOINT_KEY] = self.run_settings
        if "state_dict" in checkpoint:  # every rank builds the checkpoint, rank 0 writes it: the sums of all ranks
            checkpoint["state_dict"].update(zip(EPOCH_LOSS_KEYS, self._epoch_sums().unbind()))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = with_epoch_loss(checkpoint).get("state_dict", {})
        self._loss_epoch = checkpoint.get("epoch")
        if self.global_rank != 0:  # rank 0 continues the epoch's sums of all ranks
            state.update({key: torch.zeros_like(state[key]) for key in EPOCH_LOSS_KEYS if key in state})
        if self.resume_changes:
            override_optimizer_groups(checkpoint, self.resume_changes)

    # -- evaluation ----------------------------------------------------------------------------------------------------
    @property
    def _fitting(self) -> bool:
        return self.trainer.state.fn == TrainerFn.FITTING

    def _eval_step(self, batch: Batch | tuple[Tensor, Tensor], prefix: str) -> None:
        x, y = batch
        if len(x) == 0:  # this rank's part of the held-out set's last batch, under DDP: nothing to count
            return
        self.eval_metrics.update(self.objective, self.objective.predict(self.net, x), y)
        # metric objects: Lightning computes them once per epoch, synchronised across ranks, and resets them; while
        # fitting, _write_eval writes them to the loggers at the optimizer step; in validate and test, Lightning does,
        # and returns and prints them
        for name, metric in self.eval_metrics.names(prefix).items():
            self.log(name, metric, on_step=False, on_epoch=True, prog_bar=name == "val/loss", logger=not self._fitting)

    def _write_eval(self, prefix: str) -> None:
        """While fitting, the evaluation's metrics, synchronised across ranks, to the loggers (see :meth:`_write`)."""
        if not self._fitting or self.trainer.sanity_checking or not self.loggers:
            return
        if metrics := self.eval_metrics.computed(prefix):
            self._write(metrics)

    def on_validation_epoch_start(self) -> None:
        self.eval_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.eval_metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._write_eval("val")

    def on_test_epoch_end(self) -> None:
        self._write_eval("test")
