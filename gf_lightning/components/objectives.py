"""Training objectives as plain components: the batch loss every optimizer minimises, and the residual form IEQ needs.

An objective turns a network's predictions into

- ``loss(pred, y)``: the batch's objective, a scalar (what SGD, Adam and the SAV family differentiate, and what their
  ``r = √(L + C)`` is built from);
- ``residual(pred, y)``: IEQ's ``q``, flat, with the same autograd graph, scaled so that ``‖q‖² / q.numel()`` equals the
  loss (for cross-entropy, the seed's one-hot squared error stands in: cross-entropy is no sum of squares);
- ``residual_scale(y)``: the ``s`` of ``q = s · (pred − target)``, so that the Gram matrix of ``q``'s Jacobian is ``s²``
  times the network's own (:meth:`TwoLayerNet.jacobian_gram <gf_lightning.components.TwoLayerNet.jacobian_gram>`).

``predict(net, x)`` is the network's output the objective compares (``net(x)``; a physics-informed objective applies its
differential operator there). Under DDP each rank holds part of the global batch; :meth:`Objective.shard_loss` is this
rank's term, such that the ranks' mean is the global batch's loss — which is what DDP's gradient average then
differentiates. An objective that is a mean of one term per sample (``per_sample``) gets it without communication; the
others reduce their normaliser across ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GFConfigError
from ..optim.distributed import global_sum_, world_size
from ..optim.jacobian import JacobianRows, PerSampleRows
from ..problems.problem import Problem


@dataclass
class Ratio:
    """An objective over a set of batches that is a ratio of sums over them (``Σ numerator / Σ denominator``), not a
    mean of the batches' values."""

    numerator: Tensor
    denominator: Tensor


class Objective:
    """The interface, with the defaults of an objective that is the mean of one term per sample."""

    #: ``"regression"`` (held-out relative error reported) or ``"classification"`` (accuracy reported)
    task = "regression"
    #: the loss is the mean over the batch's samples of one term each
    per_sample = True
    #: the problem whose rows this objective reads (``None``: plain targets, one column of ``y`` per output)
    problem: Problem | None = None

    def predict(self, net: nn.Module, x: Tensor) -> Tensor:
        return net(x)

    def check_net(self, net: nn.Module) -> None:
        """Refuse (``GFConfigError``) a network this objective would train to the wrong problem; called before any work.
        The default accepts every network."""

    def check_data(self, data: object) -> None:
        """Refuse (``GFConfigError``) data whose rows this objective would misread; called before any step. The default
        reads plain targets, and refuses data that carry a :class:`~gf_lightning.problems.Problem` (``data.problem``)
        other than the objective's own :attr:`problem`."""
        theirs = getattr(data, "problem", None)
        if theirs is not None and theirs != self.problem:
            raise GFConfigError(
                f"data ({type(data).__name__}) holds {theirs.rows} whose y is ({', '.join(theirs.y_columns)}): "
                f"model.objective must be {theirs.objective}; got {self!r}"
            )

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def loss_sum(self, pred: Tensor, y: Tensor) -> Tensor:
        """The sum of the samples' terms (``per_sample`` objectives): ``loss · len(y)``."""
        raise NotImplementedError

    def ratio(self, pred: Tensor, y: Tensor) -> Ratio:
        """The two sums whose ratio, summed over a held-out set's batches, is the objective on the whole set (objectives
        that are not ``per_sample``; the others average their batches' losses by batch size)."""
        raise NotImplementedError

    def target(self, y: Tensor, pred: Tensor) -> Tensor:
        """What the residual compares the prediction with (``y`` itself for regression)."""
        return y

    def residual_scale(self, y: Tensor) -> float | Tensor:
        return 1.0

    def residual(self, pred: Tensor, y: Tensor, scale: float | Tensor | None = None) -> Tensor:
        """IEQ's ``q = s · (pred − target)``, flat; ``s`` is :meth:`residual_scale` unless given."""
        q = (pred - self.target(y, pred)).reshape(-1)
        s = self.residual_scale(y) if scale is None else scale
        return q if isinstance(s, float) and s == 1.0 else q * s

    def jacobian(self, net: nn.Module, x: Tensor, y: Tensor, scale: float | Tensor) -> JacobianRows | None:
        """Dense rows of the Jacobian of :meth:`residual` (with ``scale``) in ``net``'s parameters that require grad,
        for IEQ's exact solves (``IEQ.step(jacobian_fn=…)``): per-sample ``torch.func`` Jacobians of ``net(x)``;
        ``None`` where samples are not independent (batch norm), the forward draws at random (dropout in training) or
        :meth:`predict` is not ``net(x)``: IEQ then reads the rows from the residual's graph."""
        coupled = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
        if type(self).predict is not Objective.predict or any(isinstance(m, coupled) and m.training
                                                              for m in net.modules()):
            return None
        return PerSampleRows(net, x, scale)

    def shard_loss(self, pred: Tensor, y: Tensor, total: int) -> Tensor:
        """This rank's term of the global batch's loss (``total`` samples over all ranks): ``W / total · Σ`` its
        samples' terms, or the plain mean when every rank holds ``total / W`` samples (one process: always)."""
        world = world_size()
        if len(y) * world == total:
            return self.loss(pred, y)
        return self.loss_sum(pred, y) * (world / total)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Objective):
    """``(1/(B·k)) Σ (f − y)²``: the squared error averaged over samples and outputs (``torch.nn.functional.mse_loss``).
    Its residual is ``q = f − y``. The seed's objective for its three regressions."""

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(pred, y)

    def loss_sum(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(pred, y, reduction="sum") / math.prod(y.shape[1:])


class RelativeError(Objective):
    """``Σ (f − y)² / Σ y²`` over the batch: the objective of Ma, Mao & Shen (2024), which a network predicting zero
    scores 1 whatever the targets' scale. Its residual is ``q = (f − y) · √(N / Σ y²)`` (``N`` the batch's entries), so
    that ``‖q‖² / N`` is the loss.

    It is not a mean of per-sample terms: under DDP, training normalises by the global batch's ``Σ y²`` (one all-reduce
    a step, in :meth:`shard_loss` and :meth:`residual_scale`); :meth:`loss` is the batch at hand's, with no
    communication.
    """

    per_sample = False

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return (pred - y).square().sum() / y.detach().square().sum()

    def ratio(self, pred: Tensor, y: Tensor) -> Ratio:
        return Ratio((pred - y).double().square().sum(), y.double().square().sum())

    def shard_loss(self, pred: Tensor, y: Tensor, total: int) -> Tensor:
        world = world_size()
        if world == 1:
            return self.loss(pred, y)
        # W · Σ_rank (f − y)² / Σ_all y²: the ranks' mean is the global batch's Σ (f − y)² / Σ y²
        sum_y2 = global_sum_(y.detach().square().sum())
        return (pred - y).square().sum() * (world / sum_y2)

    def residual_scale(self, y: Tensor) -> Tensor:
        sums = torch.stack([y.new_tensor(float(y.numel())), y.detach().square().sum()])
        entries, sum_y2 = global_sum_(sums)  # the global batch's N and Σ y²
        return (entries / sum_y2).sqrt()


class CrossEntropy(Objective):
    """Cross-entropy of the logits against integer labels, averaged over the batch. IEQ's residual is the seed's
    ``q = f − onehot(y)``: IEQ then minimises the one-hot squared error, not the cross-entropy."""

    task = "classification"

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(pred, y)

    def loss_sum(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(pred, y, reduction="sum")

    def target(self, y: Tensor, pred: Tensor) -> Tensor:
        return F.one_hot(y, pred.shape[-1]).to(pred.dtype)


#: the objective a task trains with when the config names none
DEFAULT_OBJECTIVES = {"regression": MeanSquaredError, "classification": CrossEntropy}
