"""The shared part of the data modules: held-out split, whole-batch loaders, placement on the run's device."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from ..errors import GFConfigError
from ..problems.problem import Problem
from .batching import TensorBatches


class TensorDataModule(L.LightningDataModule):
    """A data module over four in-memory tensors: ``x_train, y_train, x_test, y_test``.

    Subclasses fill them in :meth:`build`. Validation and test both use the held-out split (the seed has no third
    split). The tensors move to the run's device once, so that a step costs no host-to-device copy.

    Args:
        batch_size: the global training batch size; ``None``: the whole training set (full-batch gradient descent).
        eval_batch_size: the batch size for validation and test (the whole held-out set by default). seed: seeds the
        data draw and the batch order; ``None`` takes the run's ``seed_everything`` seed. steps_per_call: training
        mini-batches handed to each ``training_step`` call (one optimizer step each, in the same
            order as with 1). Lightning's per-call cost — hooks, progress bar, batch transfer — is then paid once per
            ``steps_per_call`` steps; ``trainer.max_steps`` counts optimizer steps, while the progress bar,
            ``limit_train_batches`` and an integer ``val_check_interval`` count calls. The experiment configs use 32.
    """

    task = "regression"

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("steps_per_call", steps_per_call),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise GFConfigError(f"data.{name} must be a positive integer; got {value!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.steps_per_call = steps_per_call
        self.seed = torch.initial_seed() % 2**31 if seed is None else int(seed)
        self._tensors: dict[str, Tensor] | None = None
        self._device: torch.device | None = None

    # -- what a subclass provides --------------------------------------------------------------------------------------
    @property
    def dims(self) -> tuple[int, int]:
        """``(d, k)``: input dimension and number of outputs (classes for classification)."""
        raise NotImplementedError

    def build(self) -> dict[str, Tensor]:
        """Return ``x_train, y_train, x_test, y_test``."""
        raise NotImplementedError

    # -- Lightning hooks -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._tensors is None:
            tensors = self.build()
            self._check_data(tensors)
            n_train = len(tensors["x_train"])
            if self.batch_size is None:
                self.batch_size = n_train
            if self.batch_size > n_train:
                raise GFConfigError(
                    f"data.batch_size ({self.batch_size}) is larger than the training set ({n_train} samples); "
                    f"allowed: 1 … {n_train}"
                )
            self._tensors = tensors

    #: the problem whose rows these are (:class:`~gf_lightning.problems.Problem`), when ``y`` is not plain targets
    problem: Problem | None = None

    #: the settings that set the data's scale, which a non-finite value points at (``data.<name>`` in a message)
    scale_settings: tuple[str, ...] = ()

    def _check_data(self, tensors: dict[str, Tensor]) -> None:
        """Refuse data that are not finite, or whose squares are not (a loss squares them: the mean squared error, the
        Gaussian target's ``‖x‖²``), before a step could blame the optimizer for them."""
        for key, t in tensors.items():
            if not t.is_floating_point() or t.numel() == 0:
                continue
            limit = torch.finfo(t.dtype).max ** 0.5
            bad = ~torch.isfinite(t)
            if bad.any() or t.abs().max() > limit:
                what = (
                    f"{int(bad.sum())} of {t.numel()} values NaN or Inf"
                    if bad.any()
                    else f"values up to {t.abs().max().item():.3g}, whose squares overflow {t.dtype} above {limit:.3g}"
                )
                settings = ", ".join(f"data.{name} = {getattr(self, name)!r}" for name in self.scale_settings)
                raise GFConfigError(
                    f"data ({type(self).__name__}) made {key} with {what}; "
                    + (f"check {settings}: allowed are settings whose data and their squares are finite" if settings
                       else "the data and their squares must be finite")
                )

    @property
    def tensors(self) -> dict[str, Tensor]:
        if self._tensors is None:
            self.setup()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device != self._device:
            self._tensors = {k: v.to(device) for k, v in self._tensors.items()}
            self._device = device
        return self._tensors

    def _loader(self, split: str, batch_size: int, shuffle: bool, steps_per_call: int = 1) -> TensorBatches:
        t = self.tensors
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return TensorBatches(
            t[f"x_{split}"], t[f"y_{split}"], batch_size, shuffle=shuffle, seed=self.seed, rank=rank, world_size=world,
            steps_per_call=steps_per_call,
        )

    def train_dataloader(self) -> TensorBatches:
        loader = self._loader("train", self.batch_size, shuffle=True, steps_per_call=self.steps_per_call)
        if self.trainer is not None and self.trainer.fit_loop.restarting:
            # a resume: Lightning has restored its progress; a checkpoint from inside an epoch continues that epoch
            loader.resume_at(self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return loader

    def _eval_loader(self) -> TensorBatches:
        n_test = len(self.tensors["x_test"])
        world = self.trainer.world_size if self.trainer is not None else 1
        if n_test < world:  # a rank without a sample would never join the metrics' synchronisation
            raise GFConfigError(
                f"the held-out split has {n_test} samples, fewer than the {world} processes; each needs one"
            )
        # at least one sample a rank in every batch but the last (the metrics are sums: the batch size changes nothing
        # else)
        return self._loader("test", max(world, self.eval_batch_size or n_test), shuffle=False)

    def val_dataloader(self) -> TensorBatches:
        return self._eval_loader()

    def test_dataloader(self) -> TensorBatches:
        return self._eval_loader()
