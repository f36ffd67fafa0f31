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

``ModalReader`` (``readers.modal``) goes around either for a model of several inputs: it warps the
same window of every other modality onto the primary's grid (``WarpedVRT``, exact transformer)
and returns all bands in the card's order (``job.ModalFeedSpec`` opens it).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pystac

from ..bands import BandSource
from ..grid import Grid
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
        data; and the ``(h, w)`` bool mask of pixels with data in every band at every time
        step, or None when all have."""

    def close(self) -> None:
        """Release what the reader holds open."""


def open_reader(
    series: list[tuple[pystac.Item, list[BandSource]]], source_grid: Grid, grid: Grid, *,
    loader: str = "auto", resampling: str = "nearest", chunks: tuple[int, int] = (512, 512),
    gdal_options: dict[str, Any] | None = None, threads: int = 1,
) -> Reader:
    """The files directly when ``grid`` is theirs (``auto``), else a lazy stackstac / odc-stac
    stack on ``grid`` (resampling, or a loader asked for by name) read with ``threads``."""
    if loader == "auto" and grid == source_grid:
        return DirectReader(series, source_grid)
    from .stack import StackReader, stack_series

    data = stack_series(
        series, grid, chunks=chunks, resampling=resampling,
        loader="stackstac" if loader == "auto" else loader, gdal_options=gdal_options or {},
    )
    return StackReader(data, threads, hrefs=tuple(band.href for _, bands in series for band in bands))


__all__ = ["DirectReader", "Reader", "open_reader"]
