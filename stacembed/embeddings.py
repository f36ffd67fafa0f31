"""Read the embedding catalogs ``stacembed run`` writes: one API for search, clustering and users.

``open_embeddings(href)`` takes the ``catalog.json``, a ``collection.json`` or one item JSON,
local or over http(s), and lists the embedding items with the facts their collection states
(``emb:dimensions``, ``emb:type``, ``data_type``, ``emb:chip_layout``). Each item reads its
GeoParquet (table, GeoDataFrame, vectors, or bounded batches of them) and its COG (numpy or
xarray, whole or windowed). ``iter_chips`` reads any item's chips in bounded batches, from its
GeoParquet or, without one, from its COG (GeoTIFF-only and dense embeddings): the one reading
path of the analyses.

Vectors always come back as float32: int8 files are dequantized with the parameters they
carry (GeoParquet schema metadata ``stacembed:quantization``; GDAL band scales/offsets in the
GeoTIFF, where -128 means "no chip" and becomes NaN), or, for a COG whose item names another
``emb:quantization`` method (``signed-square``, AlphaEarth's), with that; float16 is widened. The tables
themselves are returned as stored, so that they match what any Parquet reader sees.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pystac
import rasterio
import requests
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import WindowError
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from .access import Access, redact_text
from .errors import ReadError
from .grid import RASTER_ERRORS, Grid, gdal_reason
from .layout import catalog_file
from .writers.base import SourceInfo
from .writers.geoparquet import COLUMNS, chip_columns, footprint_columns, geo_metadata, window_columns
from .writers.quantize import LINEAR, METHODS, SIGNED_SQUARE, dequantize, dequantize_signed_square

if TYPE_CHECKING:
    import geopandas
    import xarray

QUANTIZATION_KEY = b"stacembed:quantization"
# stacembed writes row groups of about this many chips, so a batch of it reads one row group.
BATCH_ROWS = 2048
DOWNLOAD_TIMEOUT = 60.0  # seconds without an answer before a remote GeoParquet read fails
_FORMAT_NAMES = {"geoparquet": "GeoParquet", "geotiff": "GeoTIFF"}
_FOOTPRINT_COLUMNS = {"geometry", "bbox", "native_geometry", "native_xmin", "native_ymin", "native_xmax", "native_ymax"}
_CHIP_COLUMNS = {"id", "datetime", "source_item", "source_collection"}
_WINDOW_COLUMNS = {"col_off", "row_off", "width", "height"}
# The columns of the chips read from a COG: the GeoParquet's, but the embedding (the vectors) and
# the valid fraction (which a COG does not record).
COG_COLUMNS = tuple(name for name in COLUMNS if name not in ("embedding", "valid_fraction"))


def open_embeddings(href: str | Path) -> EmbeddingCatalog:
    """The embedding items under ``href``: a catalog, collection or item JSON (or a run's ``--out`` directory)."""
    href = str(href)
    if Path(href).is_dir():
        href = str(catalog_file(href))
    try:
        stac = pystac.read_file(href, stac_io=Access().stac_io(href))  # retried over http(s)
        candidates = [stac] if isinstance(stac, pystac.Item) else stac.get_items(recursive=True)
        items = tuple(EmbeddingItem.from_stac(item) for item in candidates if _embedding_hrefs(item))
    except Exception as exc:  # pystac's StacIO raises a bare Exception for HTTP errors
        raise ReadError(f"cannot read STAC {redact_text(href)}: {_one_line(exc)}") from None
    if not items:
        raise ReadError(
            f"{redact_text(href)} holds no embedding items (STAC items with a GeoParquet or GeoTIFF "
            "`embeddings` asset); open the catalog.json that `stacembed run --out DIR` wrote"
        )
    return EmbeddingCatalog(href, items)


@dataclass(frozen=True)
class EmbeddingCatalog:
    """The embedding items of a catalog, in catalog order; iterate it, or index it by item id."""

    href: str
    items: tuple[EmbeddingItem, ...]

    def __iter__(self) -> Iterator[EmbeddingItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item_id: str) -> EmbeddingItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)


@dataclass(frozen=True)
class EmbeddingItem:
    """One item's embeddings: its STAC item, asset hrefs per format and its collection's facts.

    ``kind`` is ``emb:type``: ``chip`` (one vector per chip, GeoParquet and/or GeoTIFF) or
    ``pixel`` (dense patch embeddings, GeoTIFF only). ``data_type`` is how the values are stored
    (float32, float16, int8); every reader here returns float32. ``quantization`` is the
    ``emb:quantization`` object, which names how int8 values map back to floats.
    """

    stac_item: pystac.Item
    hrefs: dict[str, str]
    dimensions: int | None
    kind: str | None
    data_type: str | None
    chip_layout: dict[str, Any] | None
    quantization: dict[str, Any] | None = None

    @classmethod
    def from_stac(cls, item: pystac.Item) -> EmbeddingItem:
        """Item properties win over the collection's: the Embeddings extension allows either."""
        collection = item.get_collection()
        facts = {**(collection.extra_fields if collection else {}), **item.properties}
        quantization = _quantization(item.id, facts.get("emb:quantization"))
        return cls(item, _embedding_hrefs(item), facts.get("emb:dimensions"), facts.get("emb:type"),
                   facts.get("data_type"), facts.get("emb:chip_layout"), quantization)

    @property
    def id(self) -> str:
        return self.stac_item.id

    @property
    def datetime(self) -> datetime | None:
        """The item's datetime, or the start of its range: time series and sources that state only
        ``start_datetime``/``end_datetime`` have a null datetime, and still need a place in time."""
        return self.stac_item.datetime or self.stac_item.common_metadata.start_datetime

    @property
    def bbox(self) -> list[float] | None:
        return self.stac_item.bbox

    @property
    def placed(self) -> bool:
        """Whether the embeddings are on the map. An input without georeferencing gives an item
        that says ``"proj:code": null`` (``catalog.output_item``): its footprints are in source
        pixel/line coordinates, so no lon/lat query (``bbox``, a point, a geometry) meets them."""
        properties = self.stac_item.properties
        return not ("proj:code" in properties and properties["proj:code"] is None)

    @property
    def collection_id(self) -> str | None:
        return self.stac_item.collection_id

    def source_items(self) -> list[pystac.Item]:
        """The source items these embeddings were made from (``derived_from``), read (asset
        hrefs absolute); a ``ReadError`` naming the one that cannot be read."""
        found = []
        for link in self.stac_item.get_links("derived_from"):
            href = link.get_absolute_href()
            try:
                item = pystac.Item.from_file(href, stac_io=Access().stac_io(href))
            except Exception as exc:  # pystac's StacIO raises a bare Exception for HTTP errors
                raise ReadError(f"source item {redact_text(href)} of {self.id!r} cannot be read: "
                                f"{_one_line(exc)}") from None
            item.make_asset_hrefs_absolute()
            found.append(item)
        return found

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The GeoParquet as stored (``embedding`` may be int8 or float16: ``vectors()`` is float32)."""
        return _read_table(self._href("geoparquet"), columns)

    def geodataframe(self, columns: Sequence[str] | None = None) -> geopandas.GeoDataFrame:
        """The GeoParquet as a GeoDataFrame: chip footprints in OGC:CRS84, from the file's geo metadata."""
        import geopandas

        href = self._href("geoparquet")
        with read_errors(href), local_copy(href) as path:
            return geopandas.read_parquet(path, columns=_including(columns, "geometry"))

    def vectors(self) -> np.ndarray:
        """``(n, D)`` float32, one row per chip, in the rows' order of ``table()``."""
        return _vectors(_read_table(self._href("geoparquet"), ["embedding"]))

    def iter_batches(
        self, batch_rows: int = BATCH_ROWS, columns: Sequence[str] | None = None,
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """``(record batch, (rows, D) float32 vectors)`` of at most ``batch_rows`` rows each.

        The file is read a row group at a time, so memory is bounded by the batch, not the file:
        this is how catalogs larger than memory are scanned. ``embedding`` is always read.
        """
        href = self._href("geoparquet")
        with read_errors(href), local_copy(href) as path:
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=batch_rows, columns=_including(columns, "embedding")):
                yield batch, _vectors(batch)

    @property
    def chips_href(self) -> str:
        """The file ``iter_chips`` reads: the GeoParquet, else the COG."""
        return self.hrefs.get("geoparquet") or self._href("geotiff")

    def iter_chips(
        self, batch_rows: int = BATCH_ROWS, columns: Sequence[str] | None = None,
        bbox: Sequence[float] | None = None,
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """``(record batch, (rows, D) float32 vectors)`` of the item's chips, whatever it stores.

        From the GeoParquet when the item has one (``iter_batches``); else from the COG (GeoTIFF
        only, or dense patch embeddings: one chip per pixel), read in windows of whole raster rows
        (runs along a row, for rasters wider than ``batch_rows``), so that a batch holds at most
        ``batch_rows`` chips, whatever the raster's size; pixels without a chip are skipped. Chips
        of a COG carry ``COG_COLUMNS``, named, typed and ordered as in the GeoParquet (id
        ``<item>_r<row>_c<col>``, ``chip_row``/``chip_col`` the pixel's row and column, footprints
        of the chip, or of the patch for dense embeddings), with the GeoParquet's ``geo`` schema
        metadata. ``columns`` (all when None) are the batch's columns; the embedding is the
        vectors, never a column. ``bbox`` (west, south, east, north in lon/lat) keeps the chips
        whose footprint's bbox meets it; of a COG only the pixels there are read.
        """
        if bbox is not None and not self.placed:
            return  # footprints in pixel coordinates: no lon/lat box meets them
        read = columns if bbox is None else _including(columns, "bbox")
        batches = (self.iter_batches(batch_rows, read) if "geoparquet" in self.hrefs
                   else self._cog_batches(batch_rows, read, bbox))
        for batch, vectors in batches:
            if bbox is not None:
                mask = footprints_meet(batch, bbox)
                batch, vectors = batch.filter(pa.array(mask)), vectors[mask]
            if batch.num_rows:
                names = batch.schema.names if columns is None else columns
                yield batch.select([name for name in names if name != "embedding"]), vectors

    def chip(self, row: int, col: int) -> np.ndarray | None:
        """The float32 vector of chip ``row``, ``col`` (a pixel of the COG: a patch, for dense
        embeddings) from the file ``iter_chips`` reads; None where no chip was kept."""
        if "geoparquet" in self.hrefs:
            for batch, vectors in self.iter_batches(columns=["chip_row", "chip_col"]):
                found = np.flatnonzero((batch.column("chip_row").to_numpy(zero_copy_only=False) == row)
                                       & (batch.column("chip_col").to_numpy(zero_copy_only=False) == col))
                if len(found):
                    return vectors[found[0]]
            return None
        href = self._href("geotiff")
        with read_errors(href), rasterio.open(href) as ds:
            if not (0 <= row < ds.height and 0 <= col < ds.width):
                return None
            values = self._values(ds, Window(col, row, 1, 1))[:, 0, 0]
        return None if np.isnan(values).all() else values

    def chips_schema(self, columns: Sequence[str] | None = None) -> pa.Schema:
        """The schema of the batches ``iter_chips`` yields (also for an item without chips)."""
        if "geoparquet" in self.hrefs:
            href = self.hrefs["geoparquet"]
            with read_errors(href), local_copy(href) as path:
                schema = pq.read_schema(path)
            names = schema.names if columns is None else columns
            return pa.schema([schema.field(name) for name in names if name != "embedding"], metadata=schema.metadata)
        href = self._href("geotiff")
        with read_errors(href), rasterio.open(href) as ds:
            nothing = np.zeros(0, "int64")
            return _CogChips.of(ds, self).batch(nothing, nothing, self._cog_names(columns)).schema

    def cog_chips(self, rows: np.ndarray, cols: np.ndarray, columns: Sequence[str] | None = None) -> pa.RecordBatch:
        """The chip rows (``columns`` of ``COG_COLUMNS``, all when None) of the COG's pixels at
        ``rows``, ``cols``, as ``iter_chips`` gives them: e.g. the footprints of a few chips
        chosen from batches read without them."""
        href = self._href("geotiff")
        with read_errors(href), rasterio.open(href) as ds:
            return _CogChips.of(ds, self).batch(np.asarray(rows), np.asarray(cols), self._cog_names(columns))

    def _cog_batches(self, batch_rows: int, columns: Sequence[str] | None,
                     bbox: Sequence[float] | None) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """The chips of the COG (of the pixels near ``bbox``), a window of at most ``batch_rows`` pixels at a time."""
        names = self._cog_names(columns)
        href = self._href("geotiff")
        with read_errors(href), rasterio.open(href) as ds:
            chips = _CogChips.of(ds, self)
            area = Window(0, 0, ds.width, ds.height) if bbox is None else chips.area(ds, bbox)
            for window in _row_windows(area, batch_rows) if area is not None else ():
                values = self._values(ds, window)
                kept = ~np.isnan(values).all(axis=0)
                rows, cols = np.nonzero(kept)
                yield (chips.batch(rows + window.row_off, cols + window.col_off, names),
                       np.ascontiguousarray(values[:, kept].T))

    def _cog_names(self, columns: Sequence[str] | None) -> list[str]:
        """``columns`` (``COG_COLUMNS`` when None) without ``embedding``; a ``ReadError`` for any
        a COG does not tell."""
        if columns is None:
            return list(COG_COLUMNS)
        unknown = [name for name in columns if name not in COG_COLUMNS and name != "embedding"]
        if unknown:
            raise ReadError(f"item {self.id!r} has GeoTIFF embeddings only: its chips have no column "
                            f"{', '.join(map(repr, unknown))} (they have {', '.join(COG_COLUMNS)})")
        return [name for name in columns if name != "embedding"]

    def array(
        self, window: Window | None = None, bbox: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, Affine, CRS]:
        """``(values (D, H, W) float32, transform, crs)`` of the COG; NaN where no chip was kept.

        ``window`` (pixels) or ``bbox`` (west, south, east, north in lon/lat, like STAC's) reads
        only the tiles there, so a large raster need not be read whole.
        """
        href = self._href("geotiff")
        with read_errors(href), rasterio.open(href) as ds:
            window = _window(ds, window, bbox, self.id)
            return self._values(ds, window), ds.window_transform(window), ds.crs

    def grid(self, window: Window | None = None, bbox: Sequence[float] | None = None) -> xarray.DataArray:
        """The COG as a ``(band, y, x)`` DataArray: pixel-centre coordinates in the raster's CRS,
        ``crs`` (EPSG code or WKT) and ``transform`` (GDAL-order affine, six numbers) in attrs."""
        import xarray

        values, transform, crs = self.array(window=window, bbox=bbox)
        _, height, width = values.shape
        coords = {
            "band": np.arange(len(values)),
            "y": transform.f + transform.e * (np.arange(height) + 0.5),
            "x": transform.c + transform.a * (np.arange(width) + 0.5),
        }
        attrs = {"crs": crs.to_string(), "transform": tuple(transform)[:6]}
        return xarray.DataArray(values, dims=("band", "y", "x"), coords=coords, name=self.id, attrs=attrs)

    def _values(self, ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
        """float32 ``(D, h, w)`` values of ``window`` of this item's COG, dequantized as the item says."""
        method = (self.quantization or {}).get("method", LINEAR)
        if method == SIGNED_SQUARE and not np.issubdtype(np.dtype(ds.dtypes[0]), np.floating):
            return dequantize_signed_square(ds.read(window=window), self.quantization["scale"], axis=0)
        return _raster_values(ds, window)

    def _href(self, fmt: str) -> str:
        if fmt in self.hrefs:
            return self.hrefs[fmt]
        present = ", ".join(_FORMAT_NAMES[f] for f in self.hrefs)
        hint = (f"rerun stacembed with --format {fmt}" if self.kind != "pixel"
                else "dense embeddings (emb:type pixel) are GeoTIFF only: use iter_chips(), array() or grid()")
        raise ReadError(f"item {self.id!r} has no {_FORMAT_NAMES[fmt]} embeddings, only {present}; {hint}")


@dataclass(frozen=True)
class _CogChips:
    """How the pixels of an embeddings COG become chip rows like the GeoParquet's: the source
    item the writer recorded (GeoTIFF tags ``STAC_ITEM_ID``, ``STAC_COLLECTION``, ``STAC_DATETIME``;
    else the embedding item's id and datetime), and the grid of which a pixel's footprint is a
    window (``col_off``, ``row_off``, ``width``, ``height``): ``size`` x ``size`` source pixels
    every ``stride`` (tags ``CHIP_SIZE``/``CHIP_STRIDE``, else ``emb:chip_layout``), or the pixel
    itself, of the patch grid (dense embeddings: a pixel is a patch)."""

    source: SourceInfo
    grid: Grid
    size: int
    stride: int
    metadata: dict[bytes, bytes]

    @classmethod
    def of(cls, ds: rasterio.DatasetReader, item: EmbeddingItem) -> _CogChips:
        from pyproj import CRS as ProjCRS

        tags = ds.tags()
        moment = item.datetime.isoformat() if item.datetime else None
        source = SourceInfo(tags.get("STAC_ITEM_ID") or item.id, tags.get("STAC_COLLECTION") or None,
                            tags.get("STAC_DATETIME") or moment, {})
        layout = item.chip_layout or {}
        size, stride = (_last(tags.get("CHIP_SIZE") or layout.get("chip_size")),
                        _last(tags.get("CHIP_STRIDE") or layout.get("stride")))
        if item.kind == "pixel" or not size or not stride:
            size = stride = 1
        t = ds.transform
        a, e, shift = t.a / stride, t.e / stride, (size - stride) / 2
        grid = Grid(ds.crs, Affine(a, 0.0, t.c - shift * a, 0.0, e, t.f - shift * e), ds.width * stride,
                    ds.height * stride)  # the inverse of ``ChipGrid.embedding_grid``
        crs = ProjCRS.from_wkt(ds.crs.to_wkt()) if ds.crs is not None else None  # None: no georeferencing
        metadata = {b"geo": json.dumps(geo_metadata(crs)).encode()}
        return cls(source, grid, size, stride, metadata)

    def batch(self, rows: np.ndarray, cols: np.ndarray, names: Sequence[str]) -> pa.RecordBatch:
        """The chip rows of pixels ``rows``, ``cols``: the columns ``names``."""
        col_off, row_off = cols * self.stride, rows * self.stride
        # Only the columns asked for are computed (ids and footprints cost; a scan asks for places).
        columns = {"chip_row": pa.array(rows, pa.int32()), "chip_col": pa.array(cols, pa.int32())}
        if _CHIP_COLUMNS.intersection(names):
            columns.update(chip_columns(self.source, rows, cols))
        if _WINDOW_COLUMNS.intersection(names):
            columns.update(window_columns(col_off, row_off, self.size))
        if _FOOTPRINT_COLUMNS.intersection(names):
            columns.update(footprint_columns(self.grid.footprints(col_off, row_off, self.size)))
        return pa.RecordBatch.from_pydict(columns, metadata=self.metadata).select(names)  # n rows, even of no column

    def area(self, ds: rasterio.DatasetReader, bbox: Sequence[float]) -> Window | None:
        """The pixels whose footprint may meet ``bbox`` (lon/lat): those it touches, and as many
        around as a chip reaches past its pixel; None when none."""
        touched = _bbox_window(ds, bbox)
        full = Window(0, 0, ds.width, ds.height)
        if touched is None:
            return None
        margin = 1 + math.ceil((self.size - self.stride) / 2 / self.stride)
        grown = Window(touched.col_off - margin, touched.row_off - margin, touched.width + 2 * margin,
                       touched.height + 2 * margin)
        try:
            return full.intersection(grown)
        except WindowError:
            return None


def _last(value: Any) -> int | None:
    """An integer setting that may be a list (``emb:chip_layout``'s are [rows, cols])."""
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    return int(value) if value else None


def _row_windows(area: Window, positions: int) -> Iterator[Window]:
    """``area`` in row-major windows of at most ``positions`` pixels (at least one): whole rows
    when one fits, else runs along each row."""
    col, row, width, height = (int(v) for v in (area.col_off, area.row_off, area.width, area.height))
    if width <= positions:
        step = positions // width
        for top in range(row, row + height, step):
            yield Window(col, top, width, min(step, row + height - top))
        return
    for top in range(row, row + height):
        for left in range(col, col + width, positions):
            yield Window(left, top, min(positions, col + width - left), 1)


def footprints_meet(data: pa.Table | pa.RecordBatch, bbox: Sequence[float]) -> np.ndarray:
    """The mask of the rows of ``data`` whose footprint's bbox (the ``bbox`` covering column)
    meets ``bbox`` (west, south, east, north in lon/lat)."""
    west, south, east, north = bbox
    box = data.column("bbox")
    parts = [pc.struct_field(box, name) for name in ("xmin", "ymin", "xmax", "ymax")]
    mask = pc.and_(pc.and_(pc.less_equal(parts[0], east), pc.greater_equal(parts[2], west)),
                   pc.and_(pc.less_equal(parts[1], north), pc.greater_equal(parts[3], south)))
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def read_geoparquet(href: str | Path) -> tuple[pa.Table, np.ndarray]:
    """``(table as stored, (n, D) float32 vectors)`` of one GeoParquet file, local or http(s)."""
    table = _read_table(str(href))
    return table, _vectors(table)


def read_geotiff(href: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``((D, height, width) float32, rasterio profile)`` of one GeoTIFF; NaN where no chip."""
    with read_errors(str(href)), rasterio.open(href) as ds:
        return _raster_values(ds, Window(0, 0, ds.width, ds.height)), ds.profile


def _embedding_hrefs(item: pystac.Item) -> dict[str, str]:
    """Absolute hrefs of the ``embeddings`` / ``embeddings-<format>`` assets, by format."""
    hrefs: dict[str, str] = {}
    for key, asset in item.assets.items():
        fmt = _format(asset)
        if (key == "embeddings" or key.startswith("embeddings-")) and fmt:
            hrefs.setdefault(fmt, asset.get_absolute_href())
    return hrefs


def _format(asset: pystac.Asset) -> str | None:
    described = f"{asset.media_type or ''} {asset.href}".lower()
    if "parquet" in described:
        return "geoparquet"
    if "tiff" in described or described.endswith((".tif", ".vrt")):  # a GDAL VRT reads as its GeoTIFFs
        return "geotiff"
    return None


def _read_table(href: str, columns: Sequence[str] | None = None) -> pa.Table:
    with read_errors(href), local_copy(href) as path:
        return pq.read_table(path, columns=columns)


def _vectors(data: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The ``embedding`` column as ``(n, D)`` float32, dequantized with the schema's parameters."""
    column = data.column("embedding")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    raw = (data.schema.metadata or {}).get(QUANTIZATION_KEY)
    if raw is None:
        return values.astype("float32")
    quantization = json.loads(raw)
    return dequantize(values, quantization["scale"], quantization["offset"], axis=1)


def _quantization(item_id: str, quantization: Any) -> dict[str, Any] | None:
    """An item's ``emb:quantization``, checked: a method this module reads, with its parameters."""
    if quantization is None:
        return None
    method = quantization.get("method") if isinstance(quantization, dict) else quantization
    if method not in METHODS:
        raise ReadError(f"item {item_id!r}: emb:quantization method {method!r} is not one stacembed reads "
                        f"({', '.join(METHODS)})")
    if method == SIGNED_SQUARE and not quantization.get("scale"):
        raise ReadError(f"item {item_id!r}: emb:quantization {SIGNED_SQUARE!r} states no scale")
    return quantization


def _raster_values(ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
    data = ds.read(window=window)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype("float32", copy=False)
    return dequantize(data, ds.scales, ds.offsets, axis=0)


def _window(ds: rasterio.DatasetReader, window: Window | None, bbox: Sequence[float] | None, item_id: str) -> Window:
    """The pixels to read: all, ``window``, or every pixel that ``bbox`` (lon/lat) touches."""
    if window is not None and bbox is not None:
        raise ValueError("give window or bbox, not both")
    full = Window(0, 0, ds.width, ds.height)
    if window is None and bbox is None:
        return full
    asked = window if bbox is None else _bbox_window(ds, bbox)
    try:
        if asked is not None:
            return full.intersection(asked)
    except WindowError:
        pass
    described = f"bbox {list(bbox)}" if bbox is not None else f"window {window}"
    raise ReadError(f"{described} does not overlap the embeddings grid of item {item_id!r}")


def _bbox_window(ds: rasterio.DatasetReader, bbox: Sequence[float]) -> Window | None:
    """The pixels (unclipped) that ``bbox`` (lon/lat) touches; None when it touches none.

    The box is first cut to the raster's own lon/lat bounds, so that a box reaching far past the
    domain of the COG's CRS (a continent, or the world, around a UTM grid) is not bent out of shape
    by the projection (the world's box projected to UTM covered 8 of a grid's 100 pixels). Where
    the box has no finite bounds in the COG's CRS, all of it: the footprints decide.
    """
    crs84 = CRS.from_user_input("OGC:CRS84")
    west, south, east, north = bbox
    reach = transform_bounds(ds.crs, crs84, *ds.bounds, densify_pts=21)
    if reach[0] <= reach[2]:  # not across the antimeridian: cut the box to the raster's reach
        west, south, east, north = max(west, reach[0]), max(south, reach[1]), min(east, reach[2]), min(north, reach[3])
        if west > east or south > north:
            return None
    bounds = transform_bounds(crs84, ds.crs, west, south, east, north, densify_pts=21)
    if not all(math.isfinite(v) for v in bounds):
        return Window(0, 0, ds.width, ds.height)
    (top, bottom), (left, right) = from_bounds(*bounds, transform=ds.transform).toranges()
    col, row = math.floor(left), math.floor(top)
    return Window(col, row, math.ceil(right) - col, math.ceil(bottom) - row)


def _including(columns: Sequence[str] | None, name: str) -> list[str] | None:
    """``columns`` plus ``name`` (which the reader needs); None (all columns) stays None."""
    if columns is None:
        return None
    return list(columns) if name in columns else [*columns, name]


def is_url(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


@contextmanager
def local_copy(href: str, session: requests.Session | None = None) -> Iterator[str]:
    """A local path of ``href``, downloaded into a temporary directory while in use when remote
    (with ``session``, e.g. one that sends the user's headers to their origin; else a plain,
    retried one). The copy keeps the file's name, so readers that go by suffix find it.

    pyarrow reads no http(s) by itself, and fsspec's http needs aiohttp, which stacembed does not
    depend on. An item's file is one item's chips (megabytes), so a copy streamed to disk keeps
    memory bounded; the COGs, which can be large, are read in place by GDAL over ``/vsicurl/``.
    """
    if not is_url(href):
        yield href
        return
    with tempfile.TemporaryDirectory(prefix="stacembed-") as tmp:
        path = str(Path(tmp) / (Path(urlparse(href).path).name or "embeddings"))
        _download(href, path, session)
        yield path


_CACHE_LOCK = threading.Lock()
_CACHED: dict[str, tuple[str | None, str]] = {}  # href -> (validator, local path)
_CACHE_NUMBERS = itertools.count()


def cached_copy(href: str) -> str:
    """A local path of ``href`` that lasts for the rest of the process (the href itself when local).

    For files read again and again (an index and its sidecar, at every query of a long-running
    ``stacembed explore``): a remote file is downloaded once per validator (its ``ETag``,
    ``Last-Modified`` and size, asked with a HEAD request), into a temporary directory removed
    at exit; a file changed on the server is downloaded again, replacing the old copy.
    """
    if not is_url(href):
        return href
    validator = _validator(href)
    with _CACHE_LOCK:
        known = _CACHED.get(href)
        if known is not None and known[0] == validator and os.path.isfile(known[1]):
            return known[1]
        name = Path(urlparse(href).path).name or "file"
        path = os.path.join(_cache_dir().name, f"{next(_CACHE_NUMBERS)}-{name}")
        try:
            _download(href, path)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        if known is not None:
            Path(known[1]).unlink(missing_ok=True)  # a reader that has it open keeps reading it
        _CACHED[href] = (validator, path)
        return path


@functools.cache
def _cache_dir() -> tempfile.TemporaryDirectory:
    """The process's download cache, made at its first download (removed at exit by its finalizer)."""
    return tempfile.TemporaryDirectory(prefix="stacembed-cache-")


def _validator(href: str) -> str | None:
    """What tells one version of a remote file from another (HEAD's ETag, Last-Modified and
    Content-Length); None when the server does not answer HEAD (then the href alone is the key)."""
    try:
        with Access(timeout=DOWNLOAD_TIMEOUT).session(href).head(href, allow_redirects=True) as response:
            response.raise_for_status()
            headers = response.headers
    except OSError:  # requests' errors are OSErrors
        return None
    return json.dumps([headers.get(name) for name in ("ETag", "Last-Modified", "Content-Length")])


def _download(href: str, path: str, session: requests.Session | None = None) -> None:
    """Stream ``href`` into the file ``path`` (retried, as every STAC read)."""
    session = session or Access(timeout=DOWNLOAD_TIMEOUT).session(href)
    with session.get(href, stream=True) as response, open(path, "wb") as file:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            file.write(chunk)


@contextmanager
def read_errors(href: str) -> Iterator[None]:
    """Turn I/O and format failures into a one-line ``ReadError`` naming the file."""
    try:
        yield
    except RASTER_ERRORS as exc:
        raise ReadError(f"cannot read embeddings {redact_text(href)}: {gdal_reason(exc)}") from None
    except (OSError, pa.ArrowInvalid) as exc:  # requests' I/O errors are OSErrors
        raise ReadError(f"cannot read embeddings {redact_text(href)}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """The message, and its cause's (pystac says only "Could not read uri", its cause says 404)."""
    text = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
    return " ".join(text.split()) or type(exc).__name__
