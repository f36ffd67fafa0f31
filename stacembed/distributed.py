"""Run the same stages on a dask.distributed cluster: tasks per item, and per tile of large items.

The client resolves the items and checks the run up front (``pipeline.prepare``,
``pipeline.describe_run``), exactly as a local run does. Each worker builds the model once
(``EmbedderPlugin``, a dask ``WorkerPlugin``). An item of at most ``--tile-chips`` chips is
one task: ``pipeline.embed_series`` writes it into the shared ``--out`` directory through the
same temporary-directory-and-rename as a local run. A larger item is split into tiles, bands
of whole chip rows of about ``--tile-chips`` chips: each tile task writes its embeddings to a
part file (``writers.parts``), and a merge task that depends on them replays the parts
through the writers into the item, so the files equal a single process's (int8 ranges
included) and the model runs only in the tile tasks. The catalog is assembled by the client
at the end, from what is on disk.

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
from pathlib import Path

import rasterio
from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from .chips import ChipGrid
from .embed import usable_cores
from .errors import ConfigError
from .pipeline import (
    Run, RunSummary, _remove_if_empty, describe_run, embed_series, embedded_batches, finish_catalog, finished,
    item_path, load_embedder, output_dirs, write_item,
)
from .publish import Provenance
from .temporal import Series
from .writers.parts import part_path, read_parts, write_part

log = logging.getLogger("stacembed")

PLUGIN = "stacembed-embedder"


class EmbedderPlugin(WorkerPlugin):
    """Builds the run's model once per worker process, with ``threads`` torch threads and one
    forward pass at a time unless ``--streams`` says otherwise (the cluster's parallelism is
    its workers and their task threads)."""

    name = PLUGIN

    def __init__(self, prepared: Run, threads: int | None = None) -> None:
        self.prepared = prepared
        self.threads = threads
        self.embedder = None

    def setup(self, worker) -> None:
        streams = self.prepared.config.streams or 1
        self.embedder, _ = load_embedder(self.prepared, threads=self.threads, streams=streams)

    def teardown(self, worker) -> None:
        self.embedder = None


def embed_on_cluster(prepared: Run) -> RunSummary:
    """Embed ``prepared``'s items on the cluster the config names; returns the run summary."""
    config = prepared.config
    client, cluster = _connect(config.dask_address, config.workers)
    try:
        embedder, weights = load_embedder(prepared, device="cpu")  # checks the run on the client
        provenance = describe_run(prepared, embedder, weights)
        prepared.batch_size = config.batch_size or prepared.batch_size
        del embedder
        created = output_dirs(prepared)
        summary = RunSummary(config.out, None, prepared.collection_id)
        try:
            # Local workers share this machine's cores; a remote worker takes its own.
            threads = config.threads or (max(1, usable_cores() // config.workers) if cluster else None)
            client.register_plugin(EmbedderPlugin(prepared, threads), name=PLUGIN)
            shared = client.scatter(prepared, broadcast=True)
            with rasterio.Env(**prepared.search.access.gdal_options()):
                futures = [_submit(client, shared, prepared, index, provenance) for index in range(len(prepared.series))]
            for series, chips in zip(prepared.series, client.gather(futures)):
                summary.record(series.id, chips)
        finally:
            _remove_if_empty(*created)
        return finish_catalog(prepared, provenance, summary)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def tile_rows(chip_grid: ChipGrid, tile_chips: int) -> list[range]:
    """Bands of whole chip rows of about ``tile_chips`` chips (at least one row each)."""
    step = max(1, tile_chips // chip_grid.cols)
    return [range(start, min(start + step, chip_grid.rows)) for start in range(0, chip_grid.rows, step)]


def _submit(client: Client, shared, prepared: Run, index: int, provenance: Provenance):
    """The future of series ``index``'s chip count: one task, or tile tasks and their merge."""
    series = prepared.series[index]
    key = f"stacembed-{index}-{series.id}"
    tiles = tile_rows(prepared.plan_item(series).chip_grid, prepared.config.tile_chips)
    if len(tiles) == 1:
        return client.submit(_embed_task, shared, index, provenance, key=key, pure=False)
    parts = [
        client.submit(_tile_task, shared, index, rows, provenance, key=f"{key}-rows-{rows.start}-{rows.stop}", pure=False)
        for rows in tiles
    ]
    return client.submit(_merge_task, shared, index, provenance, parts, key=f"{key}-merge", pure=False)


def _embed_task(prepared: Run, index: int, provenance: Provenance) -> int | None:
    """On a worker: embed series ``index`` with the worker's model; reads stay in this task."""
    embedder = get_worker().plugins[PLUGIN].embedder
    with rasterio.Env(**prepared.search.access.gdal_options()):
        return embed_series(prepared, prepared.series[index], embedder, provenance)


def _tile_task(prepared: Run, index: int, rows: range, provenance: Provenance) -> Path | None:
    """On a worker: embed chip rows ``rows`` of series ``index`` into a part file (kept if there)."""
    series = prepared.series[index]
    if finished(item_path(prepared, series), provenance):
        return None
    path = part_path(_parts_dir(prepared, series, provenance), rows)
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        embedder = get_worker().plugins[PLUGIN].embedder
        with rasterio.Env(**prepared.search.access.gdal_options()):
            plan = prepared.plan_item(series)
            write_part(path, embedded_batches(plan, prepared, embedder, rows), provenance.layout)
    return path


def _merge_task(prepared: Run, index: int, provenance: Provenance, parts: list[Path | None]) -> int | None:
    """On a worker: write series ``index``'s item from its tiles' part files, then drop them."""
    series = prepared.series[index]
    final = item_path(prepared, series)
    if not finished(final, provenance):
        with rasterio.Env(**prepared.search.access.gdal_options()):
            plan = prepared.plan_item(series)
            chips = write_item(plan, prepared, provenance, final, read_parts(parts, plan.chip_grid, provenance.layout))
        if not chips:
            log.warning("item %r: no chip has enough valid pixels (--min-valid %g), so its embedding outputs "
                        "are empty", series.id, prepared.config.min_valid)
    else:
        chips = None
    for stale in final.parent.glob(f".parts-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return chips


def _parts_dir(prepared: Run, series: Series, provenance: Provenance) -> Path:
    """Where a series' part files wait, named by the run's parameters so no other run reuses them."""
    digest = hashlib.sha256(json.dumps(provenance.runtime_parameters(), sort_keys=True).encode()).hexdigest()[:12]
    final = item_path(prepared, series)
    return final.with_name(f".parts-{final.name}-{digest}")


def _connect(address: str | None, workers: int | None) -> tuple[Client, LocalCluster | None]:
    if address:
        try:
            return Client(address, timeout="30s"), None
        except OSError as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster
