"""Readers: where the pixels of a run of chips come from, behind one protocol.

Like odc-stac's loader, the common work (the chip grid, runs, padding, valid fractions,
batches: ``chips.read_batches``) is done once, over any ``Reader``; a reader only turns a
pixel window into measurements and a valid mask. ``open_reader`` is the one place that
chooses one:

- ``DirectReader`` (``readers.direct``): window reads of the files on their own grid, the
  default. A run of chips costs one read per band, not a task graph.
- ``StackReader`` (``readers.stack``): a lazy stackstac / odc-stac stack, for resampling or a
  loader asked for by name. Its module imports xarray, dask and the loader, so it is imported
  only when chosen: a run on the native grid starts without them.

- ``ArrayReader`` (``readers.zarr``): bands that are variables of Zarr stores or NetCDF files,
  read chunk-wise on their own grid, or resampled onto the run's grid window by window. Its
  module imports zarr (and xarray for NetCDF) only when such a band is read.

``ModalReader`` (``readers.modal``) goes around either for a model of several inputs: it warps the
same window of every other modality onto the primary's grid (``WarpedVRT``, exact transformer;
Zarr/NetCDF bands through ``ArrayReader``) and returns all bands in the card's order
(``job.ModalFeedSpec`` opens it).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pystac

from ..bands import BandSource
from ..errors import ConfigError
from ..grid import Grid, band_grid, read_grid
from .direct import DirectReader


class Reader(Protocol):
    """Pixels of an item (or a time series of items on one grid), a window at a time."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``(band, [time,] height, width)``."""

    @property
    def tile_row_bytes(self) -> int:
        """Decoded bytes of one row of tiles across every file read, for sizing GDAL's block
        cache (``feed.FeedSpec.cache_bytes``); 0 leaves the cache at its floor."""

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's measurements ``(band, [time,] h, w)``, float32, NaN where there is no
        data (or the files' integer type where no pixel can lack data or need scaling:
        ``direct.native_dtype``); and the ``(h, w)`` bool mask of pixels with data in every
        band at every time step, or None when all have."""

    def close(self) -> None:
        """Release what the reader holds open."""


def open_reader(
    series: list[tuple[pystac.Item, list[BandSource]]], source_grid: Grid, grid: Grid, *,
    loader: str = "auto", resampling: str = "nearest", chunks: tuple[int, int] = (512, 512),
    gdal_options: dict[str, Any] | None = None, threads: int = 1,
) -> Reader:
    """The files directly when ``grid`` is every band's own (``auto``), else a lazy stackstac /
    odc-stac stack on ``grid`` (resampling, or a loader asked for by name) read with ``threads``;
    bands of Zarr stores or NetCDF files by ``readers.zarr.ArrayReader`` (which resamples itself)."""
    bands = [band for _, item_bands in series for band in item_bands]
    if any(band.format for band in bands):
        if loader != "auto":
            raise ConfigError(f"--loader {loader} reads rasters through GDAL; bands of Zarr stores and NetCDF "
                              "files are read by stacembed's array reader: leave --loader auto")
        from .zarr import ArrayReader

        grids = [[band_grid(band) for band in item_bands] for _, item_bands in series]
        return ArrayReader(series, grid, grids, resampling=resampling)
    if loader == "auto" and grid == source_grid and all(read_grid(band.href) == grid for band in bands):
        return DirectReader(series, source_grid)
    if not grid.placed:
        raise ConfigError(f"--loader {loader} stacks rasters on a map; these have no CRS (read on their pixel "
                          "grid): leave --loader auto")
    from .stack import StackReader, stack_series

    data = stack_series(
        series, grid, chunks=chunks, resampling=resampling,
        loader="stackstac" if loader == "auto" else loader, gdal_options=gdal_options or {},
    )
    return StackReader(data, threads, hrefs=tuple(band.href for _, bands in series for band in bands))


__all__ = ["DirectReader", "Reader", "open_reader"]
