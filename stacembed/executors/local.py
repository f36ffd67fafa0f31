"""Embed the series here, one after another, with the model the caller loaded."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import rasterio
from tqdm import tqdm

from ..catalog import import_ahead
from ..collector import frozen_while_embedding, skip_final_collection
from ..concurrency import short_switch_interval
from ..config import RunConfig
from ..embed import Embedder
from ..job import Run, embed_series


class LocalExecutor:
    embeds_here = True  # the model that checks the run, on the run's device, is the one that embeds

    def __init__(self, config: RunConfig) -> None:
        self.show = config.progress and sys.stderr.isatty()
        skip_final_collection()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @staticmethod
    def streams(embedder: Embedder) -> int:
        return embedder.streams

    def embed(self, run: Run, embedder: Embedder) -> Iterator[int | None]:
        with rasterio.Env(**run.inputs.search.access.gdal_options()), short_switch_interval(), \
                frozen_while_embedding():
            for series in tqdm(run.inputs.series, desc="items", unit="item", disable=not self.show):
                yield embed_series(run, series, embedder, self.show, after_first_batch=import_ahead)
