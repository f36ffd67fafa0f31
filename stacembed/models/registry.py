"""The backbone registry: one obvious place to add a model.

``resolve_card`` turns ``--model`` (a built-in card name, a path or a URL) into a ModelCard;
``create_backbone`` builds its network. Architectures timm does not have are added with
``@register_architecture("name")``; any other ``mlm:architecture`` is looked up in timm and
built with ``in_chans=len(bands), num_classes=0`` so its output is the pooled pre-logits vector.

Another library's model registry plugs in with ``register_prefix("lib", ...)``: an
``mlm:architecture`` (or a ``--model``) written ``lib:NAME`` is then built (and, as ``--model``,
described by an ad-hoc card) by that hook, and ``list_registry_names`` lists what it offers
(``backbones/terratorch.py``: ``terratorch:NAME``, any backbone of TerraTorch's registry;
``backbones/torchgeo.py``: ``torchgeo:NAME``, TorchGeo model functions stacembed has an adapter
for, cards only).

As in timm, this module imports no model: the files under ``backbones/`` import
``register_architecture`` from here, and the ``stacembed.models`` package imports them, so they
are registered before anything (this module included) is imported from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ModelError
from .card import ModelCard, load_card

CARDS_DIR = Path(__file__).parent / "cards"

Builder = Callable[[ModelCard], nn.Module]
_ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``builder(card) -> nn.Module`` returning pooled embeddings of ``card.embedding_size``."""

    def decorate(builder: Builder) -> Builder:
        _ARCHITECTURES[name] = builder
        return builder

    return decorate


@dataclass(frozen=True)
class RegistryPrefix:
    """How ``prefix:NAME`` architectures are made: ``build(card)`` (the network, as a registered
    architecture's builder), ``card("prefix:NAME")`` (an ad-hoc card for ``--model prefix:NAME``)
    and ``names()`` (the ``prefix:NAME`` references on offer; empty when the library is absent).
    Each imports its library only when called."""

    build: Builder
    card: Callable[[str], ModelCard] | None = None
    names: Callable[[], list[str]] | None = None


_PREFIXES: dict[str, RegistryPrefix] = {}


def register_prefix(prefix: str, build: Builder, *, card: Callable[[str], ModelCard] | None = None,
                    names: Callable[[], list[str]] | None = None) -> None:
    """Resolve every ``prefix:NAME`` architecture (and ``--model prefix:NAME``) through these hooks."""
    _PREFIXES[prefix] = RegistryPrefix(build, card, names)


def registry_prefix(ref: str) -> RegistryPrefix | None:
    """The hooks for ``ref`` when it is written ``prefix:NAME`` with a registered prefix."""
    prefix, colon, name = ref.partition(":")
    return _PREFIXES.get(prefix) if colon and name else None


def list_registry_names() -> list[str]:
    """Every ``prefix:NAME`` the registered libraries offer (e.g. TerraTorch's backbones when the
    ``stacembed[terratorch]`` extra is installed); empty without them. Usable as ``--model``."""
    return sorted(name for hooks in _PREFIXES.values() if hooks.names for name in hooks.names())


def list_cards() -> dict[str, Path]:
    """Built-in card names and their files."""
    return {path.stem: path for path in sorted(CARDS_DIR.glob("*.json"))}


def resolve_card(ref: str) -> ModelCard:
    """A built-in card by name, ``prefix:NAME`` of a registered library (``terratorch:NAME``),
    or any MLM item by path or URL."""
    builtin = list_cards().get(ref)
    if builtin is not None:
        return load_card(str(builtin))
    hooks = registry_prefix(ref)
    if hooks is not None and hooks.card is not None:
        return hooks.card(ref)
    if hooks is not None:
        raise ModelError(f"--model {ref}: {ref.partition(':')[0]}: models run from an MLM card (mlm:architecture "
                         f"{ref!r}), not by name; see `stacembed models list`")
    if "/" not in ref and "." not in ref:
        known = ", ".join(list_cards()) or "none"
        raise ModelError(f"unknown model {ref!r}: not a built-in card ({known}) nor a path or URL")
    return load_card(ref)


def create_backbone(card: ModelCard) -> nn.Module:
    """The untrained network for ``card``; weights are loaded separately."""
    builder = _ARCHITECTURES.get(card.architecture)
    if builder is not None:
        return builder(card)
    hooks = registry_prefix(card.architecture)
    if hooks is not None:
        return hooks.build(card)
    import timm

    if not timm.is_model(card.architecture):
        raise ModelError(
            f"model card {card.href}: architecture {card.architecture!r} is neither registered "
            "in stacembed nor a timm model"
        )
    options = {"pretrained": False, "in_chans": len(card.bands), "num_classes": 0}
    try:  # transformers are built for the card's chip size; CNNs take any size and no img_size
        model = timm.create_model(card.architecture, img_size=card.input_size, **options)
    except TypeError:
        model = timm.create_model(card.architecture, **options)
    size = getattr(model, "head_hidden_size", None) or model.num_features
    if size != card.embedding_size:
        raise ModelError(
            f"model card {card.href}: {card.architecture} gives {size}-d embeddings, "
            f"the card says {card.embedding_size}"
        )
    return model
