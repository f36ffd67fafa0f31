"""STAC MLM (v1.5) model cards <-> ``ModelCard``: what to stack, how to scale, what comes out.

A card is a STAC Item with the Machine Learning Model extension. Only what inference needs
is lifted into typed fields; the full item is kept (``item``) so it can be republished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from ..errors import ModelError
from .scaling import check_value_scaling

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
_CATALOG_RELS = ("self", "root", "parent", "collection")


@dataclass(frozen=True)
class CardInput:
    """One of a card's ``mlm:input`` entries: a modality (its ``name``, e.g. ``S2L2A``), its
    bands in the order the model takes them, and their value scaling (one entry, or one per band)."""

    name: str
    bands: tuple[str, ...]
    value_scaling: tuple[dict[str, Any] | None, ...] = ()


@dataclass(frozen=True)
class ModelCard:
    """The inference-relevant facts of one MLM card.

    A card may declare several inputs (``mlm:input``, one per modality: S2 L2A, S1 GRD, DEM, ...);
    ``inputs`` keeps them, and ``bands`` / ``value_scaling`` are theirs concatenated in that
    order, which is how a chip's channels are stacked (a multi-modal backbone splits them back
    per modality). A single-input card has one input whose bands are ``bands``."""

    name: str
    architecture: str
    bands: tuple[str, ...]
    input_size: tuple[int, int]
    embedding_size: int
    value_scaling: tuple[dict[str, Any] | None, ...]
    href: str
    weights_href: str | None = None
    weights_sha256: str | None = None
    artifact_type: str | None = None
    pretrained: bool = True
    inputs: tuple[CardInput, ...] = ()
    item: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_item(cls, item: dict[str, Any], href: str) -> ModelCard:
        """Lift a card out of an MLM item dict; ``href`` resolves relative asset hrefs."""
        try:
            props = item["properties"]
            # Inputs without bands are auxiliary (Prithvi's temporal and location coordinates), not pixels.
            imagery = [entry for entry in props["mlm:input"] if entry.get("bands")]
            inputs = tuple(_card_input(entry, href) for entry in imagery)
            sizes = {tuple(int(v) for v in entry["input"]["shape"][-2:]) for entry in imagery}
            model_output = props["mlm:output"][0]
            embedding_size = int(model_output["result"]["shape"][-1])
            name, architecture = props["mlm:name"], props["mlm:architecture"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelError(f"model card {href} is not a usable MLM item: missing or bad {exc}") from None
        if not inputs:
            raise ModelError(f"model card {href} names no input bands (mlm:input[].bands)")
        if len(sizes) != 1:
            raise ModelError(f"model card {href}: its inputs differ in size ({sorted(sizes)}); "
                             "stacembed stacks every modality on one chip grid")
        (height, width), = sizes
        if height < 1 or width < 1 or embedding_size < 1:
            raise ModelError(f"model card {href} needs fixed positive input and output sizes")
        bands = tuple(band for entry in inputs for band in entry.bands)
        scaling = inputs[0].value_scaling if len(inputs) == 1 else _per_band_scaling(inputs, href)
        weights = weights_asset(item)
        return cls(
            name=name,
            architecture=architecture,
            bands=bands,
            input_size=(height, width),
            embedding_size=embedding_size,
            value_scaling=scaling,
            href=href,
            weights_href=_absolute(weights.get("href"), href) if weights else None,
            weights_sha256=_sha256_of(weights) if weights else None,
            artifact_type=weights.get("mlm:artifact_type") if weights else None,
            pretrained=bool(props.get("mlm:pretrained", True)),
            inputs=inputs,
            item=item,
        )

    def chip_size(self, requested: int | None = None) -> int:
        """The chip size a run uses: ``requested`` (``--chip-size``), else the card's input size."""
        return requested or self.input_size[0]

    def standalone_item(self) -> dict[str, Any]:
        """A deep copy of ``item`` that stands on its own, outside any catalog.

        The self, root, parent and collection links and the ``collection`` field are dropped.
        """
        item = json.loads(json.dumps(self.item))
        item["links"] = [link for link in item.get("links", []) if link.get("rel") not in _CATALOG_RELS]
        item.pop("collection", None)
        return item


def _card_input(entry: dict[str, Any], href: str) -> CardInput:
    """One ``mlm:input`` entry, checked: bands named, value scaling one entry or one per band."""
    bands = tuple(b if isinstance(b, str) else b["name"] for b in entry["bands"])
    scaling = tuple(entry.get("value_scaling") or ())
    if len(scaling) not in (0, 1, len(bands)):
        raise ModelError(f"model card {href}: input {entry.get('name')!r} has {len(scaling)} value_scaling "
                         f"entries for {len(bands)} bands")
    check_value_scaling(scaling, f"model card {href}")
    return CardInput(str(entry["name"]), bands, scaling)


def _per_band_scaling(inputs: tuple[CardInput, ...], href: str) -> tuple[dict[str, Any] | None, ...]:
    """The inputs' value scaling as one entry per band of all of them (an input without scaling: None)."""
    scaling: list[dict[str, Any] | None] = []
    for entry in inputs:
        given = entry.value_scaling
        scaling += list(given) if len(given) == len(entry.bands) else [given[0] if given else None] * len(entry.bands)
    return tuple(scaling)


def load_card(href: str) -> ModelCard:
    """Read an MLM card from a local path or http(s) URL."""
    from ..access import Access

    try:
        text = Access().stac_io(href).read_text(href)  # retried over http(s)
        item = json.loads(text)
    except FileNotFoundError:
        raise ModelError(f"model card {href} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model card {href}: {str(exc).splitlines()[0]}") from None
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise ModelError(f"model card {href} is not a STAC Item")
    return ModelCard.from_item(item, _absolute(href, None))


def weights_asset(item: dict[str, Any]) -> dict[str, Any] | None:
    """The item's first asset with role ``mlm:model``, if any."""
    for asset in item.get("assets", {}).values():
        if "mlm:model" in asset.get("roles", ()):
            return asset
    return None


def _sha256_of(asset: dict[str, Any]) -> str | None:
    """SHA-256 hex digest from ``file:checksum`` (multihash, sha2-256 = prefix ``1220``)."""
    checksum = asset.get("file:checksum")
    if isinstance(checksum, str) and checksum.startswith("1220") and len(checksum) == 68:
        return checksum[4:]
    return None


def _absolute(href: str | None, base: str | None) -> str | None:
    if href is None:
        return None
    if urlparse(href).scheme in ("http", "https", "s3", "gs", "file"):
        return href
    if base is None:
        return str(Path(href).resolve())
    if urlparse(base).scheme in ("http", "https", "s3", "gs"):
        return urljoin(base, href)
    return str((Path(base).parent / href).resolve())
