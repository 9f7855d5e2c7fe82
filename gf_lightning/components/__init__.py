"""Plain ``nn.Module`` networks, apart from the LightningModule that trains them."""

from .nets import TwoLayerNet

__all__ = ["TwoLayerNet"]
