"""Data modules: the three synthetic regressions of SPEC §3 and the MNIST subsample, all as in-memory tensors."""

from .base import TensorDataModule
from .batching import Batch, TensorBatches
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
]
