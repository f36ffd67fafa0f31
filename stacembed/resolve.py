"""Resolve STAC items: a static catalog, a collection, or an item file -> filtered pystac Items.

Filtering is local (collection, bbox, datetime, ids, max-items) so a static catalog answers
the same question a STAC API search would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

import pystac
import shapely.geometry

from .config import Bbox, Interval
from .errors import ResolveError

SAMPLE_COLLECTION = "landsat-etm-sample"


@dataclass(frozen=True)
class ItemFilter:
    """What to keep of the items a source holds."""

    collection: str | None = None
    bbox: Bbox | None = None
    datetime: Interval | None = None
    ids: tuple[str, ...] = ()
    max_items: int | None = None

    def describe(self) -> str:
        parts = [f"collection={self.collection}"] if self.collection else []
        if self.bbox:
            parts.append("bbox=" + ",".join(f"{v:g}" for v in self.bbox))
        if self.datetime:
            parts.append("datetime=" + "/".join(d.isoformat() if d else ".." for d in self.datetime))
        if self.ids:
            parts.append("ids=" + ",".join(self.ids))
        return " ".join(parts) or "no filter"


def sample_catalog_href() -> str:
    """The bundled sample catalog: in a source checkout, or installed under ``share/stacembed``."""
    import sys

    here = Path(__file__).resolve().parent
    candidates = [
        here.parent / "catalogs" / "sample" / "catalog.json",
        Path(sys.prefix) / "share" / "stacembed" / "catalogs" / "sample" / "catalog.json",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise ResolveError("the bundled sample catalog is not installed; pass --catalog or --items")


def resolve_items(
    *, catalog: str | None = None, items: str | None = None, filter: ItemFilter = ItemFilter()
) -> list[pystac.Item]:
    """Load items from ``catalog`` (static catalog/collection) or ``items`` (file), then filter.

    With neither, the bundled sample catalog is used. Asset hrefs come back absolute, so the
    items can be read from any working directory.
    """
    if items:
        found: Iterable[pystac.Item] = read_item_file(items)
        if filter.collection:
            found = _only_collection(found, filter.collection)
    else:
        found = _catalog_items(catalog or sample_catalog_href(), filter.collection)
    selected = list(_filtered(found, filter))
    if not selected:
        source = items or catalog or "the sample catalog"
        raise ResolveError(f"no items matched in {source} ({filter.describe()})")
    return selected


def _catalog_items(href: str, collection: str | None) -> Iterator[pystac.Item]:
    root = _read_stac(href)
    if isinstance(root, pystac.Item):
        raise ResolveError(f"{href} is a STAC Item, not a catalog; pass it with --items")
    if not isinstance(root, pystac.Catalog):
        raise ResolveError(f"{href} is not a STAC catalog or collection")
    source = root
    if collection and not (isinstance(root, pystac.Collection) and root.id == collection):
        source = _find_collection(root, collection, href)
    for item in source.get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        yield item


def _find_collection(root: pystac.Catalog, collection: str, href: str) -> pystac.Collection:
    collections = list(root.get_all_collections())
    for candidate in collections:
        if candidate.id == collection:
            return candidate
    known = ", ".join(sorted(c.id for c in collections)) or "none"
    raise ResolveError(f"collection {collection!r} not found in {href} (it has: {known})")


def _read_stac(href: str) -> pystac.STACObject:
    try:
        return pystac.read_file(href)
    except FileNotFoundError:
        raise ResolveError(f"catalog {href!r} does not exist") from None
    except (OSError, pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise ResolveError(f"cannot read STAC catalog {href!r}: {_reason(exc)}") from exc


def read_item_file(path: str) -> list[pystac.Item]:
    """Read an ItemCollection / single Item (JSON), ndjson, or stac-geoparquet file."""
    suffix = Path(urlparse(path).path).suffix.lower()
    try:
        if suffix in (".parquet", ".geoparquet"):
            items = _read_geoparquet(path)
        elif suffix in (".ndjson", ".jsonl"):
            items = [_item(json.loads(line)) for line in _read_text(path).splitlines() if line.strip()]
        else:
            items = _read_json_items(json.loads(_read_text(path)))
    except FileNotFoundError:
        raise ResolveError(f"item file {path!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError) as exc:
        raise ResolveError(f"cannot read items from {path!r}: {_reason(exc)}") from exc
    base = path if urlparse(path).scheme in ("http", "https", "file") else str(Path(path).resolve())
    for item in items:
        if item.get_self_href() is None:
            # Relative asset hrefs in an item file are relative to that file.
            item.set_self_href(base)
            item.make_asset_hrefs_absolute()
            item.set_self_href(None)
        else:
            item.make_asset_hrefs_absolute()
    return items


def _read_text(path: str) -> str:
    from pystac.stac_io import StacIO

    return StacIO.default().read_text(path)


def _read_json_items(data: object) -> list[pystac.Item]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return [_item(feature) for feature in data.get("features", [])]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [_item(data)]
    raise ValueError("expected a STAC ItemCollection (FeatureCollection) or a STAC Item")


def _item(data: dict) -> pystac.Item:
    self_href = next((l["href"] for l in data.get("links", []) if l.get("rel") == "self"), None)
    return pystac.Item.from_dict(data, href=self_href, preserve_dict=False)


def _read_geoparquet(path: str) -> list[pystac.Item]:
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow

    table = pq.read_table(path)
    return [pystac.Item.from_dict(d) for d in stac_geoparquet.arrow.stac_table_to_items(table)]


def _only_collection(items: Iterable[pystac.Item], collection: str) -> Iterator[pystac.Item]:
    seen: set[str] = set()
    matched = False
    for item in items:
        seen.add(str(item.collection_id))
        if item.collection_id == collection:
            matched = True
            yield item
    if not matched:
        known = ", ".join(sorted(seen)) or "none"
        raise ResolveError(f"collection {collection!r} not found in the items (they have: {known})")


def _filtered(items: Iterable[pystac.Item], filter: ItemFilter) -> Iterator[pystac.Item]:
    area = shapely.geometry.box(*filter.bbox) if filter.bbox else None
    wanted_ids = set(filter.ids)
    count = 0
    for item in items:
        if wanted_ids and item.id not in wanted_ids:
            continue
        if area is not None and not _intersects(item, area):
            continue
        if filter.datetime and not _in_interval(item, filter.datetime):
            continue
        yield item
        count += 1
        if filter.max_items is not None and count >= filter.max_items:
            return


def _intersects(item: pystac.Item, area: shapely.geometry.base.BaseGeometry) -> bool:
    if item.geometry is not None:
        return shapely.geometry.shape(item.geometry).intersects(area)
    return item.bbox is not None and shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:]).intersects(area)


def _in_interval(item: pystac.Item, interval: Interval) -> bool:
    start, end = item_time_range(item)
    lo, hi = interval
    return (hi is None or start <= hi) and (lo is None or end >= lo)


def item_time_range(item: pystac.Item) -> tuple[datetime, datetime]:
    """The instant or range an item covers (``datetime``, or ``start_datetime``/``end_datetime``)."""
    common = item.common_metadata
    start = item.datetime or common.start_datetime
    end = item.datetime or common.end_datetime
    if start is None or end is None:
        raise ResolveError(f"item {item.id!r} has no datetime nor start/end_datetime")
    return start, end


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
