"""Backbones timm does not provide, registered with ``register_architecture`` on import."""

from .prithvi import PrithviViT

__all__ = ["PrithviViT"]
