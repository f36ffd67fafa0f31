"""Backbones timm does not provide, registered with ``register_architecture`` on import.

``terratorch`` registers the ``terratorch:`` prefix (any backbone of TerraTorch's registry) and
``torchgeo`` the ``torchgeo:`` prefix (TorchGeo's Copernicus-FM); each imports its library only
when such a card is used. ``datacube`` runs torch.export programs that take one dict of inputs
(Clay v1.5's encoder, ``clay_mae_large``) as their cards' ``stacembed:program_inputs`` describe.
"""

from .bandmeans import BandMeans
from .datacube import DatacubeProgram
from .prithvi import PrithviViT
from .terratorch import DOFABackbone, TerraTorchBackbone
from .torchgeo import CopernicusFMBackbone

__all__ = ["BandMeans", "CopernicusFMBackbone", "DOFABackbone", "DatacubeProgram", "PrithviViT",
           "TerraTorchBackbone"]
