"""ItemFilter: the question a search asks, answerable by a STAC API or on the client.

Every part of a search (collections, bbox, intersects, datetime, ids, Query, CQL2 filter,
sortby, max-items) can be evaluated here on items already in hand. Static catalogs and item
files are filtered this way; STAC API searches use it for whatever the server cannot do,
so the same question gives the same items whatever answers it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pystac
import shapely.geometry
from shapely.geometry.base import BaseGeometry

from ..errors import ConfigError, ResolveError

if TYPE_CHECKING:
    from ..config import Bbox, Interval

QUERY_OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "startsWith", "endsWith", "contains", "in")
Sort = tuple[tuple[str, str], ...]  # ((field, "asc" | "desc"), ...)


@dataclass(frozen=True)
class ItemFilter:
    """What to keep of the items a source holds, and in which order."""

    collections: tuple[str, ...] = ()
    bbox: Bbox | None = None
    intersects: dict | None = None
    datetime: Interval | None = None
    ids: tuple[str, ...] = ()
    query: dict | None = None
    filter: dict | None = None  # CQL2-JSON
    sortby: Sort = ()
    max_items: int | None = None

    def describe(self) -> str:
        parts = [f"collection={','.join(self.collections)}"] if self.collections else []
        if self.bbox:
            parts.append("bbox=" + ",".join(f"{v:g}" for v in self.bbox))
        if self.intersects:
            parts.append(f"intersects={self.intersects.get('type', 'geometry')}")
        if self.datetime:
            parts.append(f"datetime={interval_text(self.datetime)}")
        if self.ids:
            parts.append("ids=" + ",".join(self.ids))
        if self.query:
            parts.append("query=" + json.dumps(self.query, separators=(",", ":")))
        if self.filter:
            parts.append("filter=" + filter_text(self.filter))
        return " ".join(parts) or "no filter"

    def matches(self, item: pystac.Item,
                parts: Iterable[str] = ("spatial", "datetime", "ids", "query", "filter")) -> bool:
        """Whether ``item`` passes the named parts of this filter (collections are the source's job)."""
        checks = {
            "spatial": lambda: _intersects(item, self._area()),
            "datetime": lambda: self.datetime is None or _in_interval(item, self.datetime),
            "ids": lambda: not self.ids or item.id in self.ids,
            "query": lambda: not self.query or query_matches(self.query, item),
            "filter": lambda: not self.filter or cql2_matches(self.filter, item),
        }
        return all(checks[part]() for part in parts)

    def _area(self) -> BaseGeometry | None:
        if self.intersects:
            return shapely.geometry.shape(self.intersects)
        return shapely.geometry.box(*self.bbox) if self.bbox else None


def apply(items: Iterable[pystac.Item], filter: ItemFilter,
          parts: Iterable[str] = ("spatial", "datetime", "ids", "query", "filter"), *,
          sort: bool = True, limit: bool = True) -> Iterator[pystac.Item]:
    """Filter (and sort, and cut at max-items) items on the client."""
    parts = tuple(parts)
    kept: Iterable[pystac.Item] = (item for item in items if filter.matches(item, parts))
    if sort and filter.sortby:
        kept = sort_items(kept, filter.sortby)
    for count, item in enumerate(kept, start=1):
        yield item
        if limit and filter.max_items is not None and count >= filter.max_items:
            return


def sort_items(items: Iterable[pystac.Item], sortby: Sort) -> list[pystac.Item]:
    """Sort like a STAC API: by each field in turn, missing values last."""
    ordered = list(items)
    for name, direction in reversed(sortby):
        present = [i for i in ordered if field_value(i, name) is not None]
        missing = [i for i in ordered if field_value(i, name) is None]
        present.sort(key=lambda i: _sortable(field_value(i, name)), reverse=direction == "desc")
        ordered = present + missing
    return ordered


def field_value(item: pystac.Item, name: str) -> Any:
    """An item field by its search name: ``id``, ``collection``, or a property (``properties.`` optional)."""
    if name == "id":
        return item.id
    if name == "collection":
        return item.collection_id
    name = name.removeprefix("properties.")
    return item.properties.get(name)


def _sortable(value: Any) -> Any:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


# --- Query extension -------------------------------------------------------------------------

def parse_query(value: str | dict) -> dict:
    """``--query``: Query-extension JSON, e.g. ``{"eo:cloud_cover": {"lt": 10}}`` (text or file)."""
    data = _json_arg("--query", value)
    if not isinstance(data, dict):
        raise ConfigError('--query must be a JSON object like {"eo:cloud_cover": {"lt": 10}}')
    for name, ops in data.items():
        if not isinstance(ops, dict) or not ops:
            raise ConfigError(f"--query: {name!r} needs operators, e.g. {{\"{name}\": {{\"eq\": ...}}}}")
        unknown = sorted(set(ops) - set(QUERY_OPERATORS))
        if unknown:
            raise ConfigError(f"--query: unknown operator {unknown[0]!r} (known: {', '.join(QUERY_OPERATORS)})")
    return data


def query_matches(query: dict, item: pystac.Item) -> bool:
    return all(_query_op(op, field_value(item, name), operand)
               for name, ops in query.items() for op, operand in ops.items())


def _query_op(op: str, value: Any, operand: Any) -> bool:
    if value is None:
        return op == "neq"
    try:
        return {
            "eq": lambda: value == operand,
            "neq": lambda: value != operand,
            "lt": lambda: value < operand,
            "lte": lambda: value <= operand,
            "gt": lambda: value > operand,
            "gte": lambda: value >= operand,
            "startsWith": lambda: str(value).startswith(str(operand)),
            "endsWith": lambda: str(value).endswith(str(operand)),
            "contains": lambda: str(operand) in str(value),
            "in": lambda: value in operand,
        }[op]()
    except TypeError:
        return False


# --- CQL2 (Filter extension) -----------------------------------------------------------------

def parse_filter(value: str | dict, lang: str | None = None) -> dict:
    """``--filter`` in cql2-text or cql2-json (text, or a file), validated, as CQL2-JSON.

    Servers differ in which encoding they take over POST (stac-fastapi-pgstac refuses
    cql2-text), so the JSON form is what stacembed sends and evaluates.
    """
    import cql2

    if lang not in (None, "cql2-text", "cql2-json"):
        raise ConfigError(f"--filter-lang must be cql2-text or cql2-json; got {lang!r}")
    if isinstance(value, str) and (lang == "cql2-json" or (lang is None and value.lstrip().startswith(("{", "@")))):
        value = _json_arg("--filter", value)
    elif isinstance(value, str) and value.startswith("@"):
        value = _read_arg_file("--filter", value[1:])
    try:
        expr = cql2.Expr(value)
        expr.validate()
    except Exception as exc:  # cql2 raises plain Exceptions with a multi-line caret diagram
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--filter is not valid CQL2: {first}") from None
    return expr.to_json()


def filter_text(filter: dict) -> str:
    import cql2

    return cql2.Expr(filter).to_text()


def cql2_matches(filter: dict, item: pystac.Item) -> bool:
    import cql2

    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    try:
        return bool(cql2.Expr(filter).matches(data))
    except Exception as exc:
        raise ResolveError(f"cannot evaluate --filter on item {item.id!r}: "
                           f"{' '.join(str(exc).split())[:200]}") from None


# --- sortby ----------------------------------------------------------------------------------

def parse_sortby(value: str | list) -> Sort:
    """``-eo:cloud_cover,+datetime`` (or a list of such, or of ``{field, direction}``) -> pairs."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    parsed = []
    for entry in entries:
        if isinstance(entry, dict):
            name, direction = entry.get("field", ""), entry.get("direction", "asc")
        else:
            text = str(entry).strip()
            direction = "desc" if text.startswith("-") else "asc"
            name = text.lstrip("+-")
        if not name or direction not in ("asc", "desc"):
            raise ConfigError(f"--sortby: cannot use {entry!r}; write fields like -eo:cloud_cover,+datetime")
        parsed.append((name, direction))
    return tuple(parsed)


def sortby_param(sortby: Sort) -> list[dict[str, str]]:
    return [{"field": name, "direction": direction} for name, direction in sortby]


# --- helpers ---------------------------------------------------------------------------------

def interval_text(interval: Interval) -> str:
    return "/".join(pystac.utils.datetime_to_str(d) if d else ".." for d in interval)


def _json_arg(flag: str, value: str | dict | list) -> Any:
    if not isinstance(value, str):
        return value
    text = _read_arg_file(flag, value[1:]) if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from None


def _read_arg_file(flag: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag} @{path}: {exc.strerror}") from None


def _intersects(item: pystac.Item, area: BaseGeometry | None) -> bool:
    if area is None:
        return True
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


_GEOJSON_TYPES = re.compile(r"^(Multi)?(Point|LineString|Polygon)$|^GeometryCollection$")


def parse_intersects(value: str | dict) -> dict:
    """``--intersects``: a GeoJSON file (geometry, Feature or FeatureCollection) -> one geometry."""
    data = _json_arg("--intersects",
                     value if isinstance(value, dict) or value.lstrip().startswith("{") else "@" + value)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        shapes = [shapely.geometry.shape(f["geometry"]) for f in data.get("features", []) if f.get("geometry")]
        if not shapes:
            raise ConfigError("--intersects: the FeatureCollection has no geometries")
        return shapely.geometry.mapping(shapely.union_all(shapes))
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry") or {}
    if not isinstance(data, dict) or not _GEOJSON_TYPES.match(str(data.get("type", ""))):
        raise ConfigError("--intersects must be a GeoJSON geometry, Feature or FeatureCollection")
    try:
        shape = shapely.geometry.shape(data)
    except Exception as exc:
        raise ConfigError(f"--intersects: invalid geometry ({exc})") from None
    if not shape.is_valid:
        raise ConfigError("--intersects: the geometry is not valid (self-intersecting?)")
    return shapely.geometry.mapping(shape)
