"""Write the items a search found: a table for people, JSON / ndjson / stac-geoparquet for tools.

The file formats are the ones ``stacembed run --items`` reads back, so a search can be
checked, saved, and then embedded exactly as it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pystac

from ..access import redact
from ..errors import OutputError
from ..layout import atomic_path, write_bytes


def write_items(items: list[pystac.Item], fmt: str, output: str | None = None, *,
                keep_query: bool = False) -> None:
    """Write ``items`` as ``fmt`` to the file ``output`` (atomically) or to standard output; asset
    and link hrefs as ``access.redact`` writes them (``keep_query``: ``--keep-href-query``)."""
    if fmt == "geoparquet" and output is None:
        raise OutputError("--format geoparquet needs --output FILE")
    dicts = [_public(item, keep_query) for item in items]
    if fmt == "geoparquet":
        _write_geoparquet(dicts, Path(output))
        return
    text = {"table": _table, "json": _json, "ndjson": _ndjson}[fmt](dicts)
    if output is None:
        sys.stdout.write(text)
    else:
        with _output_errors(Path(output)):
            write_bytes(Path(output), text.encode())


def _public(item: pystac.Item, keep_query: bool = False) -> dict:
    """The item as a dict, credentials (userinfo, tokens in queries) removed from every href."""
    data = item.to_dict(include_self_link=True, transform_hrefs=False)
    data["links"] = [{**link.to_dict(), "href": redact(link.get_absolute_href() or link.href, keep_query)}
                     for link in item.links]
    for asset in data.get("assets", {}).values():
        asset["href"] = redact(asset["href"], keep_query)
    return data


def _table(items: list[dict]) -> str:
    rows = [("id", "collection", "datetime", "cloud", "assets")]
    for item in items:
        props = item["properties"]
        when = props.get("datetime") or f"{props.get('start_datetime')}/{props.get('end_datetime')}"
        cloud = props.get("eo:cloud_cover")
        rows.append((item["id"], str(item.get("collection") or ""), str(when),
                     "" if cloud is None else f"{cloud:g}", str(len(item.get("assets", {})))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + f"\n{len(items)} item(s)\n"


def _json(items: list[dict]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": items}, indent=2) + "\n"


def _ndjson(items: Iterable[dict]) -> str:
    return "".join(json.dumps(item, separators=(",", ":")) + "\n" for item in items)


def _write_geoparquet(items: list[dict], path: Path) -> None:
    import stac_geoparquet.arrow

    table = stac_geoparquet.arrow.parse_stac_items_to_arrow(items)
    with _output_errors(path), atomic_path(path) as tmp:
        stac_geoparquet.arrow.to_parquet(table, tmp)


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """A file that cannot be written is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
