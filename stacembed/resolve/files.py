"""Item files: an ItemCollection or Item (JSON), ndjson, or a stac-geoparquet table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pystac

from ..access import Access, redact_text
from ..errors import ResolveError


def read_item_file(path: str, access: Access = Access()) -> list[pystac.Item]:
    """Read an ItemCollection / single Item (JSON), ndjson, or stac-geoparquet file (JSON over
    http(s) through ``Access.stac_io``: retried, with the timeout and scoped headers)."""
    suffix = Path(urlparse(path).path).suffix.lower()
    try:
        if suffix in (".parquet", ".geoparquet"):
            items = _read_geoparquet(path)
        elif suffix in (".ndjson", ".jsonl"):
            items = [_item(json.loads(line)) for line in _read_text(path, access).splitlines() if line.strip()]
        else:
            items = _read_json_items(json.loads(_read_text(path, access)))
    except FileNotFoundError:
        raise ResolveError(f"item file {redact_text(path)!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError) as exc:
        raise ResolveError(f"cannot read items from {redact_text(path)!r}: {redact_text(reason(exc))}") from exc
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


def only_collections(items: Iterable[pystac.Item], collections: tuple[str, ...]) -> Iterator[pystac.Item]:
    """Keep items of ``collections``; an id that no item has is an error, not an empty result."""
    seen: set[str] = set()
    matched: set[str] = set()
    for item in items:
        seen.add(str(item.collection_id))
        if item.collection_id in collections:
            matched.add(item.collection_id)
            yield item
    missing = [c for c in collections if c not in matched]
    if missing:
        known = ", ".join(sorted(seen)) or "none"
        raise ResolveError(f"collection {missing[0]!r} not found in the items (they have: {known})")


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_text(path: str, access: Access) -> str:
    try:
        return access.stac_io(path).read_text(path)
    except (FileNotFoundError, OSError):
        raise
    except Exception as exc:  # pystac raises a bare Exception ("Could not read uri") for HTTP errors
        raise OSError(reason(exc.__cause__ or exc)) from exc


def _read_json_items(data: object) -> list[pystac.Item]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return [_item(feature) for feature in data.get("features", [])]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [_item(data)]
    raise ValueError("expected a STAC ItemCollection (FeatureCollection) or a STAC Item")


def _item(data: dict) -> pystac.Item:
    self_href = next((link["href"] for link in data.get("links", []) if link.get("rel") == "self"), None)
    return pystac.Item.from_dict(data, href=self_href, preserve_dict=False)


def _read_geoparquet(path: str) -> list[pystac.Item]:
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow

    table = pq.read_table(path)
    return [pystac.Item.from_dict(d) for d in stac_geoparquet.arrow.stac_table_to_items(table)]
