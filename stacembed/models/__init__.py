"""The model side: MLM model cards, the backbone registry, weights, and value scaling."""

from .card import ModelCard, load_card
from .export import export_card
from .registry import create_backbone, list_cards, register_architecture, resolve_card

__all__ = [
    "ModelCard",
    "create_backbone",
    "export_card",
    "list_cards",
    "load_card",
    "register_architecture",
    "resolve_card",
]
