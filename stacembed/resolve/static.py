"""Static STAC catalogs and collections (local or http(s)): walk them and yield their items."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pystac

from ..errors import ResolveError
from .files import only_collections, reason


def sample_catalog_href() -> str:
    """The bundled sample catalog: in a source checkout, or installed under ``share/stacembed``."""
    here = Path(__file__).resolve().parents[1]
    candidates = [
        here.parent / "catalogs" / "sample" / "catalog.json",
        Path(sys.prefix) / "share" / "stacembed" / "catalogs" / "sample" / "catalog.json",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise ResolveError("the bundled sample catalog is not installed; pass --catalog or --items")


def catalog_items(href: str, collections: tuple[str, ...]) -> Iterator[pystac.Item]:
    """Items of a static catalog or collection, limited to ``collections`` when given.

    Asset hrefs come back absolute, so the items can be read from any working directory.
    """
    root = _read_stac(href)
    if isinstance(root, pystac.Item):
        raise ResolveError(f"{href} is a STAC Item, not a catalog; pass it with --items")
    if not isinstance(root, pystac.Catalog):
        raise ResolveError(f"{href} is not a STAC catalog or collection")
    if not collections or (isinstance(root, pystac.Collection) and root.id in collections):
        items: Iterator[pystac.Item] = root.get_items(recursive=True)
    else:
        items = _collection_items(root, collections)
    for item in items:
        item.make_asset_hrefs_absolute()
        yield item


def _collection_items(root: pystac.Catalog, wanted: tuple[str, ...]) -> Iterator[pystac.Item]:
    """Items of the wanted collections: through their Collection documents when the catalog has
    them, else by the items' ``collection`` field (stage-in tools link items straight from the
    catalog, with no Collection document)."""
    found = {c.id: c for c in root.get_all_collections()}
    if all(c in found for c in wanted):
        for collection in wanted:
            yield from found[collection].get_items(recursive=True)
    else:
        yield from only_collections(root.get_items(recursive=True), wanted)


def _read_stac(href: str) -> pystac.STACObject:
    try:
        return pystac.read_file(href)
    except FileNotFoundError:
        raise ResolveError(f"catalog {href!r} does not exist") from None
    except Exception as exc:  # pystac raises a bare Exception ("Could not read uri") for HTTP errors
        raise ResolveError(f"cannot read STAC catalog {href!r}: {reason(exc.__cause__ or exc)}") from exc
