"""Static STAC catalogs and collections (local or http(s)): walk them and yield their items."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pystac

from ..errors import ResolveError
from .files import reason


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
    sources: list[pystac.Catalog] = [root]
    if collections and not (isinstance(root, pystac.Collection) and root.id in collections):
        sources = _find_collections(root, collections, href)
    for source in sources:
        for item in source.get_items(recursive=True):
            item.make_asset_hrefs_absolute()
            yield item


def _find_collections(root: pystac.Catalog, wanted: tuple[str, ...], href: str) -> list[pystac.Catalog]:
    found = {c.id: c for c in root.get_all_collections()}
    missing = [c for c in wanted if c not in found]
    if missing:
        known = ", ".join(sorted(found)) or "none"
        raise ResolveError(f"collection {missing[0]!r} not found in {href} (it has: {known})")
    return [found[c] for c in wanted]


def _read_stac(href: str) -> pystac.STACObject:
    try:
        return pystac.read_file(href)
    except FileNotFoundError:
        raise ResolveError(f"catalog {href!r} does not exist") from None
    except Exception as exc:  # pystac raises a bare Exception ("Could not read uri") for HTTP errors
        raise ResolveError(f"cannot read STAC catalog {href!r}: {reason(exc.__cause__ or exc)}") from exc
