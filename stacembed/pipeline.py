"""``run(config)``: resolve -> stack -> chips -> embed -> write -> catalog -> publish.

``run`` owns the outline, once, whoever does the embedding: resolve the inputs
(``job.Inputs``), load the model and freeze the run's parameters (``job.Run``), create the
output tree (``layout.OutputLayout``), let an executor embed the series (this process, or a
dask.distributed cluster: ``executors``), then write the catalog from every finished item on
disk, and publish it when asked.

Each item's outputs are written into a temporary directory and renamed into place when
complete, so an item is either fully there or absent. A rerun into the same ``--out`` skips
finished items (after checking they were made with the same parameters) and never
duplicates one. The catalog is written last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pystac
import rasterio

from .access import redact
from .catalog import canonical_href, write_catalog, write_model_card
from .config import RunConfig
from .embed import Embedder
from .executors import Executor, executor_for
from .job import Inputs, Run
from .layout import OutputLayout

log = logging.getLogger("stacembed")

BYTES_PER_VALUE = {"float32": 4, "float16": 2, "int8": 1}


@dataclass
class RunSummary:
    out: Path
    catalog: Path | None
    collection_id: str
    items_done: list[str] = field(default_factory=list)
    items_resumed: list[str] = field(default_factory=list)
    chips: int = 0
    published: int = 0
    streams: int = 1  # forward passes that ran at once (``--streams``)
    first_batch_seconds: float | None = None  # from the call of ``run`` to the first embedded batch, in this process

    def record(self, item_id: str, chips: int | None) -> None:
        """Count an item as embedded (``chips``) or as found finished already (None)."""
        if chips is None:
            self.items_resumed.append(item_id)
        else:
            self.chips += chips
            self.items_done.append(item_id)


def plan(config: RunConfig) -> dict:
    """What a run would do (items, chips, output size), without running the model."""
    inputs = Inputs.resolve(config)
    rows, total_chips = [], 0
    with rasterio.Env(**inputs.search.access.gdal_options()):
        for series in inputs.series:
            chip_grid = inputs.plan_item(series).chip_grid
            rows.append({"id": series.id, "chips": len(chip_grid), "grid": f"{chip_grid.rows}x{chip_grid.cols}"})
            total_chips += len(chip_grid)
    bytes_per_chip = inputs.card.embedding_size * BYTES_PER_VALUE[config.dtype] * len(config.formats)
    return {
        "source": inputs.search.source,
        "model": inputs.card.name,
        "bands": list(inputs.card.bands),
        "chip_size": inputs.chip_size,
        "stride": inputs.stride,
        "collection": inputs.collection_id,
        "collection_dir": OutputLayout(config.out, inputs.collection_id).collection_dir if config.out else None,
        "items": rows,
        "chips": total_chips,
        "estimated_bytes": total_chips * bytes_per_chip,
    }


def run(config: RunConfig) -> RunSummary:
    """Embed every matched item and publish the result as a STAC catalog under ``config.out``.

    With ``config.dask_address`` or ``config.workers``, items are embedded on a dask.distributed
    cluster (see ``executors.cluster``). With ``config.publish``, the finished catalog is also
    sent to that STAC API.
    """
    started = time.perf_counter()
    inputs = Inputs.resolve(config)
    with executor_for(config) as executor:
        embedder, weights = inputs.load_embedder(device=None if executor.embeds_here else "cpu")
        frozen = Run.freeze(inputs, embedder, weights)
        if not executor.embeds_here:
            embedder = None  # it only checked the run: free it before the workers build theirs
        summary = _embed(frozen, executor, embedder)
    if embedder is not None and embedder.first_output_at is not None:
        summary.first_batch_seconds = embedder.first_output_at - started
        log.info("first batch embedded %.2f s after the run started", summary.first_batch_seconds)
    if config.publish:
        from .publish import publish_catalog

        summary.published = publish_catalog(
            summary.catalog, config.publish, asset_base_href=config.asset_base_href,
            access=inputs.search.access,
        )
    return summary


def _embed(run: Run, executor: Executor, embedder: Embedder | None) -> RunSummary:
    """Embed every series into the output tree with ``executor``, then write the catalog."""
    created = run.layout.create()
    summary = RunSummary(run.config.out, None, run.layout.collection_id, streams=executor.streams(embedder))
    try:
        for series, chips in zip(run.inputs.series, executor.embed(run, embedder), strict=True):
            summary.record(series.id, chips)
    finally:
        run.layout.remove_if_empty(created)
    summary.catalog = finish_catalog(run)
    return summary


def finish_catalog(run: Run) -> Path:
    """Write the model card copy, the collection and the catalog from every finished item (last)."""
    inputs = run.inputs
    write_model_card(run.layout, inputs.card)
    return write_catalog(
        run.layout, list(run.layout.finished_items()), provenance=run.provenance,
        source_href=_source_href(inputs),
        description=f"Embeddings of {inputs.series[0].items[0].collection_id or 'STAC items'} "
                    f"made with model {inputs.card.name} by stacembed.",
    )


def _source_href(inputs: Inputs) -> str | None:
    first = inputs.series[0].items[0]
    collection = first.get_single_link("collection")
    if collection is not None and collection.get_absolute_href():
        source = _at_hand_collection(first, collection)
        return canonical_href(source) if source is not None else redact(collection.get_absolute_href())
    if inputs.search.api:
        return redact(inputs.search.api)
    href = inputs.config.items or inputs.config.catalog
    return str(Path(href).resolve()) if href and "://" not in href else href


def _at_hand_collection(item: pystac.Item, link: pystac.Link) -> pystac.Collection | None:
    """``item``'s collection when it is at hand (already read, or a local file), so that its
    ``canonical`` link counts (``catalog.canonical_href``); a remote one is not fetched for this."""
    if not link.is_resolved() and "://" in link.get_absolute_href():
        return None
    try:
        return item.get_collection()
    except (OSError, ValueError, pystac.STACError):
        return None
