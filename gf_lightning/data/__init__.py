"""Data modules: the three synthetic regressions of SPEC §3, the MNIST subsample and the Burgers collocation points
(Ma, Mao & Shen 2024, Example 5; the problem itself: :mod:`gf_lightning.problems.burgers`), all as in-memory
tensors."""

from .base import TensorDataModule
from .batching import Batch, TensorBatches
from .burgers import BurgersCollocation
from .mnist import MNISTDataModule
from .regression import GaussianRegression, QuadraticRegression, SinCosRegression, SyntheticRegression

__all__ = [
    "TensorDataModule",
    "Batch",
    "TensorBatches",
    "SyntheticRegression",
    "SinCosRegression",
    "QuadraticRegression",
    "GaussianRegression",
    "MNISTDataModule",
    "BurgersCollocation",
]
