"""Run the same stages on a dask.distributed cluster: one task per output item.

The client resolves the items and checks the run up front (``pipeline.prepare``,
``pipeline.describe_run``), exactly as a local run does. Each worker builds the model once
(``EmbedderPlugin``, a dask ``WorkerPlugin``) and embeds whole items with
``pipeline.embed_series``, writing them into the shared ``--out`` directory through the same
temporary-directory-and-rename as a local run. The catalog is assembled by the client at the
end, from what is on disk.

Failure handling is dask's: a task on a worker that dies is re-run elsewhere (up to
``distributed.scheduler.allowed-failures``); a half-written item never becomes visible (it is
a temporary directory), and an item finished twice (a slow worker that was presumed lost)
is kept once. ``--out`` must be a filesystem every worker sees (one machine, NFS, a mounted
bucket).
"""

from __future__ import annotations

import logging

import rasterio
from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from .errors import ConfigError
from .pipeline import (
    Run, RunSummary, _remove_if_empty, describe_run, embed_series, finish_catalog, load_embedder,
    output_dirs, reader_scheduler,
)

log = logging.getLogger("stacembed")

PLUGIN = "stacembed-embedder"


class EmbedderPlugin(WorkerPlugin):
    """Builds the run's model once per worker process."""

    name = PLUGIN

    def __init__(self, prepared: Run) -> None:
        self.prepared = prepared
        self.embedder = None

    def setup(self, worker) -> None:
        self.embedder, _ = load_embedder(self.prepared)

    def teardown(self, worker) -> None:
        self.embedder = None


def embed_on_cluster(prepared: Run) -> RunSummary:
    """Embed ``prepared``'s items on the cluster the config names; returns the run summary."""
    config = prepared.config
    client, cluster = _connect(config.dask_address, config.workers, config.threads)
    try:
        embedder, weights = load_embedder(prepared, device="cpu")  # checks the run on the client
        provenance = describe_run(prepared, embedder, weights)
        prepared.batch_size = config.batch_size or prepared.batch_size
        del embedder
        created = output_dirs(prepared)
        summary = RunSummary(config.out, None, prepared.collection_id)
        try:
            client.register_plugin(EmbedderPlugin(prepared), name=PLUGIN)
            futures = [
                client.submit(_embed_task, prepared, index, provenance, key=f"stacembed-{index}-{series.id}",
                              pure=False)
                for index, series in enumerate(prepared.series)
            ]
            for series, chips in zip(prepared.series, client.gather(futures)):
                summary.record(series.id, chips)
        finally:
            _remove_if_empty(*created)
        return finish_catalog(prepared, provenance, summary)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _embed_task(prepared: Run, index: int, provenance) -> int | None:
    """On a worker: embed series ``index`` with the worker's model; reads stay in this task."""
    embedder = get_worker().plugins[PLUGIN].embedder
    options = prepared.search.access.gdal_options()
    # Inside a task, dask arrays must compute here, not be sent back to the cluster.
    with rasterio.Env(**options), reader_scheduler(prepared.config.reader_threads):
        return embed_series(prepared, prepared.series[index], embedder, provenance)


def _connect(address: str | None, workers: int | None, threads: int | None) -> tuple[Client, LocalCluster | None]:
    if address:
        try:
            return Client(address, timeout="30s"), None
        except OSError as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads or 1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster
