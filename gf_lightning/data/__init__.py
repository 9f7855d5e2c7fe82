"""Data modules: the three synthetic regressions of SPEC §3 and the MNIST subsample, all as in-memory tensors."""

from .base import TensorDataModule
from .batching import TensorBatches
from .mnist import MNISTDataModule
from .regression import GaussianRegression, QuadraticRegression, SinCosRegression, SyntheticRegression

__all__ = [
    "TensorDataModule",
    "TensorBatches",
    "SyntheticRegression",
    "SinCosRegression",
    "QuadraticRegression",
    "GaussianRegression",
    "MNISTDataModule",
]
