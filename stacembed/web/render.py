"""Rasters as the map page draws them: reprojected into Web Mercator (EPSG:3857), as RGBA PNGs.

Leaflet's ``L.imageOverlay`` stretches an image linearly in Web Mercator between the lat/lon
bounds it is given, so an image on an EPSG:3857 grid, with the lat/lon of its edges, is placed
exactly, whatever the raster's own CRS (a UTM grid is rotated and curved in lon/lat). A
``Source`` is read (decimated to at most ``MAX_SIDE`` pixels a side, from its overviews when it
has them), coloured on its own grid, then warped by nearest neighbour (a display: colours stay
the raster's) onto a Web Mercator grid over its bounds (``mercator_grid``). Pixels outside the
raster are transparent.

Kinds of source:

- ``quicklook``: an RGB(A) image (an item's ``overview`` COG; RGB gets an opaque alpha).
- ``cluster``: a class map in its colour table (grey levels without one), nodata transparent.
- ``change``: distances on a fixed ramp over [0, max] ([0, 1] when the max is 0), transparent
  where NaN or nodata.

GDAL reads them, http(s) through ``/vsicurl/``, with ``Access().gdal_options()`` (timeouts,
retries; no headers). A failed read is one ``ReadError`` line, its href redacted. Bounds and
PNGs are remembered per source (``functools.lru_cache``) for the life of the process.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader
from rasterio.transform import from_bounds
from rasterio.warp import Resampling, reproject, transform_bounds

from ..access import Access, redact_text
from ..errors import ReadError
from ..grid import Grid, raster_errors

MERCATOR, WGS84 = CRS.from_epsg(3857), CRS.from_epsg(4326)
# The Web Mercator image's longest side: the raster's own, within these bounds. The least keeps
# the edges of a grid of a few chips (one pixel each) within a display pixel of their place.
MIN_SIDE, MAX_SIDE = 256, 1024
# The change ramp (distance 0 -> max): dark blue, teal, green, yellow (viridis-like stops).
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


@dataclass(frozen=True)
class Source:
    """A raster to draw: ``href`` (a local path or an http(s) URL) and its ``kind``; ``stretch_to``
    (west, south, east, north in lon/lat) places an image without georeferencing (a PNG)."""

    href: str
    kind: str
    stretch_to: tuple[float, float, float, float] | None = None


@functools.lru_cache(maxsize=4096)
def raster_bounds(source: Source) -> tuple[float, float, float, float]:
    """(west, south, east, north), lon/lat, of the edges of the source's Web Mercator image; only
    its header is read."""
    with _opened(source) as (ds, grid):
        return transform_bounds(MERCATOR, WGS84, *mercator_grid(grid).bounds)


@functools.lru_cache(maxsize=64)
def png(source: Source) -> bytes:
    """The source coloured and warped onto its Web Mercator grid, as an RGBA PNG."""
    with _opened(source) as (ds, grid):
        target = mercator_grid(grid)
        data, transform = _read(ds, grid.transform)
        rgba = COLOURS[source.kind](data, ds)
    out = np.zeros((4, target.height, target.width), dtype=np.uint8)  # transparent where nothing lands
    reproject(rgba, out, src_transform=transform, src_crs=grid.crs, dst_transform=target.transform,
              dst_crs=MERCATOR, resampling=Resampling.nearest)
    buffer = io.BytesIO()
    Image.fromarray(np.moveaxis(out, 0, -1)).save(buffer, format="PNG")
    return buffer.getvalue()


def mercator_grid(grid: Grid) -> Grid:
    """The Web Mercator grid ``grid`` is drawn on: its bounds reprojected (edges densified), the
    longest side ``grid``'s within [``MIN_SIDE``, ``MAX_SIDE``] pixels."""
    west, south, east, north = transform_bounds(grid.crs, MERCATOR, *grid.bounds)
    size = max(east - west, north - south) / min(MAX_SIDE, max(MIN_SIDE, grid.width, grid.height))
    width, height = max(1, round((east - west) / size)), max(1, round((north - south) / size))
    return Grid(MERCATOR, from_bounds(west, south, east, north, width, height), width, height)


@contextmanager
def _opened(source: Source) -> Iterator[tuple[DatasetReader, Grid]]:
    """The open dataset and its grid (``stretch_to``'s, or its own), read with the GDAL options."""
    with raster_errors(source.href), rasterio.Env(**Access().gdal_options()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG: placed by stretch_to
            ds = rasterio.open(source.href)
        with ds:
            if source.stretch_to is not None:
                yield ds, Grid(WGS84, from_bounds(*source.stretch_to, ds.width, ds.height), ds.width, ds.height)
            elif ds.crs is None:
                raise ReadError(f"{redact_text(source.href)} has no CRS; it cannot be placed on the map")
            else:
                yield ds, Grid(ds.crs, ds.transform, ds.width, ds.height)


def _read(ds: DatasetReader, transform: Affine) -> tuple[np.ndarray, Affine]:
    """Every band, at most ``MAX_SIDE`` pixels a side (nearest; from overviews when smaller), and
    the transform of that array."""
    scale = max(1.0, max(ds.width, ds.height) / MAX_SIDE)
    height, width = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
    data = ds.read(out_shape=(ds.count, height, width))
    return data, transform @ Affine.scale(ds.width / width, ds.height / height)


def _quicklook(data: np.ndarray, ds: DatasetReader) -> np.ndarray:
    if len(data) not in (3, 4):
        raise ReadError(f"{redact_text(ds.name)} has {len(data)} bands; a quicklook is RGB or RGBA")
    return data if len(data) == 4 else np.concatenate([data, np.full_like(data[:1], 255)])


def _cluster(data: np.ndarray, ds: DatasetReader) -> np.ndarray:
    lut = np.zeros((256, 4), dtype=np.uint8)
    try:
        for value, colour in ds.colormap(1).items():
            lut[value] = colour
    except ValueError:  # no colour table: grey levels
        lut[:, :3] = np.arange(256, dtype=np.uint8)[:, None]
        lut[:, 3] = 255
    if ds.nodata is not None:
        lut[int(ds.nodata), 3] = 0
    return np.moveaxis(lut[data[0].astype(np.uint8)], -1, 0)


def _change(data: np.ndarray, ds: DatasetReader) -> np.ndarray:
    values = data[0]
    valid = np.isfinite(values)
    if ds.nodata is not None and not math.isnan(ds.nodata):
        valid &= values != ds.nodata
    top = float(values[valid].max()) if valid.any() else 0.0
    top = top if top > 0 else 1.0
    t = np.clip(np.where(valid, values, 0) / top, 0, 1) * (len(RAMP) - 1)
    stops = np.arange(len(RAMP))
    channels = [np.round(np.interp(t, stops, RAMP[:, band])).astype(np.uint8) for band in range(3)]
    return np.stack([*channels, np.where(valid, 255, 0).astype(np.uint8)])


COLOURS = {"quicklook": _quicklook, "cluster": _cluster, "change": _change}
