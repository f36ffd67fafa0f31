"""Several modalities on one grid: the primary's pixels as they are, every other modality's warped
onto them, a window at a time.

``ModalReader`` wraps the primary modality's reader (``DirectReader`` on its native grid, or a
stack when ``--crs``/``--resolution`` resample it) and, for each window that reader is asked for,
reprojects the same window of every other modality onto that grid: through a ``WarpedVRT`` per
source file whose output grid is the primary's, so that GDAL warps only the blocks a window
touches (memory follows the window, never the scene). Several items of one modality (tiles, or
scenes of one pass) are mosaicked: the first (nearest in time) wins wherever it has data.

What the warp does, and nothing else:

- resampling per band (``ModalityRead.resampling``): ``bilinear`` for continuous values,
  ``nearest`` for classes; GDAL leaves nodata (the declared one, else the file's) out of the
  interpolation; pixels no source covers are no data (NaN);
- GDAL's exact transformer (``EXACT``): its default approximation (0.125 px) makes a pixel's
  value depend on the window it was read in; exact, a pixel is the same in every window, so a
  chip equals the warp of that chip alone;
- then, as for the primary, stored values become measurements (``raster:scale``/``offset``);
- ``sar_db``: linear backscatter becomes 10·log10 (dB, in float64, rounded to float32);
  values <= 0 have no logarithm and become no data.

A modality in Zarr stores (a sample cube's other modality: ``resolve.cubes``) is read by
``readers.zarr.ArrayReader`` onto the grid instead, one per band: as stored where its grid is the
primary's (the cubes of one sample share their pixels, placed or not), else resampled as that
reader does (placed grids only).

The bands are returned in the card's order (each modality's in its place). A pixel is valid when
every band of every *required* modality has data there: an optional modality's gaps (or its
absence) never make a chip invalid, its bands are then no data, which the embedder fills after
value scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..access import redact_text
from ..bands import BandSource
from ..errors import ReadError
from ..grid import Grid, band_grid, raster_errors

# GDAL's approximate transformer with this error bound (pixels) transforms every pixel exactly
# (rasterio's WarpedVRT takes no 0: it then builds no transformer at all).
EXACT = 1e-9


@dataclass(frozen=True)
class ModalityRead:
    """What to read for one modality at one location.

    ``sources``: its items (nearest first) with their bands in the card's order; empty when the
    location has none. The primary modality has ``primary`` set and no sources (its reader has
    them). ``resampling``: per band, how its pixels are brought onto the grid.
    """

    name: str
    bands: tuple[str, ...]
    sources: tuple[tuple[pystac.Item, tuple[BandSource, ...]], ...] = ()
    resampling: tuple[str, ...] = ()
    sar_db: bool = False
    required: bool = True
    primary: bool = False


class ModalReader:
    """A ``Reader`` of every modality's bands on the primary's grid (see the module docstring)."""

    def __init__(self, primary, reads: tuple[ModalityRead, ...], grid: Grid) -> None:
        self.primary = primary
        self.reads = reads
        self.grid = grid
        self.opened: dict[str, rasterio.DatasetReader] = {}  # by href
        self.vrts: dict[tuple, WarpedVRT] = {}
        self.arrays: dict[tuple, object] = {}  # readers.zarr.ArrayReader by (band, method)
        count = sum(len(read.bands) for read in reads)
        self.shape = (count, *primary.shape[1:])  # (band, [time,] y, x): time only for one modality
        try:
            for read in reads:
                for _, bands in read.sources:
                    for band, method in zip(bands, read.resampling, strict=True):
                        (self._array if band.format else self._vrt)(band, method)
        except BaseException:
            self.close()
            raise

    def _vrt(self, band: BandSource, method: str) -> WarpedVRT:
        """The source file of ``band`` warped onto the grid with ``method``, opened once."""
        key = (band.href, method, band.nodata)
        if key not in self.vrts:
            with raster_errors(band.href, "open raster"):
                if band.href not in self.opened:
                    self.opened[band.href] = rasterio.open(band.href)
                ds = self.opened[band.href]
                nodata = band.nodata if band.nodata is not None else ds.nodata
                extra = {} if nodata is None else {"src_nodata": nodata}
                self.vrts[key] = WarpedVRT(
                    ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                    height=self.grid.height, resampling=Resampling[method], nodata=np.nan, dtype="float32",
                    tolerance=EXACT, **extra,
                )
        return self.vrts[key]

    def _array(self, band: BandSource, method: str):
        """A band of a Zarr store or NetCDF file read onto the grid (``readers.zarr``), opened once."""
        key = (band, method)
        if key not in self.arrays:
            from .zarr import ArrayReader

            own = band_grid(band)
            if own != self.grid and not (own.placed and self.grid.placed):
                raise ReadError(f"band {band.name} ({redact_text(band.href)}) is on another pixel grid than the "
                                "primary input's, and without georeferencing it cannot be brought onto it")
            self.arrays[key] = ArrayReader([(None, [band])], self.grid, [[own]], resampling=method)
        return self.arrays[key]

    @property
    def tile_row_bytes(self) -> int:
        """The primary's, plus a row of tiles across each warped source file."""
        total = self.primary.tile_row_bytes
        for ds in self.opened.values():
            height, width = ds.block_shapes[0]
            total += -(-ds.width // width) * width * height * np.dtype(ds.dtypes[0]).itemsize * ds.count
        return total

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None]:
        primary, valid = self.primary.read(rows, cols)
        height, width = primary.shape[-2:]
        window = Window(cols.start, rows.start, width, height)
        out = np.empty((self.shape[0], *primary.shape[1:]), dtype="float32")
        start = 0
        for read in self.reads:
            part = out[start:start + len(read.bands)]
            start += len(read.bands)
            if read.primary:
                part[...] = primary
            else:
                part[...] = self._warped(read, window)
            if read.sar_db:
                part[...] = to_db(part)
            if read.required and (read.sar_db or not read.primary):
                has_data = np.isfinite(part).reshape(-1, height, width).all(axis=0)
                valid = has_data if valid is None else valid & has_data
        return out, valid

    def _warped(self, read: ModalityRead, window: Window) -> np.ndarray:
        """The modality's bands in ``window``: its sources mosaicked, the first wins where it has data."""
        values = np.full((len(read.bands), int(window.height), int(window.width)), np.nan, dtype="float32")
        for _, bands in read.sources:
            taken = np.empty_like(values)
            for i, (band, method) in enumerate(zip(bands, read.resampling, strict=True)):
                if band.format:  # measurements already (scale and offset applied by the array reader)
                    rows = slice(int(window.row_off), int(window.row_off + window.height))
                    taken[i] = self._array(band, method).read(rows, slice(int(window.col_off),
                                                                          int(window.col_off + window.width)))[0][0]
                    continue
                with raster_errors(band.href):
                    taken[i] = self._vrt(band, method).read(band.index, window=window)
                if band.scale != 1 or band.offset != 0:
                    taken[i] = taken[i].astype("float64") * band.scale + band.offset
            fill = np.isfinite(taken).all(axis=0) & np.isnan(values).all(axis=0)
            values[:, fill] = taken[:, fill]
            if not np.isnan(values).any():
                break
        return values

    def close(self) -> None:
        for vrt in self.vrts.values():
            vrt.close()
        for ds in self.opened.values():
            ds.close()
        for array in self.arrays.values():
            array.close()
        self.vrts, self.opened, self.arrays = {}, {}, {}
        self.primary.close()


def to_db(linear: np.ndarray) -> np.ndarray:
    """10·log10 of linear backscatter, in float64 rounded to float32; no data where <= 0 or NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 10.0 * np.log10(linear.astype("float64"))
    values[~(linear > 0)] = np.nan
    return values.astype("float32")


def describe_resampling(read: ModalityRead) -> str | dict[str, str]:
    """A modality's resampling as runs record it: one method, or one per band when they differ."""
    methods = set(read.resampling)
    return read.resampling[0] if len(methods) == 1 else dict(zip(read.bands, read.resampling, strict=True))


__all__ = ["EXACT", "ModalReader", "ModalityRead", "describe_resampling", "to_db"]
