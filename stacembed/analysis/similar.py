"""Similarity search: the chips of an embedding catalog most like a query, by cosine similarity.

A ``Query`` names chips of the catalog: the chip under a point (``Query.from_point``), one chip
by item and position (``from_chip``), every chip a geometry covers (``from_geometry``, their
mean), or a vector (``from_vector``). Queries add up: ``q1 + q2`` averages their chips, and
``q1 - q2`` subtracts ``q2``'s (query = mean(positives) - mean(negatives), then normalised; every
chip vector is normalised first, so each counts alike, as cosine similarity sees them).

``similar(catalog, query, k)`` returns the ``k`` most similar chips as a ``pyarrow.Table``
(``RESULT_SCHEMA``: rank, similarity, chip id, item, collection, source item and collection,
chip_row/chip_col, datetime, WGS84 footprint as WKB), with GeoParquet ``geo`` metadata so that
``write_results`` (GeoParquet, GeoJSON, CSV) and geopandas read it as it is.

- **Exact search** streams each item's chips in bounded batches (``EmbeddingItem.iter_chips``:
  its GeoParquet a row group at a time, or windows of its COG for GeoTIFF-only and dense
  embeddings, whose chips are the COG's pixels: patches, for dense ones) and keeps a running
  top-k: ``np.partition`` per batch, merged with the k kept so far. Memory is one batch and k
  rows, whatever the catalog's size. Filters (``bbox`` on the chip footprints' bbox, ``datetime``
  on the ``datetime`` column, ``collections`` on the items) drop rows before they are scored.
- **Indexed search** (``stacembed.analysis.index``): where a collection carries an up-to-date
  index asset (``stacembed index``), its chips are searched there, unless ``exact=True``; a stale
  index (items changed since it was built) is not used: that collection is scanned instead.
- Ties are broken by catalog order (item, then row), so results do not depend on batch sizes.
- The chips a query names are looked up among the chips of the ``collections`` asked for, but
  not restricted by ``bbox``/``datetime`` (find, elsewhere, chips like this one). Every chip of
  the query and every chip searched must be of one embedding space (model, weights, pooling,
  layer, dimensions): anything else is a one-line ``ConfigError``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pystac
import shapely
import shapely.geometry

from ..config import Interval, parse_bbox, parse_datetime
from ..embeddings import BATCH_ROWS, EmbeddingCatalog, EmbeddingItem, open_embeddings
from ..errors import ConfigError
from ..layout import atomic_path
from .derived import describe_model, model_of
from .index import open_index
from .scan import (
    CHIP_SCHEMA,
    Filters,
    TopK,
    boxes_meet,
    catalog_order,
    item_reach,
    scan,
    select_items,
)

log = logging.getLogger("stacembed")

RESULT_METADATA_KEY = b"stacembed:similar"
# The columns a chip keeps in a result, from the chips stacembed writes (and the index sidecar).
RESULT_SCHEMA = pa.schema([("rank", pa.int32()), ("similarity", pa.float32()), *CHIP_SCHEMA])
OUTPUT_SUFFIXES = {".parquet": "geoparquet", ".geoparquet": "geoparquet", ".geojson": "geojson",
                   ".json": "geojson", ".csv": "csv"}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_POINT = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_CHIP = re.compile(r"^(?P<item>.+):(?P<row>\d+):(?P<col>\d+)$")


# -- queries ------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Probe:
    """One thing a query takes chips from: a point, a chip, a geometry (GeoJSON) or a vector."""

    kind: str
    point: tuple[float, float] | None = None
    chip: tuple[str, int, int] | None = None
    geometry: dict[str, Any] | None = None
    vector: np.ndarray | None = None

    def describe(self) -> str:
        if self.kind == "point":
            return f"point {self.point[0]:g},{self.point[1]:g}"
        if self.kind == "chip":
            return "chip {}:{}:{}".format(*self.chip)
        if self.kind == "geometry":
            return f"{self.geometry.get('type', 'geometry')} geometry"
        return f"{len(self.vector)}-d vector"


@dataclass(frozen=True, eq=False)
class Query:
    """Chips to search for: positives averaged, negatives subtracted (see the module docstring)."""

    positive: tuple[Probe, ...]
    negative: tuple[Probe, ...] = ()

    @classmethod
    def from_point(cls, lon: float, lat: float) -> Query:
        """The chip whose footprint covers ``lon``, ``lat`` (of several, the one centred nearest)."""
        lon, lat = float(lon), float(lat)
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ConfigError(f"point {lon:g},{lat:g} is not a WGS84 longitude,latitude")
        return cls((Probe("point", point=(lon, lat)),))

    @classmethod
    def from_chip(cls, item: str, row: int, col: int) -> Query:
        """The chip at ``chip_row``, ``chip_col`` of embedding item ``item``."""
        return cls((Probe("chip", chip=(str(item), int(row), int(col))),))

    @classmethod
    def from_geometry(cls, geometry: dict[str, Any] | str | Path | Any) -> Query:
        """The mean of the chips a geometry covers: GeoJSON (geometry, Feature or FeatureCollection)
        as a dict, a JSON text, a file, or a shapely geometry; lon/lat (WGS84)."""
        return cls((Probe("geometry", geometry=parse_geometry(geometry)),))

    @classmethod
    def from_vector(cls, vector: Sequence[float] | np.ndarray) -> Query:
        """A vector of the catalog's embedding space (only its dimensions can be checked)."""
        values = np.asarray(vector, dtype="float32")
        if values.ndim != 1 or not len(values) or not np.isfinite(values).all():
            raise ConfigError("a query vector must be one finite 1-d vector")
        return cls((Probe("vector", vector=values),))

    @classmethod
    def parse(cls, spec: str, kind: str | None = None) -> Query:
        """A query from its command-line form: ``LON,LAT``, ``ITEM:ROW:COL``, or GeoJSON (inline or a
        file); ``kind`` (``point``, ``chip``) accepts that form only."""
        text = spec.strip()
        point = _POINT.match(text)
        if kind == "point":
            if not point:
                raise ConfigError(f"--point {spec!r} is not LON,LAT (decimal degrees, e.g. -34.9,-7.95)")
            return cls.from_point(float(point[1]), float(point[2]))
        if kind == "chip":
            chip = _CHIP.match(text)
            if not chip:
                raise ConfigError(f"--chip {spec!r} is not ITEM:ROW:COL (an embedding item id, chip_row, chip_col)")
            return cls.from_chip(chip["item"], int(chip["row"]), int(chip["col"]))
        if text.startswith("{"):
            return cls.from_geometry(text)
        if point:
            return cls.from_point(float(point[1]), float(point[2]))
        if Path(text).is_file():
            return cls.from_geometry(Path(text))
        chip = _CHIP.match(text)
        if chip:
            return cls.from_chip(chip["item"], int(chip["row"]), int(chip["col"]))
        raise ConfigError(f"query {spec!r} is not LON,LAT, ITEM:ROW:COL, a GeoJSON file nor inline GeoJSON")

    @classmethod
    def combine(cls, positive: Iterable[Query | str] = (), negative: Iterable[Query | str] = ()) -> Query:
        """One query of several: each of ``positive`` added, each of ``negative`` subtracted."""
        query = cls(())
        for each in positive:
            query = query + (cls.parse(each) if isinstance(each, str) else each)
        for each in negative:
            query = query - (cls.parse(each) if isinstance(each, str) else each)
        if not query.positive:
            raise ConfigError("a query needs at least one positive: --point, --chip or --geometry")
        return query

    def __add__(self, other: Query) -> Query:
        return Query(self.positive + other.positive, self.negative + other.negative)

    def __sub__(self, other: Query) -> Query:
        return Query(self.positive + other.negative, self.negative + other.positive)

    def describe(self) -> str:
        text = " + ".join(p.describe() for p in self.positive)
        return text + "".join(f" - {p.describe()}" for p in self.negative)


@dataclass
class ResolvedQuery:
    """A query's vector (unit length, float32), its embedding space and the chips it was made of."""

    vector: np.ndarray
    model: dict[str, Any] | None  # None: only vectors were given, whose model is not known
    positive: list[str] = field(default_factory=list)  # chip ids ("ITEM:ROW:COL") per positive
    negative: list[str] = field(default_factory=list)


def parse_geometry(value: dict[str, Any] | str | Path | Any) -> dict[str, Any]:
    """A GeoJSON geometry (as a dict) from a geometry, Feature or FeatureCollection, inline or a file."""
    if hasattr(value, "__geo_interface__") and not isinstance(value, dict):
        value = value.__geo_interface__
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("{")):
        try:
            value = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read GeoJSON {value}: {exc.strerror}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the query geometry is not valid JSON: {exc}") from None
    if isinstance(value, dict) and value.get("type") == "FeatureCollection":
        shapes = [shapely.geometry.shape(f["geometry"]) for f in value.get("features", []) if f.get("geometry")]
        if not shapes:
            raise ConfigError("the query FeatureCollection has no geometries")
        return shapely.geometry.mapping(shapely.union_all(shapes))
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry") or {}
    try:
        shape = shapely.geometry.shape(value)
    except Exception:
        raise ConfigError("the query geometry must be a GeoJSON geometry, Feature or FeatureCollection") from None
    if shape.is_empty or not shape.is_valid:
        raise ConfigError("the query geometry is empty or not valid (self-intersecting?)")
    return shapely.geometry.mapping(shape)


# -- filters ------------------------------------------------------------------------------------


# -- the search ---------------------------------------------------------------------------------

def similar(
    catalog: str | Path | EmbeddingCatalog,
    query: Query | str,
    k: int = 10,
    *,
    bbox: str | Sequence[float] | None = None,
    datetime: str | Interval | None = None,
    collections: Sequence[str] | str = (),
    exact: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> pa.Table:
    """The ``k`` chips of ``catalog`` most similar to ``query``, best first (``RESULT_SCHEMA``).

    ``bbox`` (W,S,E,N lon/lat), ``datetime`` (RFC 3339 instant or interval) and ``collections``
    (embedding collection ids) restrict the chips searched. ``exact`` scans every chip even
    where a collection has an index. The table's schema metadata ``stacembed:similar`` (JSON)
    says what was searched and how (``search``: collection id -> ``index`` or ``exact``).
    """
    catalog = catalog if isinstance(catalog, EmbeddingCatalog) else open_embeddings(catalog)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive whole number; got {k!r}")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be positive; got {batch_rows!r}")
    filters = Filters(parse_bbox(bbox) if bbox is not None else None,
                      parse_datetime(datetime) if datetime else None)
    items = select_items(catalog, (collections,) if isinstance(collections, str) else tuple(collections))
    query = Query.parse(query) if isinstance(query, str) else query
    resolved = resolve(query, items, batch_rows)
    candidates = [item for item in items if filters.item_may_match(item)]
    _check_models(resolved, candidates, catalog.href)

    order = catalog_order(items)
    searchable = {id(item) for item in candidates}
    top = TopK(k)
    methods: dict[str, str] = {}
    searched = 0
    for collection_id, group in _by_collection(items):
        members = [item for item in group if id(item) in searchable]
        if not members:
            continue
        index = None if exact else open_index(group)
        if index is not None:
            try:
                scores, keys, rows, matched = index.search(resolved.vector, k, filters, order)
            finally:
                index.close()
            top.push(scores, keys, lambda chosen, rows=rows: rows.take(pa.array(chosen)))
            methods[collection_id] = "index"
        else:
            matched = scan(members, order, resolved.vector[None], filters, [top], batch_rows)
            methods[collection_id] = "exact"
        searched += matched
    if searched < k:
        where = " matching --bbox/--datetime/--collection" if filters.active or collections else ""
        raise ConfigError(f"--k {k} is more than the {searched} chip{'s' if searched != 1 else ''}{where} "
                          f"in {catalog.href}; ask for --k {searched} or fewer" if searched else
                          f"no chip{where} in {catalog.href} to search")
    metadata = {"query": query.describe(), "positive": resolved.positive, "negative": resolved.negative,
                "k": k, "chips_searched": searched, "search": methods,
                "model": resolved.model or {"dimensions": len(resolved.vector)}}
    return result_table(top.rows(), top.scores, metadata)


def resolve(query: Query, items: Sequence[EmbeddingItem], batch_rows: int = BATCH_ROWS) -> ResolvedQuery:
    """The vector of ``query`` among ``items``' chips: mean(positives) - mean(negatives), unit length."""
    models: dict[str, dict[str, Any]] = {}
    means: list[list[np.ndarray]] = [[], []]
    labels: list[list[str]] = [[], []]
    for side, probes in enumerate((query.positive, query.negative)):
        for probe in probes:
            vector, chips, used = _probe_vector(probe, items, batch_rows)
            means[side].append(vector)
            labels[side].extend(chips)
            for item in used:
                models.setdefault(json.dumps(model_of(item), sort_keys=True), model_of(item))
    if len(models) > 1:
        listed = " and ".join(describe_model(m) for m in models.values())
        raise ConfigError(f"the query mixes chips of different embedding models or dimensions ({listed}); "
                          "their vectors cannot be combined: restrict it with --collection")
    dims = {len(v) for side in means for v in side}
    if len(dims) > 1:
        raise ConfigError(f"the query mixes vectors of {' and '.join(map(str, sorted(dims)))} dimensions")
    vector = np.mean(means[0], axis=0)
    if means[1]:
        vector = vector - np.mean(means[1], axis=0)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm < 1e-12:
        raise ConfigError("the query is a zero vector: its negatives cancel its positives out")
    model = next(iter(models.values()), None)
    return ResolvedQuery((vector / norm).astype("float32"), model, labels[0], labels[1])


def _probe_vector(probe: Probe, items: Sequence[EmbeddingItem],
                  batch_rows: int) -> tuple[np.ndarray, list[str], list[EmbeddingItem]]:
    """``(unit vector, chip labels, items used)`` of one probe."""
    if probe.kind == "vector":
        return _unit(probe.vector[None])[0].astype("float64"), [], []
    if probe.kind == "chip":
        item_id, row, col = probe.chip
        item = next((i for i in items if i.id == item_id), None)
        if item is None:
            raise ConfigError(f"no embeddings item {item_id!r} in the catalog (or in --collection)")
        vector = item.chip(row, col)
        if vector is None:
            raise ConfigError(f"item {item_id!r} has no chip at row {row}, column {col} (it was never cut, "
                              "or skipped for too little valid data)")
        return _unit(vector[None])[0].astype("float64"), [f"{item_id}:{row}:{col}"], [item]
    if probe.kind == "point":
        return _point_vector(probe, items, batch_rows)
    return _geometry_vector(probe, items, batch_rows)


def _point_vector(probe: Probe, items: Sequence[EmbeddingItem],
                  batch_rows: int) -> tuple[np.ndarray, list[str], list[EmbeddingItem]]:
    lon, lat = probe.point
    point = shapely.Point(lon, lat)
    best: tuple[float, np.ndarray, str, EmbeddingItem] | None = None
    for item, batch, vectors in _chips_near(items, (lon, lat, lon, lat), batch_rows):
        shapes = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
        under = np.flatnonzero(shapely.covers(shapes, point))
        if not len(under):
            continue
        distances = shapely.distance(shapely.centroid(shapes[under]), point)
        nearest = int(np.argmin(distances))
        if best is None or distances[nearest] < best[0]:  # ties: the first in catalog order
            row = under[nearest]
            label = _label(item, batch, row)
            best = (float(distances[nearest]), vectors[row], label, item)
    if best is None:
        raise ConfigError(f"point {lon:g},{lat:g} is outside every chip of the catalog (or of --collection)")
    log.info("query point %g,%g: chip %s", lon, lat, best[2])
    return _unit(best[1][None])[0].astype("float64"), [best[2]], [best[3]]


def _geometry_vector(probe: Probe, items: Sequence[EmbeddingItem],
                     batch_rows: int) -> tuple[np.ndarray, list[str], list[EmbeddingItem]]:
    area = shapely.geometry.shape(probe.geometry)
    shapely.prepare(area)
    total: np.ndarray | None = None
    labels: list[str] = []
    used: dict[tuple[str | None, str], EmbeddingItem] = {}  # item ids repeat across collections
    for item, batch, vectors in _chips_near(items, area.bounds, batch_rows):
        shapes = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
        covered = shapely.intersects(area, shapes)
        if area.area > 0:  # a polygon covers the chips its interior meets, not those it only touches
            covered &= ~shapely.touches(area, shapes)
        covered = np.flatnonzero(covered)
        if not len(covered):
            continue
        units = _unit(vectors[covered]).astype("float64")
        if total is not None and units.shape[1] != total.shape[0]:
            raise ConfigError(f"the query geometry covers chips of different dimensions "
                              f"({total.shape[0]} and {units.shape[1]}): restrict it with --collection")
        total = units.sum(axis=0) if total is None else total + units.sum(axis=0)
        labels.extend(_label(item, batch, row) for row in covered)
        used[(item.collection_id, item.id)] = item
    if total is None:
        raise ConfigError(f"the query {probe.describe()} covers no chip of the catalog (or of --collection)")
    return total / len(labels), labels, list(used.values())


def _chips_near(items: Sequence[EmbeddingItem], bounds: Sequence[float],
                batch_rows: int) -> Iterator[tuple[EmbeddingItem, pa.RecordBatch, np.ndarray]]:
    """The batches of chips whose footprint bbox meets ``bounds`` (lon/lat), item by item (of a
    COG, only the pixels there are read)."""
    for item in items:
        reach = item_reach(item)
        if reach is not None and not boxes_meet(reach, bounds):
            continue
        for batch, vectors in item.iter_chips(batch_rows, columns=["geometry", "chip_row", "chip_col"], bbox=bounds):
            yield item, batch, vectors


def _label(item: EmbeddingItem, batch: pa.RecordBatch, row: int) -> str:
    return f"{item.id}:{batch.column('chip_row')[row].as_py()}:{batch.column('chip_col')[row].as_py()}"


def _check_models(resolved: ResolvedQuery, candidates: Sequence[EmbeddingItem], href: str) -> None:
    """Every item searched must be of the query's embedding space."""
    for item in candidates:
        model = model_of(item)
        if resolved.model is not None and model != resolved.model:
            raise ConfigError(f"{href} holds embeddings of another model or dimensions than the query's "
                              f"({describe_model(model)} in item {item.id!r}, the query's is "
                              f"{describe_model(resolved.model)}): restrict the search with --collection")
        if item.dimensions is not None and item.dimensions != len(resolved.vector):
            raise ConfigError(f"the query has {len(resolved.vector)} dimensions, item {item.id!r} "
                              f"{item.dimensions}: restrict the search with --collection")


def _by_collection(items: Sequence[EmbeddingItem]) -> list[tuple[str, list[EmbeddingItem]]]:
    groups: dict[str, list[EmbeddingItem]] = {}
    for item in items:
        groups.setdefault(item.collection_id or "", []).append(item)
    return list(groups.items())


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


# -- results ------------------------------------------------------------------------------------

def result_table(rows: pa.Table, scores: np.ndarray, metadata: dict[str, Any]) -> pa.Table:
    """``rows`` (``CHIP_SCHEMA``, best first) ranked, with GeoParquet and search metadata."""
    ranked = rows.add_column(0, "similarity", pa.array(np.asarray(scores, "float32")))
    ranked = ranked.add_column(0, "rank", pa.array(np.arange(1, len(scores) + 1, dtype="int32")))
    ranked = ranked.cast(RESULT_SCHEMA)
    return ranked.replace_schema_metadata({b"geo": json.dumps(_geo_metadata(ranked)).encode(),
                                           RESULT_METADATA_KEY: json.dumps(metadata, default=str).encode()})


def search_metadata(table: pa.Table) -> dict[str, Any]:
    """What ``similar`` recorded of a search (``stacembed:similar`` schema metadata)."""
    return json.loads((table.schema.metadata or {}).get(RESULT_METADATA_KEY, b"{}"))


def _geo_metadata(table: pa.Table) -> dict[str, Any]:
    from pyproj import CRS

    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"],
                              "crs": CRS.from_user_input("OGC:CRS84").to_json_dict()}
    shapes = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    bounds = shapely.total_bounds(shapes) if len(shapes) else None
    if bounds is not None and np.isfinite(bounds).all():  # chips without georeferencing have no geometry
        column["bbox"] = [float(v) for v in bounds]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def output_format(path: str | Path) -> str:
    """``geoparquet``, ``geojson`` or ``csv``, by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"-o {path}: unknown format {suffix or '(no suffix)'!r}; use .parquet (GeoParquet), "
                          ".geojson or .csv")
    return OUTPUT_SUFFIXES[suffix]


def write_results(table: pa.Table, path: str | Path) -> Path:
    """Write a ``similar`` table as GeoParquet, GeoJSON or CSV (by suffix), atomically."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = output_format(path)
    with atomic_path(path) as tmp:
        if fmt == "geoparquet":
            pq.write_table(table, tmp, compression="zstd")
        elif fmt == "geojson":
            tmp.write_text(json.dumps(to_geojson(table), ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            shapes = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
            plain = table.set_column(table.schema.get_field_index("geometry"), "geometry",
                                     pa.array(shapely.to_wkt(shapes, rounding_precision=-1), pa.string()))
            pyarrow.csv.write_csv(plain.replace_schema_metadata(None), tmp)
    return path


def to_geojson(table: pa.Table) -> dict[str, Any]:
    """A ``similar`` table as a GeoJSON FeatureCollection (WGS84), properties as JSON values."""
    shapes = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    features = []
    for shape, row in zip(shapes, table.drop_columns(["geometry"]).to_pylist(), strict=True):
        properties = {key: (value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value)
                      for key, value in row.items()}
        features.append({"type": "Feature", "id": properties["id"], "geometry": shapely.geometry.mapping(shape),
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def format_table(table: pa.Table) -> str:
    """The results as a plain-text table for a terminal: one line per chip."""
    rows = table.drop_columns(["geometry"]).to_pylist()
    centres = shapely.centroid(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))
    lines = [(str(r["rank"]), f"{r['similarity']:.4f}", r["item"] or "", f"{r['chip_row']}:{r['chip_col']}",
              pystac.utils.datetime_to_str(r["datetime"]) if r["datetime"] else "", r["collection"] or "",
              f"{c.x:.5f},{c.y:.5f}") for r, c in zip(rows, centres, strict=True)]
    header = ("rank", "similarity", "item", "row:col", "datetime", "collection", "lon,lat")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {0, 1}
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in [header, *lines])
