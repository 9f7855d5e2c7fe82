"""gf_lightning: energy-stable gradient-flow optimizers (SAV, ExpSAV, IEQ) for PyTorch and PyTorch Lightning."""

from .components import TwoLayerNet
from .errors import GFConfigError, GFStepError, NonFiniteError
from .module import GradientFlowModule

__version__ = "0.1.0"
__all__ = ["TwoLayerNet", "GradientFlowModule", "GFConfigError", "GFStepError", "NonFiniteError", "__version__"]
