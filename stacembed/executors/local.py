"""Embed the series here, one after another, with the model the caller loaded."""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import rasterio
from tqdm import tqdm

from ..concurrency import short_switch_interval
from ..config import RunConfig
from ..embed import Embedder
from ..job import Run, embed_series


class LocalExecutor:
    embeds_here = True  # the model that checks the run, on the run's device, is the one that embeds

    def __init__(self, config: RunConfig) -> None:
        self.show = config.progress and sys.stderr.isatty()
        _skip_final_collection()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @staticmethod
    def streams(embedder: Embedder) -> int:
        return embedder.streams

    def embed(self, run: Run, embedder: Embedder) -> Iterator[int | None]:
        with rasterio.Env(**run.inputs.search.access.gdal_options()), short_switch_interval(), _loaded_frozen():
            for series in tqdm(run.inputs.series, desc="items", unit="item", disable=not self.show):
                yield embed_series(run, series, embedder, self.show)


@contextmanager
def _loaded_frozen() -> Iterator[None]:
    """Keep what is loaded before the items are embedded (torch, the model, the catalog: objects
    that live as long as the run) out of the cyclic garbage collections during it (``gc.freeze``).

    The collections Python runs as batches allocate walk every tracked object: with torch and
    timm loaded, millions of them, about 2% of a ViT run's CPU time in collections that free
    nothing of it (measured with py-spy). Afterwards they are handed back to the collector
    (``gc.unfreeze``), unless someone else had frozen objects before, whose choice stands.
    """
    thawed = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if thawed:
            gc.unfreeze()


_registered = False


def _skip_final_collection() -> None:
    """At interpreter exit, leave the objects alive then out of the last cyclic garbage collection.

    A process that has loaded torch and timm holds millions of objects; the collection Python
    runs while it shuts down walks them all: measured on 2 cores, 1.0-1.3 s of CPU after the
    last line of a `stacembed run`, 0.23 s with them frozen (``gc.freeze``) first. Only the
    final pass changes: ``atexit`` handlers, flushing and closing files, and the ordinary
    collections during the run are as before.
    """
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
