"""Backbones timm does not provide, registered with ``register_architecture`` on import.

``terratorch`` registers the ``terratorch:`` prefix (any backbone of TerraTorch's registry); it
imports TerraTorch only when such a card is used.
"""

from .bandmeans import BandMeans
from .prithvi import PrithviViT
from .terratorch import TerraTorchBackbone

__all__ = ["BandMeans", "PrithviViT", "TerraTorchBackbone"]
