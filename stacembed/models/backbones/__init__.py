"""Backbones timm does not provide, registered with ``register_architecture`` on import."""

from .bandmeans import BandMeans
from .prithvi import PrithviViT

__all__ = ["BandMeans", "PrithviViT"]
