"""Grid: a raster's pixel grid (CRS, affine transform, shape) and the geometry derived from it.

Every stage that talks about pixels (readers, chips, writers, publish) uses this one type so
that georeferencing is computed in exactly one place.

By default an item is read on its source's own grid (``native_grid``): no resampling happens,
and every pixel read is a pixel of the file. Resampling happens only when the caller asks for
another CRS or resolution (``target_grid``), and then with the named method.

A band's grid (``band_grid``) is its GeoTIFF's header, or for a variable of a Zarr store or
NetCDF file, what the store's own metadata says (``readers.zarr``: CF grid mapping, ``proj:`` and
GeoZarr attributes, 1-D coordinates, else the STAC asset's ``proj:*``). A multiscale store (EOPF's
``r10m``/``r20m``/``r60m``) is read at the level of the resolution a run asks for
(``bands_at_resolution``), as the producer made it, rather than resampled.

Unplaced grids. A store whose georeferencing cannot be inferred (``readers.zarr``), or a raster
without a CRS in its header (``read_header``), is read on its pixel grid: ``Grid.unplaced`` has
no CRS (``crs`` None, ``placed`` False) and GDAL's default geotransform, the identity, so that
coordinates are pixel/line numbers of the source (x = column, y = row, growing down, as
``gdalinfo`` shows a raster without georeferencing); ``say_unplaced`` warns once per source. Everything derived
from such a grid stays in those coordinates and says it has no CRS: chip footprints, the
embeddings COG (a transform to source pixels, no CRS), GeoParquet geometry (``"crs": null``),
STAC items (no geometry); the one test of whether an output can go on a map is ``Grid.placed``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pystac
import rasterio
import rasterio.warp
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window

from .access import redact_text
from .bands import BandSource
from .errors import BandError, ConfigError, ReadError

try:  # GDAL's own errors (CPLE_*), which rasterio raises, or chains under a RasterioIOError
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - a rasterio that moved them
    CPLE_BaseError = rasterio.errors.RasterioError

log = logging.getLogger("stacembed")
RASTER_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError)
STRAIGHT_BELOW = 50.0  # metres: footprints narrower than this are not densified (``Grid._bends``)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``transform`` maps (col, row) to CRS coordinates of pixel corners.

    Without a CRS (``crs`` None: an input without georeferencing, see the module docstring) the
    coordinates are the source's pixel/line numbers, y growing down.
    """

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def unplaced(cls, width: int, height: int) -> Grid:
        """The grid of a raster without georeferencing: no CRS, GDAL's default (identity) transform."""
        return cls(None, Affine.identity(), width, height)

    @property
    def placed(self) -> bool:
        """Whether the grid is on the map (has a CRS); else its coordinates are pixel/line numbers."""
        return self.crs is not None

    @property
    def resolution(self) -> tuple[float, float]:
        return (self.transform.a, -self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.window_bounds(Window(0, 0, self.width, self.height))

    @property
    def crs_code(self) -> str | None:
        """``EPSG:nnnn`` when the CRS has an EPSG code, else its WKT; None for an unplaced grid."""
        if self.crs is None:
            return None
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of a pixel window; exact multiples of the pixel size."""
        bounds = self.windows_bounds(window.col_off, window.row_off, window.width, window.height)[0]
        return tuple(float(v) for v in bounds)

    def windows_bounds(self, col_off, row_off, width, height) -> np.ndarray:
        """``(n, 4)`` (minx, miny, maxx, maxy) of many pixel windows at once (array arguments).

        The arithmetic is the affine's own (``x = col * a + row * b + c``), so a chip's bounds
        are the same numbers whichever way they are asked for.
        """
        t = self.transform
        cols, rows = np.atleast_1d(np.asarray(col_off, "float64")), np.atleast_1d(np.asarray(row_off, "float64"))
        ends_c, ends_r = cols + width, rows + height
        left, top = cols * t.a + rows * t.b + t.c, cols * t.d + rows * t.e + t.f
        right, bottom = ends_c * t.a + ends_r * t.b + t.c, ends_c * t.d + ends_r * t.e + t.f
        return np.column_stack([np.minimum(left, right), np.minimum(top, bottom),
                                np.maximum(left, right), np.maximum(top, bottom)])

    def footprints(self, col_off, row_off, size: int) -> Footprints:
        """The footprints of ``size`` x ``size`` pixel windows at ``col_off``/``row_off`` (arrays):
        exact pixel edges in the grid's CRS, and in OGC:CRS84 with every edge densified to an
        eighth of a window first (``shapely.segmentize``), so that a footprint keeps its shape.
        An unplaced grid has no lon/lat: its ``crs84`` footprints are the pixel ones again."""
        bounds = self.windows_bounds(col_off, row_off, size, size).reshape(-1, 4)
        native = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
        if not self.placed:
            return Footprints(bounds, native, native, bounds)
        side = size * abs(self.transform.a)
        dense = shapely.segmentize(native, side / 8) if len(native) and self._bends(side) else native
        to_crs84 = crs84_transformer(self.crs.to_wkt())
        crs84 = shapely.transform(dense, lambda xy: np.column_stack(to_crs84.transform(xy[:, 0], xy[:, 1])))
        return Footprints(bounds, native, crs84, shapely.bounds(crs84).reshape(-1, 4))

    def outline(self) -> shapely.Polygon:
        """The grid's outline in OGC:CRS84, each edge densified to an eighth of the longer side
        (a UTM rectangle is not a lon/lat one): an item's geometry."""
        west, south, east, north = self.bounds
        box = shapely.segmentize(shapely.box(west, south, east, north), max(east - west, north - south) / 8)
        to_crs84 = crs84_transformer(self.crs.to_wkt())
        return shapely.transform(box, lambda xy: np.column_stack(to_crs84.transform(xy[:, 0], xy[:, 1])))

    def _bends(self, side: float) -> bool:
        """Whether a footprint ``side`` CRS units wide needs its edges densified to keep its shape in
        lon/lat: a straight edge of L metres departs from its true path by about
        L² tan(lat) / (8 R), under half a millimetre for ``STRAIGHT_BELOW`` (50 m) up to UTM's 84°,
        so the corners alone place smaller footprints (a dense item's pixels) as exactly."""
        if self.crs.is_geographic:
            return True
        _, metres = self.crs.linear_units_factor
        return side * metres > STRAIGHT_BELOW

    def check_north_up(self, what: str) -> None:
        if not self.placed:  # pixel/line coordinates: rows go down by definition
            return
        if self.transform.b != 0 or self.transform.d != 0 or self.transform.e >= 0:
            raise ReadError(f"{what} is not on a north-up grid (rotated or flipped); it is not supported")


@dataclass(frozen=True)
class Footprints:
    """Footprints of pixel windows: ``bounds`` (n, 4: minx, miny, maxx, maxy) and ``native``
    polygons in the grid's CRS; ``crs84`` polygons in OGC:CRS84 and their ``boxes`` (n, 4)
    (for an unplaced grid: the pixel ones, ``native`` and ``bounds``)."""

    bounds: np.ndarray
    native: np.ndarray
    crs84: np.ndarray
    boxes: np.ndarray


@functools.lru_cache(maxsize=64)
def crs84_transformer(wkt: str) -> Transformer:
    """lon/lat from the CRS of ``wkt`` (pyproj's transformers are thread-safe)."""
    return Transformer.from_crs(ProjCRS.from_wkt(wkt), "OGC:CRS84", always_xy=True)


def read_grid(href: str) -> Grid:
    """The grid from a raster's own header; also proves the href is a readable raster."""
    return read_header(href)[0]


@functools.lru_cache(maxsize=256)
def read_header(href: str) -> tuple[Grid, int]:
    """(grid, band count) of a raster file, opened once per href and remembered. A raster without
    a CRS is read on its pixel grid (``Grid.unplaced``; its geotransform, if any, says nothing of
    where it is without one), as a store without georeferencing is."""
    with raster_errors(href), unreferenced_quiet(), rasterio.open(href) as ds:
        if ds.crs is None:
            found = "a geotransform but no CRS" if ds.transform != Affine.identity() else "no georeferencing"
            say_unplaced(href, found, "give the file a CRS and a geotransform, e.g. gdal_edit.py -a_srs -a_ullr")
            return Grid.unplaced(ds.width, ds.height), ds.count
        return Grid(ds.crs, ds.transform, ds.width, ds.height), ds.count


@contextmanager
def unreferenced_quiet() -> Iterator[None]:
    """Open rasters without georeferencing without rasterio's ``NotGeoreferencedWarning``:
    ``say_unplaced`` says it once, in the log, where the run's messages go."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


_UNPLACED: set[str] = set()


def say_unplaced(source: str, found: str, hint: str) -> None:
    """One warning per source (per process) that it is read on its pixel grid, what was found of
    its georeferencing and how to place it."""
    if source in _UNPLACED:
        return
    _UNPLACED.add(source)
    log.warning("%s has %s stacembed can read: it is read on its pixel grid, and its outputs are in pixel "
                "coordinates without a CRS (%s)", redact_text(source), found, hint)


@contextmanager
def raster_errors(href: str, doing: str = "read raster") -> Iterator[None]:
    """Turn what GDAL raises while opening or reading ``href`` (a missing file, a truncated or
    corrupt tile, an HTTP error) into one ``ReadError`` line naming the file (redacted) and why."""
    try:
        yield
    except RASTER_ERRORS as exc:
        reason = gdal_reason(exc)
        raise ReadError(f"cannot {doing} {redact_text(href)}: {reason}{_denied_hint(href, reason)}") from exc


def _denied_hint(href: str, reason: str) -> str:
    """What to try when object storage said no (GDAL's bare "HTTP response code: 403")."""
    if not href.startswith(("s3://", "/vsis3/")) or "403" not in reason:
        return ""
    return (" (access denied: a private bucket needs credentials from the environment or an AWS profile, "
            "without --aws-unsigned; a public one, --aws-unsigned)")


def gdal_reason(exc: BaseException) -> str:
    """The most specific line of a rasterio/GDAL error: the innermost of its chain (rasterio
    raises "Read failed. See previous exception for details." over GDAL's own messages, the
    last of which says what went wrong, e.g. ``TIFFFillTile: Read error ... got 116085 bytes``),
    redacted as every message is (``access.redact_text``: GDAL's may hold a signed URL)."""
    messages = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip()
        if text and "see previous exception" not in text.lower():
            messages.append(text.splitlines()[0].strip())
        # GDAL's messages are chained as causes; a context is followed only when it is one too.
        exc = exc.__cause__ or (exc.__context__ if isinstance(exc.__context__, RASTER_ERRORS) else None)
    return redact_text(messages[-1] if messages else "unknown GDAL error")


def band_grid(band: BandSource) -> Grid:
    """The grid of one band: its raster's header, or its store's own georeferencing (``readers.zarr``)."""
    if band.format is None:
        return read_grid(band.href)
    from .readers.zarr import variable_grid

    crs, transform, width, height, store, unplaced = variable_grid(band.href, band.format, band.variable, band.proj)
    if unplaced:
        say_unplaced(store, unplaced, "give the asset proj:code and proj:transform to place them")
    return _store_grid(crs, transform, width, height)


@functools.lru_cache(maxsize=256)
def _store_grid(crs: str | None, transform: tuple[float, ...], width: int, height: int) -> Grid:
    try:
        return Grid(CRS.from_user_input(crs) if crs else None, Affine(*transform), width, height)
    except rasterio.errors.CRSError as exc:
        raise ReadError(f"a store's CRS cannot be used: {exc}") from None


def native_grid(item: pystac.Item, bands: list[BandSource], *, explicit: bool = False) -> Grid:
    """The common grid of the bands' files, read from their headers (the ground truth).

    Bands on different grids (e.g. 10 m and 20 m Sentinel-2 bands) have no common native
    grid; rather than resample silently we ask the user to choose a resolution. With
    ``explicit`` (the run asks for ``--resolution`` or ``--crs``, so every band is resampled
    onto that grid anyway) the grid of the finest band stands for the item (the first of the
    finest), and ``target_grid`` derives the run's grid from it.
    """
    stores = [band.name for band in bands if band.format]
    if stores and len(stores) != len(bands):
        rasters = [band.name for band in bands if not band.format]
        raise BandError(f"item {item.id!r}: bands {', '.join(stores)} are in Zarr/NetCDF assets and bands "
                        f"{', '.join(rasters)} in rasters; the bands of one item are read from one kind of asset")
    grids = {band.name: band_grid(band) for band in bands}
    unplaced = [name for name, grid in grids.items() if not grid.placed]
    if unplaced and len(unplaced) != len(grids):
        raise BandError(f"item {item.id!r}: bands {', '.join(unplaced)} have no georeferencing and bands "
                        f"{', '.join(n for n in grids if n not in unplaced)} have; the bands of one item are "
                        "all placed on the map or none is")
    first = next(iter(grids.values()))
    different = [name for name, grid in grids.items() if grid != first]
    if different and not explicit:
        resolutions = sorted({f"{abs(g.transform.a):g}" for g in grids.values()}, key=float)
        raise BandError(
            f"item {item.id!r}: bands {', '.join(grids)} are not on one pixel grid "
            f"(resolutions {', '.join(resolutions)}); pass --resolution (and --resampling) to "
            "resample them explicitly"
        )
    if different:
        first = min(grids.values(), key=lambda g: abs(g.transform.a * g.transform.e))
    first.check_north_up(f"item {item.id!r}")
    return first


def bands_at_resolution(bands: list[BandSource], resolution: float | None) -> list[BandSource]:
    """``bands``, each band of a multiscale Zarr store moved to the store's own level at
    ``resolution`` where the store has one (``readers.zarr.level_at``); other bands as they are."""
    if resolution is None or not any(band.format for band in bands):
        return bands
    from .readers.zarr import level_at

    moved = []
    for band in bands:
        path = level_at(band.href, band.format, band.variable, band.proj, resolution) if band.format else None
        moved.append(replace(band, variable=path) if path else band)
    return moved


def target_grid(native: Grid, crs: str | None, resolution: float | None) -> Grid:
    """A grid covering ``native`` in another CRS and/or resolution (explicit resampling)."""
    if not native.placed:
        flags = " and ".join(f for f, v in (("--crs", crs), ("--resolution", resolution)) if v)
        raise ConfigError(f"{flags}: resampling needs the item on a map, and it has no georeferencing (its pixel "
                          "grid has no CRS); run without, or give its asset proj:code and proj:transform")
    try:
        dst_crs = CRS.from_user_input(crs) if crs else native.crs
    except rasterio.errors.CRSError as exc:
        raise ConfigError(f"--crs {crs!r} is not a CRS: {exc}") from None
    try:
        transform, width, height = rasterio.warp.calculate_default_transform(
            native.crs, dst_crs, native.width, native.height, *native.bounds, resolution=resolution
        )
    except RASTER_ERRORS as exc:  # e.g. the area lies outside where the CRS is defined
        raise ConfigError(f"--crs {crs or native.crs_code!r}: cannot reproject the item's grid onto it "
                          f"({gdal_reason(exc)})") from exc
    return Grid(dst_crs, transform, width, height)
