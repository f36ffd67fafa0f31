"""Read the embedding catalogs ``stacembed run`` writes: one API for search, clustering and users.

``open_embeddings(href)`` takes the ``catalog.json``, a ``collection.json`` or one item JSON,
local or over http(s), and lists the embedding items with the facts their collection states
(``emb:dimensions``, ``emb:type``, ``data_type``, ``emb:chip_layout``). Each item reads its
GeoParquet (table, GeoDataFrame, vectors, or bounded batches of them) and its COG (numpy or
xarray, whole or windowed).

Vectors always come back as float32: int8 files are dequantized with the parameters they
carry (GeoParquet schema metadata ``stacembed:quantization``; GDAL band scales/offsets in the
GeoTIFF, where -128 means "no chip" and becomes NaN), float16 is widened. The tables
themselves are returned as stored, so that they match what any Parquet reader sees.
"""

from __future__ import annotations

import json
import math
import tempfile
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
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import WindowError
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from .access import Access, redact_text
from .errors import ReadError
from .grid import RASTER_ERRORS, gdal_reason
from .layout import catalog_file
from .writers.quantize import dequantize

if TYPE_CHECKING:
    import geopandas
    import xarray

QUANTIZATION_KEY = b"stacembed:quantization"
# stacembed writes row groups of about this many chips, so a batch of it reads one row group.
BATCH_ROWS = 2048
DOWNLOAD_TIMEOUT = 60.0  # seconds without an answer before a remote GeoParquet read fails
_FORMAT_NAMES = {"geoparquet": "GeoParquet", "geotiff": "GeoTIFF"}


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
    (float32, float16, int8); every reader here returns float32.
    """

    stac_item: pystac.Item
    hrefs: dict[str, str]
    dimensions: int | None
    kind: str | None
    data_type: str | None
    chip_layout: dict[str, Any] | None

    @classmethod
    def from_stac(cls, item: pystac.Item) -> EmbeddingItem:
        """Item properties win over the collection's: the Embeddings extension allows either."""
        collection = item.get_collection()
        facts = {**(collection.extra_fields if collection else {}), **item.properties}
        return cls(item, _embedding_hrefs(item), facts.get("emb:dimensions"), facts.get("emb:type"),
                   facts.get("data_type"), facts.get("emb:chip_layout"))

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
    def collection_id(self) -> str | None:
        return self.stac_item.collection_id

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
            return _raster_values(ds, window), ds.window_transform(window), ds.crs

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

    def _href(self, fmt: str) -> str:
        if fmt in self.hrefs:
            return self.hrefs[fmt]
        present = ", ".join(_FORMAT_NAMES[f] for f in self.hrefs)
        hint = ("dense embeddings (emb:type pixel) are GeoTIFF only: use array() or grid()" if self.kind == "pixel"
                else f"rerun stacembed with --format {fmt}")
        raise ReadError(f"item {self.id!r} has no {_FORMAT_NAMES[fmt]} embeddings, only {present}; {hint}")


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
    if "tiff" in described or described.endswith(".tif"):
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


def _raster_values(ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
    data = ds.read(window=window)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype("float32", copy=False)
    return dequantize(data, ds.scales, ds.offsets, axis=0)


def _window(ds: rasterio.DatasetReader, window: Window | None, bbox: Sequence[float] | None, item_id: str) -> Window:
    """The pixels to read: all, ``window``, or every pixel that ``bbox`` (lon/lat) touches."""
    if window is not None and bbox is not None:
        raise ValueError("give window or bbox, not both")
    if bbox is not None:
        bounds = transform_bounds(CRS.from_user_input("OGC:CRS84"), ds.crs, *bbox)
        (top, bottom), (left, right) = from_bounds(*bounds, transform=ds.transform).toranges()
        col, row = math.floor(left), math.floor(top)
        window = Window(col, row, math.ceil(right) - col, math.ceil(bottom) - row)
    full = Window(0, 0, ds.width, ds.height)
    if window is None:
        return full
    try:
        return full.intersection(window)
    except WindowError:
        asked = f"bbox {list(bbox)}" if bbox is not None else f"window {window}"
        raise ReadError(f"{asked} does not overlap the embeddings grid of item {item_id!r}") from None


def _including(columns: Sequence[str] | None, name: str) -> list[str] | None:
    """``columns`` plus ``name`` (which the reader needs); None (all columns) stays None."""
    if columns is None:
        return None
    return list(columns) if name in columns else [*columns, name]


def is_url(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


@contextmanager
def local_copy(href: str) -> Iterator[str]:
    """A local path of ``href``, downloaded into a temporary directory while in use when remote.

    pyarrow reads no http(s) by itself, and fsspec's http needs aiohttp, which stacembed does not
    depend on. An item's file is one item's chips (megabytes), so a copy streamed to disk keeps
    memory bounded; the COGs, which can be large, are read in place by GDAL over ``/vsicurl/``.
    """
    if not is_url(href):
        yield href
        return
    with tempfile.TemporaryDirectory(prefix="stacembed-") as tmp:
        path = str(Path(tmp) / (Path(urlparse(href).path).name or "embeddings"))
        session = Access(timeout=DOWNLOAD_TIMEOUT).session(href)  # retries, as every STAC read
        with session.get(href, stream=True) as response, open(path, "wb") as file:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                file.write(chunk)
        yield path


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
