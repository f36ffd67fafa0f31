"""The model side: MLM model cards, the backbone registry, weights, and value scaling."""

from .card import ModelCard, load_card
from .export import export_card
from .registry import (
    create_backbone,
    list_cards,
    list_registry_names,
    register_architecture,
    register_prefix,
    resolve_card,
)

# isort: split
# As timm.models does: the model files register their architectures on import, after the registry.
from . import backbones  # noqa: F401

__all__ = [
    "ModelCard",
    "create_backbone",
    "export_card",
    "list_cards",
    "list_registry_names",
    "load_card",
    "register_architecture",
    "register_prefix",
    "resolve_card",
]
