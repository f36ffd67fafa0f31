"""Grid: a raster's pixel grid (CRS, affine transform, shape) and the geometry derived from it.

Every stage that talks about pixels (stack, chips, writers, publish) uses this one type so
that georeferencing is computed in exactly one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from .errors import ReadError


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``transform`` maps (col, row) to CRS coordinates of pixel corners."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> tuple[float, float]:
        return (self.transform.a, -self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.window_bounds(Window(0, 0, self.width, self.height))

    @property
    def crs_code(self) -> str:
        """``EPSG:nnnn`` when the CRS has an EPSG code, else its WKT."""
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

    def check_north_up(self, what: str) -> None:
        if self.transform.b != 0 or self.transform.d != 0 or self.transform.e >= 0:
            raise ReadError(f"{what} is not on a north-up grid (rotated or flipped); it is not supported")


def read_grid(href: str) -> Grid:
    """The grid from a raster's own header; also proves the href is a readable raster."""
    return read_header(href)[0]


@functools.lru_cache(maxsize=256)
def read_header(href: str) -> tuple[Grid, int]:
    """(grid, band count) of a raster file, opened once per href and remembered."""
    try:
        with rasterio.open(href) as ds:
            if ds.crs is None:
                raise ReadError(f"{href} has no CRS in its header; it cannot be placed on a map")
            return Grid(ds.crs, ds.transform, ds.width, ds.height), ds.count
    except rasterio.errors.RasterioIOError as exc:
        raise ReadError(f"cannot read raster {href}: {str(exc).splitlines()[0]}") from None
