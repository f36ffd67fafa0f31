"""The chip feed: where an item's pixels come from, read into batches ahead of the model.

``FeedSpec`` holds everything a reader needs (items, bands, grids, read options) and nothing
of the model. ``feed(spec, depth)`` yields its ``ChipBatch`` es, read ``depth`` batches ahead
in a background thread, or in line between forward passes when ``depth`` is 0.

Measured on 2 CPUs (benchmarks/): reading ahead pays when something leaves the reader a
core, a GPU or a model on fewer threads than cores. When torch's threads take every core, a
reader thread competes with them for cores and the GIL and slowed a small model's forward
passes by a quarter, so reads then run in line (``embed.default_prefetch``). A reader
process (torch DataLoader) was slower still: moving each batch through shared memory cost
more than reading it.
"""

from __future__ import annotations

import logging
import queue
import threading
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

import dask
import pystac
import rasterio

from .bands import BandSource
from .chips import ChipBatch, ChipGrid, ReadStats, read_batches, warn_if_empty
from .grid import Grid
from .stack import NativeWindows, stack_series

log = logging.getLogger("stacembed")


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

    def open(self):
        """The files directly when the grid is theirs (``auto``), else a lazy stackstac /
        odc-stac stack (resampling, or a loader asked for by name)."""
        if self.loader == "auto" and self.chip_grid.grid == self.source_grid:
            return NativeWindows(self.series, self.source_grid)
        return stack_series(
            self.series, self.chip_grid.grid, chunks=self.chunks, resampling=self.resampling,
            loader="stackstac" if self.loader == "auto" else self.loader, gdal_options=self.gdal_options or {},
        )

    @property
    def chunks(self) -> tuple[int, int]:
        """Chunk rows aligned with chip rows, chunk columns with one read run of a batch."""
        grid, size, stride = self.chip_grid.grid, self.chip_grid.size, self.chip_grid.stride
        width = min(grid.width, stride * self.batch_size + size - stride)
        return (min(size, grid.height), max(width, 1))

    def batches(self, stats: ReadStats | None = None) -> Iterator[ChipBatch]:
        """Read the chips in batches, here (in whichever thread or process iterates)."""
        with rasterio.Env(**(self.gdal_options or {})), reader_scheduler(self.reader_threads):
            data = self.open()
            try:
                yield from read_batches(data, self.chip_grid, batch_size=self.batch_size,
                                        min_valid=self.min_valid, rows=self.rows, stats=stats)
            finally:
                getattr(data, "close", lambda: None)()  # NativeWindows holds open files


def feed(spec: FeedSpec, depth: int = 2) -> Iterator[ChipBatch]:
    """``spec``'s batches, read ``depth`` ahead in a background thread (0: in line).

    Warns, here in the caller's process, when a whole item had no usable chip.
    """
    stats = ReadStats()
    source = prefetch(spec.batches(stats), depth)
    with closing(source):
        yield from source
    if spec.rows is None:
        warn_if_empty(spec.series[0][0].id, spec.chip_grid, spec.min_valid, stats)


@contextmanager
def reader_scheduler(threads: int) -> Iterator[None]:
    """Dask reads (stackstac / odc-stac) run in the reader itself (1, measured fastest on small
    machines: no task-graph thread hand-offs), or in a dask pool of ``threads``."""
    with dask.config.set(scheduler="synchronous") if threads <= 1 else dask.config.set(num_workers=threads):
        yield


T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` produced ``depth`` ahead in a background thread (errors re-raised here)."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put((done, exc))

    worker = threading.Thread(target=produce, name="stacembed-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
