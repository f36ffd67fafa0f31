"""The chip feed: where an item's pixels come from, read into batches ahead of the model.

``FeedSpec`` holds everything a reader needs (items, bands, grids, read options) and nothing
of the model; ``readers.open_reader`` chooses the reader from it. ``feed(spec, depth)`` yields
its ``ChipBatch`` es, read ``depth`` batches ahead in a background thread, or in line between
forward passes when ``depth`` is 0.

Measured on 2 CPUs (benchmarks/): reading ahead pays when something leaves the reader a
core, a GPU or a model on fewer threads than cores. When torch's threads take every core, a
reader thread competes with them for cores and the GIL and slowed a small model's forward
passes (by 7-25% between measurements), so reads then run in line
(``embed.default_prefetch``), overlapping with the forward passes of other streams when
there are several (``embed.default_streams``). A reader process (torch DataLoader) was
slower still: moving each batch through shared memory cost more than reading it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pystac
import rasterio

from .access import DEFAULT_CACHE_BYTES, cache_bytes
from .bands import BandSource
from .chips import ChipBatch, ChipGrid, ReadStats, chip_bytes, read_batches, run_length, warn_if_empty
from .concurrency import prefetch
from .grid import Grid
from .memory import MemoryTrimmer
from .readers import Reader, open_reader

# Pixels of the batches read ahead of the forward passes (see ``FeedSpec.ahead``).
AHEAD_BYTES = 32 * 2**20


@dataclass(frozen=True)
class FeedSpec:
    """What to read for one item (or chip rows ``rows`` of it), and how."""

    series: list[tuple[pystac.Item, list[BandSource]]]
    chip_grid: ChipGrid
    source_grid: Grid
    batch_size: int
    min_valid: float
    loader: str = "auto"
    resampling: str = "nearest"
    gdal_options: dict[str, Any] | None = None
    reader_threads: int = 1
    rows: range | None = None

    def open(self) -> Reader:
        """The reader for this spec (``readers.open_reader``)."""
        return open_reader(
            self.series, self.source_grid, self.chip_grid.grid, loader=self.loader, resampling=self.resampling,
            chunks=self.chunks, gdal_options=self.gdal_options, threads=self.reader_threads,
        )

    @property
    def batch_bytes(self) -> int:
        """Bytes of one batch's float32 pixels."""
        return self.batch_size * chip_bytes(len(self.series[0][1]) * len(self.series), self.chip_grid.size)

    @property
    def ahead(self) -> int:
        """Batches to keep read and queued for the forward passes: as many as ``AHEAD_BYTES``
        holds, at least one.

        The thread that reads also writes, and writers work in bursts (a GeoParquet row group
        of 2,048 chips, a GeoTIFF strip); a queue that covers a burst keeps the model busy
        through it. Measured on 2 cores, two streams, 16-chip batches: the demo model ran
        1,342 chips/s end to end with one batch queued, 1,424-1,439 with 21-42 (medians of 5).
        Memory holds these batches whatever the area.
        """
        return max(1, AHEAD_BYTES // max(1, self.batch_bytes))

    @property
    def chunks(self) -> tuple[int, int]:
        """Chunk rows aligned with chip rows, chunk columns with one read run (``run_length``)."""
        grid, size, stride = self.chip_grid.grid, self.chip_grid.size, self.chip_grid.stride
        length = run_length(self.batch_size, self.batch_bytes // self.batch_size)
        width = min(grid.width, stride * length + size - stride)
        return (min(size, grid.height), max(width, 1))

    def batches(self, stats: ReadStats | None = None) -> Iterator[ChipBatch]:
        """Read the chips in batches, here (in whichever thread or process iterates)."""
        options = self.gdal_options or {}
        with rasterio.Env(**options):
            reader = self.open()
            try:
                with rasterio.Env(GDAL_CACHEMAX=options.get("GDAL_CACHEMAX") or self.cache_bytes(reader)):
                    yield from read_batches(reader, self.chip_grid, batch_size=self.batch_size,
                                            min_valid=self.min_valid, rows=self.rows, stats=stats)
            finally:
                reader.close()

    @staticmethod
    def cache_bytes(reader: Reader) -> int:
        """GDAL's block cache for a read, unless ``--gdal GDAL_CACHEMAX`` (or the environment) says.

        Two rows of tiles across every file (chips straddle tile rows), at least
        ``DEFAULT_CACHE_BYTES``: tiles are decoded once, and memory follows the item's width,
        not its area. GDAL's own default, 5% of RAM, kept every tile of an item read in chip
        rows (measured: 390 MiB more peak memory for an 8192 px item than a 2048 px one).
        """
        if os.environ.get("GDAL_CACHEMAX"):
            return cache_bytes(os.environ["GDAL_CACHEMAX"])
        return max(DEFAULT_CACHE_BYTES, 2 * reader.tile_row_bytes)


def feed(spec: FeedSpec, depth: int = 2) -> Iterator[ChipBatch]:
    """``spec``'s batches, read ``depth`` ahead in a background thread (0: in line).

    Warns, here in the caller's process, when a whole item had no usable chip.
    """
    stats = ReadStats()
    source = prefetch(spec.batches(stats), depth)
    trimmer = MemoryTrimmer()
    with closing(source):
        for batch in source:
            yield batch
            trimmer.check()
    if spec.rows is None:
        warn_if_empty(spec.series[0][0].id, spec.chip_grid, spec.min_valid, stats)
