"""Plain ``nn.Module`` networks and training objectives, apart from the LightningModule that trains them."""

from .nets import MLP, TwoLayerNet
from .objectives import CrossEntropy, MeanSquaredError, Objective, RelativeError
from .pinn import BurgersPINN

__all__ = ["BurgersPINN", "CrossEntropy", "MLP", "MeanSquaredError", "Objective", "RelativeError", "TwoLayerNet"]
