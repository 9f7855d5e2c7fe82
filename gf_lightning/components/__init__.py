"""Plain ``nn.Module`` networks and training objectives, apart from the LightningModule that trains them."""

from .nets import TwoLayerNet
from .objectives import CrossEntropy, MeanSquaredError, Objective, RelativeError

__all__ = ["CrossEntropy", "MeanSquaredError", "Objective", "RelativeError", "TwoLayerNet"]
