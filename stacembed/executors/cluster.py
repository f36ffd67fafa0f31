"""Embed the series on a dask.distributed cluster: tasks per item, and per tile of large items.

The client resolves the items and checks the run up front (``job.Inputs``, ``job.Run.freeze``),
exactly as a local run does; ``pipeline.run`` does that, and the catalog at the end. Each
worker builds the model once (``EmbedderPlugin``, a dask ``WorkerPlugin``). An item of at most
``--tile-chips`` chips is one task: ``job.embed_series`` writes it into the shared ``--out``
directory through the same temporary-directory-and-rename as a local run. A larger item is
split into tiles, bands of whole chip rows of about ``--tile-chips`` chips: each tile task
writes its embeddings to a part file (``writers.parts``), and a merge task that depends on
them replays the parts through the writers into the item, so the files equal a single
process's (int8 ranges included) and the model runs only in the tile tasks.

Failure handling is dask's: a task on a worker that dies is re-run elsewhere (up to
``distributed.scheduler.allowed-failures``); a half-written item or part never becomes
visible (temporary names, renamed when complete), an item finished twice (a slow worker that
was presumed lost) is kept once, and parts finished before an interruption are kept for the
next run. ``--out`` must be a filesystem every worker sees (one machine, NFS, a mounted bucket).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import rasterio
from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from ..chips import ChipGrid
from ..config import RunConfig
from ..embed import Embedder, usable_cores
from ..errors import ConfigError
from ..job import Run, embed_series, embedded_batches, write_item
from ..temporal import Series
from ..writers.parts import part_path, read_parts, write_part

log = logging.getLogger("stacembed")

PLUGIN = "stacembed-embedder"


class EmbedderPlugin(WorkerPlugin):
    """Builds the run's model once per worker process, with ``threads`` torch threads and one
    forward pass at a time unless ``--streams`` says otherwise (the cluster's parallelism is
    its workers and their task threads)."""

    name = PLUGIN

    def __init__(self, run: Run, threads: int | None = None) -> None:
        self.run = run
        self.threads = threads
        self.embedder = None

    def setup(self, worker) -> None:
        self.embedder, _ = self.run.inputs.load_embedder(threads=self.threads, streams=self.run.config.streams or 1)

    def teardown(self, worker) -> None:
        self.embedder = None


class ClusterExecutor:
    embeds_here = False  # the client only checks the run; workers build the model on their own device

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.client: Client | None = None
        self.cluster: LocalCluster | None = None

    def __enter__(self) -> ClusterExecutor:
        self.client, self.cluster = _connect(self.config.dask_address, self.config.workers)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def streams(self, embedder: Embedder | None) -> int:
        return self.config.streams or 1

    def embed(self, run: Run, embedder: Embedder | None) -> Iterator[int | None]:
        """Submit every series to the workers, then gather their chip counts in order."""
        config, client = self.config, self.client
        # Local workers share this machine's cores; a remote worker takes its own.
        threads = config.threads or (max(1, usable_cores() // config.workers) if self.cluster else None)
        client.register_plugin(EmbedderPlugin(run, threads), name=PLUGIN)
        shared = client.scatter(run, broadcast=True)
        with rasterio.Env(**run.inputs.search.access.gdal_options()):
            futures = [_submit(client, shared, run, index) for index in range(len(run.inputs.series))]
        yield from client.gather(futures)


def tile_rows(chip_grid: ChipGrid, tile_chips: int) -> list[range]:
    """Bands of whole chip rows of about ``tile_chips`` chips (at least one row each)."""
    step = max(1, tile_chips // chip_grid.cols)
    return [range(start, min(start + step, chip_grid.rows)) for start in range(0, chip_grid.rows, step)]


def parts_dir(run: Run, series: Series) -> Path:
    """Where a series' part files wait, named by the run's parameters so no other run reuses them."""
    parameters = json.dumps(run.provenance.runtime_parameters(), sort_keys=True).encode()
    return run.layout_of(series).parts_dir(series.id, hashlib.sha256(parameters).hexdigest()[:12])


def _submit(client: Client, shared, run: Run, index: int):
    """The future of series ``index``'s chip count: one task, or tile tasks and their merge."""
    series = run.inputs.series[index]
    key = f"stacembed-{index}-{series.id}"
    tiles = tile_rows(run.inputs.plan_item(series).chip_grid, run.config.tile_chips)
    if len(tiles) == 1:
        return client.submit(_embed_task, shared, index, key=key, pure=False)
    parts = [
        client.submit(_tile_task, shared, index, rows, key=f"{key}-rows-{rows.start}-{rows.stop}", pure=False)
        for rows in tiles
    ]
    return client.submit(_merge_task, shared, index, parts, key=f"{key}-merge", pure=False)


def _worker_embedder() -> Embedder:
    return get_worker().plugins[PLUGIN].embedder


def _embed_task(run: Run, index: int) -> int | None:
    """On a worker: embed series ``index`` with the worker's model; reads stay in this task."""
    with rasterio.Env(**run.inputs.search.access.gdal_options()):
        return embed_series(run, run.inputs.series[index], _worker_embedder())


def _tile_task(run: Run, index: int, rows: range) -> Path | None:
    """On a worker: embed chip rows ``rows`` of series ``index`` into a part file (kept if there)."""
    series = run.inputs.series[index]
    if run.finished(series):
        return None
    path = part_path(parts_dir(run, series), rows)
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with rasterio.Env(**run.inputs.search.access.gdal_options()):
            plan = run.inputs.plan_item(series)
            write_part(path, embedded_batches(run, plan, _worker_embedder(), rows), run.provenance.embedding)
    return path


def _merge_task(run: Run, index: int, parts: list[Path | None]) -> int | None:
    """On a worker: write series ``index``'s item from its tiles' part files, then drop them."""
    series = run.inputs.series[index]
    chips = None
    if not run.finished(series):
        with rasterio.Env(**run.inputs.search.access.gdal_options()):
            plan = run.inputs.plan_item(series)
            chips = write_item(run, plan, read_parts(parts, plan.chip_grid, run.provenance.embedding))
        if not chips:
            log.warning("item %r: no chip has enough valid pixels (--min-valid %g), so its embedding outputs "
                        "are empty", series.id, run.config.min_valid)
    for stale in run.layout_of(series).stale_parts(series.id):
        shutil.rmtree(stale, ignore_errors=True)
    return chips


def _connect(address: str | None, workers: int | None) -> tuple[Client, LocalCluster | None]:
    if address:
        try:
            return Client(address, timeout="30s"), None
        except OSError as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster
