"""Labels brought onto the embedding grid explicitly, with the method recorded.

A head learns from pairs (embedding, label), so every label must be put where an embedding is,
and how that was done is part of the result: ``method`` is a sentence that the outputs record.

Sources (``open_labels``):

- a STAC label item, or a collection or catalog of them (label extension: ``label:type``,
  ``label:properties``, ``label:classes``, ``label:tasks``; the asset with role ``labels``);
- a vector file (GeoJSON, GeoParquet, GeoPackage, ... in any CRS) of points or polygons and the
  column holding their labels;
- a raster (GeoTIFF/COG in any CRS and resolution): band 1, its nodata respected.

The kind is ``classes`` (integers >= 0, or text: names get the codes 0, 1, ... in sorted order)
or ``values`` (floats), decided from the data (numbers that are not all integers are values,
float rasters too; everything else is classes) unless the caller asks for one. Class names and
colours come from ``label:classes``, ``classification:classes`` or a colour table when the source
has them, else from the data.

Two ways onto the grid:

- ``per_chip(crs, bounds, resolution)``, one label per chip footprint: the labels are painted on
  the source's pixel grid (polygons rasterized at pixel centres, rasters warped: nearest for
  classes, average for values) and counted inside each footprint (summed-area tables, so that
  overlapping chips cost no more than others): the majority class (ties go to the smallest class
  value) or the mean value, and the fraction of the footprint covered. Points label the chips
  they fall in (majority or mean of their points; fraction 1).
- ``on_grid(grid)``, a label per cell of any grid (dense embeddings, segmentation targets): the
  same painting at that grid's cells; points burnt into the cell they fall in.

Memory is bounded by a tile of at most ``TILE`` x ``TILE`` fine pixels (plus one chip): chips are
painted in groups of neighbours and rasters are read through GDAL's warper, which reads only the
source blocks it needs; the whole label raster is never held, nor the whole area painted.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow
import pyogrio.errors
import pystac
import rasterio
import requests
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject, transform_bounds

from ..access import Access, redact_text
from ..embeddings import local_copy
from ..errors import ConfigError, LabelError
from ..grid import RASTER_ERRORS, Grid, gdal_reason
from ..resolve.files import reason

CLASSES, VALUES = "classes", "values"
# What a caller may ask for, in the words of ``label:tasks`` and of the results.
KINDS = {"classification": CLASSES, "regression": VALUES, CLASSES: CLASSES, VALUES: VALUES}
MISSING = -1  # the class of a chip or cell that no label covers (values: NaN)
# Fine pixels per side of one painting: (2048 + a chip)² float64 pixels, ~40 MB, and a mask per class.
TILE = 2048
# More distinct classes than this is a map of values or identifiers, not classes for a head.
MAX_CLASSES = 1000
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".jp2", ".img"})
PARQUET_SUFFIXES = frozenset({".parquet", ".geoparquet"})
# What reading vector files may raise besides GDAL's errors (a file's bad content: ValueError).
READ_ERRORS = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError,
               pyarrow.ArrowException, requests.RequestException, OSError, ValueError)


@dataclass(frozen=True)
class LabelClass:
    """A class: its value in the label data (for names, the code given), its name, its colour
    (``RRGGBB``) when the source gives one."""

    value: int
    name: str
    color_hint: str | None = None


@dataclass(frozen=True)
class ChipLabels:
    """One label per chip, in the order of the footprints asked for.

    ``labels``: int64 class values (``MISSING`` where nothing covers the chip), or float64
    values (NaN); ``fraction``: float64 share of each footprint covered by label data, in [0, 1].
    """

    labels: np.ndarray
    fraction: np.ndarray
    kind: str
    classes: tuple[LabelClass, ...]
    method: str
    source: str

    def kept(self, min_fraction: float) -> np.ndarray:
        """The chips with a label covering at least ``min_fraction`` of their footprint."""
        return (self.fraction > 0) & (self.fraction >= min_fraction)

    def describe(self, min_fraction: float) -> str:
        """``method`` with the caller's filter, as the outputs record it."""
        return f"{self.method}; chips covered less than {min_fraction:g} left out"

    @classmethod
    def concat(cls, parts: Sequence[ChipLabels]) -> ChipLabels:
        """The labels of several calls (at least one; e.g. one per embedding item) as one result:
        classes merged by value, the distinct methods joined (items in other CRSs or resolutions)."""
        classes: dict[int, LabelClass] = {}
        for part in parts:
            for label_class in part.classes:
                classes.setdefault(label_class.value, label_class)
        methods = dict.fromkeys(part.method for part in parts)
        return cls(np.concatenate([part.labels for part in parts]),
                   np.concatenate([part.fraction for part in parts]), parts[0].kind,
                   tuple(classes[v] for v in sorted(classes)), " / ".join(methods), parts[0].source)

    def check_usable(self, min_fraction: float = 0.0) -> None:
        """A ``LabelError`` unless the chips kept hold something to learn: some chip covered,
        one covered enough, and two classes (or two values) among those kept."""
        if not (self.fraction > 0).any():
            raise LabelError(f"labels {self.source} overlap no chip of the embeddings")
        kept = self.kept(min_fraction)
        if not kept.any():
            raise LabelError(f"no chip is covered by labels {self.source} for at least {min_fraction:g} of its "
                             f"footprint (the most covered: {self.fraction.max():.3g}); lower the minimum fraction")
        _check_varied(self.labels[kept], self.kind, self.classes, self.source, "chips")


@dataclass(frozen=True)
class GridLabels:
    """A label per cell of ``grid``: ``labels`` (height, width) int32 class values (``MISSING``
    where uncovered) or float32 values (NaN), and ``covered``, the cells with a label."""

    grid: Grid
    labels: np.ndarray
    covered: np.ndarray
    kind: str
    classes: tuple[LabelClass, ...]
    method: str
    source: str

    def check_usable(self) -> None:
        """A ``LabelError`` unless some cell is covered, with two classes (or values) among them."""
        if not self.covered.any():
            raise LabelError(f"labels {self.source} overlap no cell of the embeddings grid")
        _check_varied(self.labels[self.covered], self.kind, self.classes, self.source, "cells")


def _check_varied(labels: np.ndarray, kind: str, classes: Sequence[LabelClass], source: str, what: str) -> None:
    found = np.unique(labels)
    if len(found) > 1:
        return
    if kind == CLASSES:
        name = {c.value: c.name for c in classes}.get(int(found[0]), str(found[0]))
        raise LabelError(f"labels {source} give one class only ({name!r}) to the {len(labels)} {what} they "
                         "cover; a classifier needs two classes or more")
    raise LabelError(f"labels {source} give the same value ({found[0]:g}) to all the {len(labels)} {what} "
                     "they cover; there is nothing to learn")


def open_labels(src: str | os.PathLike[str], *, column: str | None = None, kind: str | None = None,
                access: Access = Access()) -> Labels:
    """Labels from a STAC label item/collection (``.json``), a raster or a vector file.

    ``column`` names the vector features' label column (for STAC, the first of
    ``label:properties`` by default); ``kind`` ("classification" or "regression") overrides
    what the data suggest. Nothing is painted yet: rasters are only opened for their headers.
    """
    href = os.fspath(src)
    forced = _forced_kind(kind)
    if _suffix(href) == ".json" and _is_stac(href, access):
        return _open_stac(href, column, forced, access)
    if _suffix(href) in RASTER_SUFFIXES:
        return RasterLabels([href], source=redact_text(href), kind=forced, classes={}, nodata=set(), access=access)
    return _vector_labels([(href, _read_frame(href, href, access))], redact_text(href), column, forced, [])


class Labels(ABC):
    """Labels of one source, to be brought onto any embedding grid.

    ``classes`` are those the source declares or holds; a raster without class metadata
    declares none, and its results list the classes they found.
    """

    def __init__(self, *, source: str, kind: str, classes: dict[int, LabelClass]) -> None:
        self.source, self.kind, self.declared = source, kind, classes
        self.colors: dict[int, str] = {}

    @property
    def classes(self) -> tuple[LabelClass, ...]:
        return tuple(self.declared[v] for v in sorted(self.declared))

    @abstractmethod
    def per_chip(self, crs: CRS, bounds: np.ndarray, resolution: tuple[float, float]) -> ChipLabels:
        """One label per chip footprint: ``bounds`` (n, 4) (xmin, ymin, xmax, ymax) in ``crs``,
        on the source's pixel grid of ``resolution`` (x, y) CRS units."""

    @abstractmethod
    def on_grid(self, grid: Grid) -> GridLabels:
        """A label per cell of ``grid``."""

    def _chips(self, labels: np.ndarray, fraction: np.ndarray, method: str) -> ChipLabels:
        return ChipLabels(labels, fraction, self.kind, self._found(labels), method, self.source)

    def _grid(self, grid: Grid, labels: np.ndarray, covered: np.ndarray, method: str) -> GridLabels:
        return GridLabels(grid, labels, covered, self.kind, self._found(labels[covered]), method, self.source)

    def _found(self, labels: np.ndarray) -> tuple[LabelClass, ...]:
        """The declared classes and any other class value among ``labels``."""
        if self.kind == VALUES:
            return ()
        found = {int(v) for v in np.unique(labels)} - {MISSING} - self.declared.keys()
        merged = {**self.declared, **{v: LabelClass(v, str(v), self.colors.get(v)) for v in found}}
        return tuple(merged[v] for v in sorted(merged))

    def _missing(self, shape: int | tuple[int, int], bits: int = 64) -> np.ndarray:
        if self.kind == CLASSES:
            return np.full(shape, MISSING, f"int{bits}")
        return np.full(shape, np.nan, f"float{bits}")


class PaintedLabels(Labels):
    """Labels painted onto a pixel grid (polygons rasterized, rasters warped), then counted per
    chip footprint, or kept as they are for a grid."""

    @abstractmethod
    def _extents(self, crs: CRS) -> shapely.STRtree:
        """Where the labels are, as boxes in ``crs``: chips and tiles elsewhere are not painted."""

    @abstractmethod
    def _paint(self, grid: Grid) -> np.ndarray:
        """The labels on ``grid``: float64 class values or values, NaN where there is none."""

    @abstractmethod
    def _method(self, where: str, per_chip: bool) -> str:
        """The sentence recorded for the result; ``where`` names the grid painted (resolution, CRS)."""

    def per_chip(self, crs: CRS, bounds: np.ndarray, resolution: tuple[float, float]) -> ChipLabels:
        crs = CRS.from_user_input(crs)
        bounds = np.asarray(bounds, "float64").reshape(-1, 4)
        labels, fraction = self._missing(len(bounds)), np.zeros(len(bounds))
        hit = np.unique(self._extents(crs).query(shapely.box(*bounds.T))[0])
        for rows, grid, windows in chip_tiles(crs, bounds[hit], resolution):
            labels[hit[rows]], fraction[hit[rows]] = self._count(self._paint(grid), windows)
        return self._chips(labels, fraction, self._method(_where(crs, resolution), per_chip=True))

    def on_grid(self, grid: Grid) -> GridLabels:
        labels = self._missing((grid.height, grid.width), bits=32)
        covered = np.zeros((grid.height, grid.width), bool)
        extents = self._extents(grid.crs)
        for cells, tile in grid_tiles(grid):
            if extents.query(shapely.box(*tile.bounds)).size:
                data = self._paint(tile)
                covered[cells] = ~np.isnan(data)
                labels[cells] = np.where(covered[cells], data, labels[cells])
        return self._grid(grid, labels, covered, self._method(_where(grid.crs, grid.resolution), per_chip=False))

    def _count(self, data: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per chip window (rows r0:r1, cols c0:c1 of ``data``): the majority class or the mean
        value of the pixels with a label, and the share of the window they cover."""
        valid = ~np.isnan(data)
        covered = window_sums(valid, windows)
        fraction = covered / ((windows[:, 1] - windows[:, 0]) * (windows[:, 3] - windows[:, 2]))
        if self.kind == VALUES:
            total = window_sums(np.where(valid, data, 0.0), windows)
            return np.divide(total, covered, out=np.full(len(windows), np.nan), where=covered > 0), fraction
        found = np.unique(data[valid])
        if len(found) > MAX_CLASSES:
            raise LabelError(f"labels {self.source} hold more than {MAX_CLASSES} classes in one area; if they are "
                             "values, not classes, ask for regression")
        labels, best = np.full(len(windows), MISSING, "int64"), np.zeros(len(windows), "int64")
        for value in found:  # ascending: a tie keeps the smaller class value
            count = window_sums(data == value, windows)
            better = count > best
            labels[better], best[better] = int(value), count[better]
        return labels, fraction


def chip_tiles(crs: CRS, bounds: np.ndarray,
               resolution: tuple[float, float]) -> Iterator[tuple[np.ndarray, Grid, np.ndarray]]:
    """Chips in groups of neighbours: per group, the chips' rows in ``bounds``, the fine grid (the
    source pixel grid at ``resolution``) covering them, at most ``TILE`` pixels and one chip per
    side, and their windows on it, (n, 4) (row start, row end, col start, col end).

    Footprints lie on source pixel edges, so their edges are whole pixels from the top-left
    corner of all of them (rounded, against float error); a chip belongs to the tile its top-left
    pixel is in.
    """
    if not len(bounds):
        return
    rx, ry = (abs(float(r)) for r in resolution)
    x0, y0 = bounds[:, 0].min(), bounds[:, 3].max()
    c0 = np.rint((bounds[:, 0] - x0) / rx).astype("int64")
    c1 = np.maximum(np.rint((bounds[:, 2] - x0) / rx).astype("int64"), c0 + 1)
    r0 = np.rint((y0 - bounds[:, 3]) / ry).astype("int64")
    r1 = np.maximum(np.rint((y0 - bounds[:, 1]) / ry).astype("int64"), r0 + 1)
    keys = (r0 // TILE) * (int(c0.max()) // TILE + 1) + c0 // TILE
    order = np.argsort(keys, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
        top, left = int(r0[rows].min()), int(c0[rows].min())
        transform = Affine(rx, 0.0, x0 + left * rx, 0.0, -ry, y0 - top * ry)
        grid = Grid(crs, transform, int(c1[rows].max()) - left, int(r1[rows].max()) - top)
        yield rows, grid, np.column_stack([r0[rows] - top, r1[rows] - top, c0[rows] - left, c1[rows] - left])


def grid_tiles(grid: Grid) -> Iterator[tuple[tuple[slice, slice], Grid]]:
    """``grid`` in tiles of at most ``TILE`` x ``TILE`` cells: each tile's cells and its own grid."""
    for row in range(0, grid.height, TILE):
        for col in range(0, grid.width, TILE):
            height, width = min(TILE, grid.height - row), min(TILE, grid.width - col)
            tile = Grid(grid.crs, grid.transform @ Affine.translation(col, row), width, height)
            yield (slice(row, row + height), slice(col, col + width)), tile


def window_sums(data: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Sums of ``data`` over many windows (n, 4) at once, from a summed-area table kept only at
    the windows' edges: one pass over ``data`` (sums of bands between edges), then the table of
    those few rows and columns, however much the windows overlap."""
    r0, r1, c0, c1 = windows.T
    rows = np.unique(np.concatenate([[0, data.shape[0]], r0, r1]))
    cols = np.unique(np.concatenate([[0, data.shape[1]], c0, c1]))
    dtype = "int64" if data.dtype == bool else "float64"
    bands = np.add.reduceat(np.add.reduceat(data, rows[:-1], axis=0, dtype=dtype), cols[:-1], axis=1)
    table = np.zeros((len(rows), len(cols)), dtype)
    np.cumsum(np.cumsum(bands, axis=0), axis=1, out=table[1:, 1:])
    i0, i1, j0, j1 = (np.searchsorted(edges, v) for edges, v in ((rows, r0), (rows, r1), (cols, c0), (cols, c1)))
    return table[i1, j1] - table[i0, j1] - table[i1, j0] + table[i0, j0]


def vote(targets: np.ndarray, values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels of points grouped by target (a chip, a cell): the distinct targets, and for each
    the majority class (ties: the smaller value) or the mean value of its points."""
    if not len(targets):  # no point falls in any target
        return np.empty(0, "int64"), np.empty(0, "float64" if kind == VALUES else "int64")
    if kind == VALUES:
        chosen, inverse = np.unique(targets, return_inverse=True)
        return chosen, np.bincount(inverse, weights=values) / np.bincount(inverse)
    classes, which = np.unique(values, return_inverse=True)
    pairs, counts = np.unique(targets.astype("int64") * len(classes) + which, return_counts=True)
    target, which = np.divmod(pairs, len(classes))
    order = np.lexsort((which, -counts, target))
    first = order[np.r_[True, target[order][1:] != target[order][:-1]]]
    return target[first], classes[which[first]].astype("int64")


class _Features:
    """Label geometries and their label values (float64), reprojected once for the CRS asked."""

    def __init__(self, frame: gpd.GeoDataFrame, values: np.ndarray) -> None:
        self.frame, self.values = frame, values
        self._last: tuple[str, np.ndarray, np.ndarray, shapely.STRtree] | None = None

    def in_crs(self, crs: CRS) -> tuple[np.ndarray, np.ndarray, shapely.STRtree]:
        """Geometries in ``crs`` (those it cannot hold, non-finite there, dropped), their values, their tree."""
        key = crs.to_wkt()
        if self._last is None or self._last[0] != key:
            geometries = np.asarray(self.frame.geometry.to_crs(key).values)
            finite = np.isfinite(shapely.bounds(geometries)).all(axis=1)
            self._last = (key, geometries[finite], self.values[finite], shapely.STRtree(geometries[finite]))
        return self._last[1:]


class PolygonLabels(PaintedLabels):
    """Polygons, rasterized at pixel centres (``all_touched=False``): a pixel has the label of the
    polygon holding its centre, so pixel counts measure areas; where polygons overlap, the later
    one in the file wins."""

    def __init__(self, features: _Features, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = features

    def _extents(self, crs: CRS) -> shapely.STRtree:
        return self.features.in_crs(crs)[2]

    def _paint(self, grid: Grid) -> np.ndarray:
        geometries, values, tree = self.features.in_crs(grid.crs)
        chosen = np.sort(tree.query(shapely.box(*grid.bounds)))
        if not len(chosen):
            return np.full((grid.height, grid.width), np.nan)
        return rasterize(zip(geometries[chosen], values[chosen], strict=True), out_shape=(grid.height, grid.width),
                         transform=grid.transform, fill=np.nan, dtype="float64", all_touched=False)

    def _method(self, where: str, per_chip: bool) -> str:
        if not per_chip:
            return f"label polygons rasterized at cell centres onto the {where} grid"
        what = ("majority class by area of the label polygons" if self.kind == CLASSES
                else "area-weighted mean of the label polygons' values")
        return (f"{what} inside each chip footprint (rasterized at pixel centres on the {where} source grid); "
                "covered fraction = share of the footprint inside a polygon")


class PointLabels(Labels):
    """Points: each labels the chip (or cell) it falls in; several in one are voted (or averaged)."""

    def __init__(self, features: _Features, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = features

    def per_chip(self, crs: CRS, bounds: np.ndarray, resolution: tuple[float, float]) -> ChipLabels:
        crs = CRS.from_user_input(crs)
        bounds = np.asarray(bounds, "float64").reshape(-1, 4)
        points, values, _ = self.features.in_crs(crs)
        which, chips = shapely.STRtree(shapely.box(*bounds.T)).query(points, predicate="intersects")
        labels, fraction = self._missing(len(bounds)), np.zeros(len(bounds))
        chosen, voted = vote(chips, values[which], self.kind)
        labels[chosen], fraction[chosen] = voted, 1.0
        what = "majority class" if self.kind == CLASSES else "mean value"
        return self._chips(labels, fraction, f"{what} of the label points inside each chip footprint "
                                             "(covered fraction 1 for a chip holding a point, else 0)")

    def on_grid(self, grid: Grid) -> GridLabels:
        points, values, _ = self.features.in_crs(grid.crs)
        inverse = ~grid.transform
        x, y = shapely.get_x(points), shapely.get_y(points)
        col = np.floor(inverse.a * x + inverse.b * y + inverse.c)
        row = np.floor(inverse.d * x + inverse.e * y + inverse.f)
        inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
        cells = row[inside].astype("int64") * grid.width + col[inside].astype("int64")
        chosen, voted = vote(cells, values[inside], self.kind)
        labels = self._missing((grid.height, grid.width), bits=32)
        covered = np.zeros((grid.height, grid.width), bool)
        labels.flat[chosen], covered.flat[chosen] = voted, True
        what = "majority class" if self.kind == CLASSES else "mean value"
        method = (f"label points burnt into the cell of the {_where(grid.crs, grid.resolution)} grid they fall in "
                  f"({what} where several)")
        return self._grid(grid, labels, covered, method)


@dataclass(frozen=True)
class _Raster:
    href: str
    crs: CRS
    bounds: tuple[float, float, float, float]


class RasterLabels(PaintedLabels):
    """Label rasters (one, or the label assets of a STAC collection: a mosaic, the first one
    listed wins where they overlap), warped onto each grid painted: nearest for classes, so that
    every pixel keeps a class of the source, average for values. ``nodata`` class values (from
    ``classification:classes``) count as no label, as the rasters' own nodata does."""

    def __init__(self, hrefs: Sequence[str], *, source: str, kind: str | None, classes: dict[int, LabelClass],
                 nodata: set[int], access: Access) -> None:
        self.access, self.nodata = access, nodata
        headers = [self._header(href) for href in hrefs]
        self.rasters = [raster for raster, _, _ in headers]
        self.floats = any(np.dtype(dtype).kind == "f" for _, dtype, _ in headers)
        colors = {value: color for _, _, table in reversed(headers) for value, color in table.items()}
        if kind is None:
            kind = CLASSES if classes or colors or not self.floats else VALUES
        super().__init__(source=source, kind=kind, classes=classes)
        self.colors = colors
        self._last: tuple[str, shapely.STRtree] | None = None

    def _header(self, href: str) -> tuple[_Raster, str, dict[int, str]]:
        """The raster's place, data type and colour table (``RRGGBB`` per value)."""
        with self._reading(href), rasterio.open(href) as src:
            if src.crs is None:
                raise LabelError(f"label raster {redact_text(href)} has no CRS; it cannot be placed on the embeddings")
            try:
                table = {value: "".join(f"{c:02X}" for c in rgba[:3]) for value, rgba in src.colormap(1).items()}
            except ValueError:  # no colour table
                table = {}
            return _Raster(href, src.crs, tuple(src.bounds)), src.dtypes[0], table

    @contextmanager
    def _reading(self, href: str) -> Iterator[None]:
        with rasterio.Env(**self.access.gdal_options()), _read_errors(href):
            yield

    def _extents(self, crs: CRS) -> shapely.STRtree:
        key = crs.to_wkt()
        if self._last is None or self._last[0] != key:
            self._last = (key, shapely.STRtree([_box_in(r.crs, crs, r.bounds) for r in self.rasters]))
        return self._last[1]

    def _paint(self, grid: Grid) -> np.ndarray:
        data = np.full((grid.height, grid.width), np.nan)
        for index in np.sort(self._extents(grid.crs).query(shapely.box(*grid.bounds))):
            raster = self.rasters[index]
            part = np.full_like(data, np.nan)
            with self._reading(raster.href), rasterio.open(raster.href) as src:
                reproject(rasterio.band(src, 1), part, src_nodata=src.nodata, dst_transform=grid.transform,
                          dst_crs=grid.crs, dst_nodata=np.nan,
                          resampling=Resampling.nearest if self.kind == CLASSES else Resampling.average)
            empty = np.isnan(data)
            data[empty] = part[empty]
        if self.nodata:
            data[np.isin(data, list(self.nodata))] = np.nan
        if self.kind == CLASSES:
            self._check_classes(data[~np.isnan(data)])
        return data

    def _check_classes(self, values: np.ndarray) -> None:
        bad = values[(values < 0) | (values != np.rint(values))] if self.floats else values[values < 0]
        if len(bad):
            raise LabelError(f"label raster {self.source} holds {bad[0]:g}, not a class value (an integer >= 0); "
                             "if it holds values, not classes, ask for regression")

    def _method(self, where: str, per_chip: bool) -> str:
        resampling = "nearest-neighbour" if self.kind == CLASSES else "average"
        if not per_chip:
            return f"label raster resampled ({resampling}) onto the {where} grid"
        what = ("majority of label pixels" if self.kind == CLASSES
                else "mean of label pixels over the covered part of")
        return (f"{what} ({resampling} onto the {where} source grid) inside each chip footprint; "
                "covered fraction = share of the footprint with label data")


def _box_in(src_crs: CRS, dst_crs: CRS, bounds: tuple[float, float, float, float]) -> shapely.Polygon:
    """``bounds`` in ``src_crs`` as a box in ``dst_crs``; where the transformation fails (a
    global raster in a UTM zone), unbounded on that side rather than lost."""
    box = np.array(transform_bounds(src_crs, dst_crs, *bounds, densify_pts=21), "float64")
    box[:2] = np.where(np.isfinite(box[:2]), box[:2], -1e300)
    box[2:] = np.where(np.isfinite(box[2:]), box[2:], 1e300)
    return shapely.box(*box)


def _where(crs: CRS, resolution: tuple[float, float]) -> str:
    """The grid of a method sentence: ``10 m, EPSG:32633``."""
    rx, ry = (abs(float(r)) for r in resolution)
    size = f"{rx:g}" if rx == ry else f"{rx:g} x {ry:g}"
    units = "°" if crs.is_geographic else " m" if crs.linear_units in ("metre", "meter") else f" {crs.linear_units}"
    epsg = crs.to_epsg()
    return f"{size}{units}, {f'EPSG:{epsg}' if epsg else 'its CRS'}"


def _vector_labels(frames: Sequence[tuple[str, gpd.GeoDataFrame]], source: str, column: str | None,
                   kind: str | None, listed: Sequence[Any]) -> Labels:
    """Point or polygon labels from the frames read (one per file or label asset), in the first one's CRS."""
    if column is None:
        raise LabelError(f"labels {source} are vector features: name the column holding their labels "
                         "(--label-column)")
    checked = [_checked_frame(frame, href, column) for href, frame in frames]
    frame = pd.concat([f.to_crs(checked[0].crs) for f in checked], ignore_index=True)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty & frame[column].notna()]
    if frame.empty:
        raise LabelError(f"labels {source} hold no feature with both a geometry and a {column!r} value")
    values, kind, classes = _encode(frame[column], kind, listed, f"{source} (column {column!r})")
    types = set(frame.geom_type)
    if types <= {"Point", "MultiPoint"}:
        frame = frame.assign(__label__=values).explode(index_parts=False)
        return PointLabels(_Features(frame, frame["__label__"].to_numpy("float64")),
                           source=source, kind=kind, classes=classes)
    if types <= {"Polygon", "MultiPolygon"}:
        return PolygonLabels(_Features(frame, values), source=source, kind=kind, classes=classes)
    raise LabelError(f"labels {source} hold {', '.join(sorted(types))} geometries; label features must be all "
                     "points or all polygons")


def _checked_frame(frame: gpd.GeoDataFrame, href: str, column: str) -> gpd.GeoDataFrame:
    if frame.crs is None:
        raise LabelError(f"labels {redact_text(href)} have no CRS; they cannot be placed on the embeddings")
    if column not in frame.columns:
        there = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
        raise LabelError(f"labels {redact_text(href)} have no column {column!r}; columns there: {there}")
    return frame


def _encode(series: pd.Series, kind: str | None, listed: Sequence[Any],
            source: str) -> tuple[np.ndarray, str, dict[int, LabelClass]]:
    """The labels as float64 class values (text: codes in sorted order of the names, those of
    ``label:classes`` included) or values, with the kind and the classes."""
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    numbers = series.to_numpy("float64") if numeric else None
    if kind is None:
        kind = VALUES if numbers is not None and (numbers != np.rint(numbers)).any() else CLASSES
    if kind == VALUES:
        if numbers is None:
            raise LabelError(f"labels {source} are text; regression needs numbers")
        return numbers, VALUES, {}
    if numbers is not None:
        if ((numbers < 0) | (numbers != np.rint(numbers))).any():
            raise LabelError(f"labels {source} hold numbers that are not class values (integers >= 0)")
        extra = {int(v) for v in listed if isinstance(v, int | float) and v == int(v) and v >= 0}
        classes = {v: LabelClass(v, str(v)) for v in sorted(set(numbers.astype("int64").tolist()) | extra)}
    else:
        names = sorted(set(series.astype(str)) | {str(v) for v in listed})
        classes = {code: LabelClass(code, name) for code, name in enumerate(names)}
        numbers = series.astype(str).map({name: code for code, name in enumerate(names)}).to_numpy("float64")
    if len(classes) > MAX_CLASSES:
        raise LabelError(f"labels {source} hold {len(classes)} classes, more than {MAX_CLASSES}; if they are values, "
                         "not classes, ask for regression")
    return numbers, CLASSES, classes


def _open_stac(href: str, column: str | None, kind: str | None, access: Access) -> Labels:
    """Labels of a STAC label item, or of every label item of a collection or catalog."""
    source = redact_text(href)
    items = _label_items(href, access)
    types = {item.properties["label:type"] for item in items}
    if types - {"vector", "raster"} or len(types) > 1:
        raise LabelError(f"labels {source}: label:type must be one of vector or raster for all items; "
                         f"found {', '.join(sorted(map(str, types)))}")
    kind = kind or _task_kind(items[0].properties.get("label:tasks") or [])
    assets = [(item, _label_asset(item)) for item in items]
    if types == {"raster"}:
        classes, nodata = _raster_classes(assets)
        return RasterLabels([asset.get_absolute_href() for _, asset in assets], source=source, kind=kind,
                            classes=classes, nodata=nodata, access=access)
    column = column or next(iter(items[0].properties.get("label:properties") or []), None)
    listed = [value for item in items for value in _listed_classes(item, column)]
    frames = [(asset.get_absolute_href(), _read_frame(asset.get_absolute_href(), href, access, asset.media_type))
              for _, asset in assets]
    return _vector_labels(frames, source, column, kind, listed)


def _label_items(href: str, access: Access) -> list[pystac.Item]:
    stac_io = access.stac_io(href)
    try:
        root = stac_io.read_stac_object(href)
        if isinstance(root, pystac.Catalog):
            root._stac_io = stac_io  # as Catalog.from_file does: children and items are read the same way
        items = [root] if isinstance(root, pystac.Item) else list(root.get_items(recursive=True))
    except Exception as exc:  # pystac raises bare Exceptions, and JSON, type and I/O errors
        raise LabelError(f"cannot read STAC labels {redact_text(href)}: "
                         f"{redact_text(reason(exc.__cause__ or exc))}") from exc
    items = [item for item in items if "label:type" in item.properties]
    if not items:
        raise LabelError(f"{redact_text(href)} holds no STAC label item (an item with label:type)")
    return items


def _label_asset(item: pystac.Item) -> pystac.Asset:
    """The item's label data: the asset with role ``labels``, else the one keyed ``labels``."""
    for asset in item.assets.values():
        if "labels" in (asset.roles or []):
            return asset
    if "labels" in item.assets:
        return item.assets["labels"]
    raise LabelError(f"label item {item.id!r} has no label asset (an asset with role 'labels')")


def _task_kind(tasks: Sequence[str]) -> str | None:
    """``values`` for regression labels, ``classes`` for classification, else left to the data."""
    if "regression" in tasks and "classification" not in tasks:
        return VALUES
    return CLASSES if "classification" in tasks else None


def _listed_classes(item: pystac.Item, column: str | None) -> list[Any]:
    """The classes ``label:classes`` lists for ``column`` (rasters: the entry without a name)."""
    for entry in item.properties.get("label:classes") or []:
        if entry.get("name") == column:
            return list(entry.get("classes") or [])
    return []


def _raster_classes(assets: Sequence[tuple[pystac.Item, pystac.Asset]]) -> tuple[dict[int, LabelClass], set[int]]:
    """Classes of label rasters from ``label:classes`` (values) and ``classification:classes``
    (names, colours, and the nodata values), on the asset, its band or the item."""
    classes: dict[int, LabelClass] = {}
    nodata: set[int] = set()
    for item, asset in assets:
        for value in _listed_classes(item, None):
            if not isinstance(value, int | float) or value != int(value) or value < 0:
                raise LabelError(f"label item {item.id!r}: label:classes of a raster must be its integer "
                                 f"class values (>= 0); found {value!r}")
            classes.setdefault(int(value), LabelClass(int(value), str(int(value))))
        for entry in _classification(item, asset):
            value = int(entry["value"])
            if entry.get("nodata"):
                nodata.add(value)
                classes.pop(value, None)
            else:
                classes[value] = LabelClass(value, str(entry.get("name") or value), entry.get("color_hint"))
    return classes, nodata


def _classification(item: pystac.Item, asset: pystac.Asset) -> list[dict[str, Any]]:
    fields = asset.extra_fields
    bands = fields.get("bands") or fields.get("raster:bands") or [{}]
    return (fields.get("classification:classes") or bands[0].get("classification:classes")
            or item.properties.get("classification:classes") or [])


def _read_frame(href: str, origin: str, access: Access, media_type: str | None = None) -> gpd.GeoDataFrame:
    """A vector file as a GeoDataFrame; over http(s) first downloaded (streamed to a temporary
    file, as OGR needs a file and the format's suffix) through ``access``'s session for
    ``origin``, the href the user gave: its headers go to that origin only."""
    parquet = _suffix(href) in PARQUET_SUFFIXES or "parquet" in (media_type or "")
    with _read_errors(href), local_copy(href, access.session(origin)) as path:
        return _read_vector(path, parquet)


def _read_vector(path: str, parquet: bool) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path) if parquet else gpd.read_file(path, engine="pyogrio")


@contextmanager
def _read_errors(href: str) -> Iterator[None]:
    """What reading labels raises (GDAL, OGR, Arrow, HTTP, a file's content) as one ``LabelError``."""
    try:
        yield
    except RASTER_ERRORS as exc:
        raise LabelError(f"cannot read labels {redact_text(href)}: {gdal_reason(exc)}") from exc
    except READ_ERRORS as exc:
        raise LabelError(f"cannot read labels {redact_text(href)}: {redact_text(reason(exc))}") from exc


def _is_stac(href: str, access: Access) -> bool:
    try:
        document = json.loads(access.stac_io(href).read_text(href))
    except Exception as exc:  # pystac raises bare Exceptions for unreadable documents
        why = redact_text(reason(exc.__cause__ or exc))
        raise LabelError(f"cannot read labels {redact_text(href)}: {why}") from exc
    return isinstance(document, dict) and "stac_version" in document


def _forced_kind(kind: str | None) -> str | None:
    if kind is None:
        return None
    if kind not in KINDS:
        raise ConfigError(f"the label kind must be classification or regression; got {kind!r}")
    return KINDS[kind]


def _suffix(href: str) -> str:
    return PurePosixPath(urlsplit(href).path).suffix.lower()
