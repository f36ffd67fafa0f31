"""Backbones timm does not provide, registered with ``register_architecture`` on import.

``terratorch`` registers the ``terratorch:`` prefix (any backbone of TerraTorch's registry) and
``torchgeo`` the ``torchgeo:`` prefix (TorchGeo's Copernicus-FM); each imports its library only
when such a card is used.
"""

from .bandmeans import BandMeans
from .prithvi import PrithviViT
from .terratorch import DOFABackbone, TerraTorchBackbone
from .torchgeo import CopernicusFMBackbone

__all__ = ["BandMeans", "CopernicusFMBackbone", "DOFABackbone", "PrithviViT", "TerraTorchBackbone"]
