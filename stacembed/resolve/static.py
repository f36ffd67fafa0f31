"""Static STAC catalogs and collections (local or http(s)): walk them and yield their items.

Over http(s) every document is read through ``Access.stac_io`` (retries with backoff, the
timeout, ``--header`` for the catalog's own origin only).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pystac

from ..access import Access, redact_text
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


def catalog_items(href: str, collections: tuple[str, ...], access: Access = Access()) -> Iterator[pystac.Item]:
    """Items of a static catalog or collection, limited to ``collections`` when given.

    Asset hrefs come back absolute, so the items can be read from any working directory.
    """
    root = _read_stac(href, access)
    if isinstance(root, pystac.Item):
        raise ResolveError(f"{redact_text(href)} is a STAC Item, not a catalog; pass it with --items")
    if not isinstance(root, pystac.Catalog):
        raise ResolveError(f"{redact_text(href)} is not a STAC catalog or collection")
    if not collections or (isinstance(root, pystac.Collection) and root.id in collections):
        items: Iterator[pystac.Item] = root.get_items(recursive=True)
    else:
        items = _collection_items(root, collections)
    try:
        for item in items:
            item.make_asset_hrefs_absolute()
            yield item
    except (pystac.STACError, OSError) as exc:  # a child or item document, read as the walk reaches it
        cause = f" ({reason(exc.__cause__)})" if exc.__cause__ is not None else ""
        raise ResolveError(f"cannot read STAC catalog {redact_text(href)}: "
                           f"{redact_text(reason(exc))}{cause}") from None


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


def _read_stac(href: str, access: Access) -> pystac.STACObject:
    stac_io = access.stac_io(href)
    try:
        root = stac_io.read_stac_object(href)
    except FileNotFoundError:
        raise ResolveError(f"catalog {redact_text(href)!r} does not exist") from None
    except Exception as exc:  # pystac raises bare Exceptions, and JSON, type and I/O errors
        raise ResolveError(f"cannot read STAC catalog {redact_text(href)!r}: "
                           f"{redact_text(reason(exc.__cause__ or exc))}") from exc
    if isinstance(root, pystac.Catalog):
        root._stac_io = stac_io  # as Catalog.from_file does: children and items are read the same way
    return root
