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
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pystac
import rasterio

from .access import redact
from .analysis.quicklook import update_quicklooks
from .catalog import canonical_href, write_collection, write_model_card, write_root_catalog
from .config import RunConfig
from .embed import Embedder
from .errors import OutputError
from .executors import Executor, executor_for
from .job import Inputs, Run
from .layout import OutputLayout, exclusive
from .temporal import Series

log = logging.getLogger("stacembed")

BYTES_PER_VALUE = {"float32": 4, "float16": 2, "int8": 1}


@dataclass
class RunSummary:
    out: Path
    catalog: Path | None
    collection_ids: list[str]
    items_done: list[str] = field(default_factory=list)
    items_resumed: list[str] = field(default_factory=list)
    chips: int = 0
    published: int = 0
    streams: int = 1  # forward passes that ran at once (``--streams``)
    first_batch_seconds: float | None = None  # from the call of ``run`` to the first embedded batch, in this process
    startup_seconds: float | None = None  # from this process's start to the call of ``run`` (Linux): imports
    threads: int | None = None  # torch threads per forward pass (CPU)
    batch_size: int | None = None  # chips per forward pass
    cpu_configuration: str | None = None  # how they were decided: given, default, cached, calibrated (``Tuning``)

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
            item_plan = inputs.plan_item(series)
            chip_grid = item_plan.chip_grid
            rows.append({"id": series.id, "chips": len(chip_grid), "grid": f"{chip_grid.rows}x{chip_grid.cols}"})
            if item_plan.reads:
                rows[-1]["modalities"] = {read.name: [item.id for item, _ in read.sources] if not read.primary
                                          else [i.id for i in series.items] for read in item_plan.reads}
            total_chips += len(chip_grid)
    bytes_per_chip = inputs.card.embedding_size * BYTES_PER_VALUE[config.dtype] * len(config.formats)
    return {
        "source": inputs.search.source,
        "model": inputs.card.name,
        "bands": list(inputs.card.bands),
        "chip_size": inputs.chip_size,
        "stride": inputs.stride,
        "collections": inputs.collection_ids,
        "collection_dirs": [OutputLayout(config.out, c).collection_dir for c in inputs.collection_ids]
        if config.out else [],
        "items": rows,
        "chips": total_chips,
        "estimated_bytes": total_chips * bytes_per_chip,
    }


def run(config: RunConfig, *, check: Callable[[Run], None] | None = None,
        ready: Callable[[], None] | None = None) -> RunSummary:
    """Embed every matched item and publish the result as a STAC catalog under ``config.out``.

    With ``config.dask_address`` or ``config.workers``, items are embedded on a dask.distributed
    cluster (see ``executors.cluster``). With ``config.publish``, the finished catalog is also
    sent to that STAC API. ``check`` sees the frozen run (model, parameters) before any pixel
    is read, and may refuse it: what comes after the run (``run --head``) fails early.
    ``ready`` is called when the start-up is over (items resolved, model built and checked),
    before any pixel is read.
    """
    started = time.perf_counter()
    startup = _process_age()
    inputs = Inputs.resolve(config)
    _check_inputs_survive(inputs)
    with exclusive(config.out), executor_for(config) as executor:
        embedder, weights = inputs.load_embedder(device=None if executor.embeds_here else "cpu")
        frozen = Run.freeze(inputs, embedder, weights)
        if check is not None:
            check(frozen)
        if ready is not None:
            ready()
        if not executor.embeds_here:
            embedder = None  # it only checked the run: free it before the workers build theirs
        summary = _embed(frozen, executor, embedder)
    summary.startup_seconds = startup
    if embedder is not None:
        _record_tuning(summary, embedder, frozen.batch_size)
    if embedder is not None and embedder.first_output_at is not None:
        summary.first_batch_seconds = embedder.first_output_at - started
        log.info("first batch embedded %.2f s after the run started%s", summary.first_batch_seconds,
                 f" ({startup + summary.first_batch_seconds:.2f} s after the process started)" if startup else "")
    if config.publish:
        from .publish import publish_catalog

        summary.published = publish_catalog(
            summary.catalog, config.publish, asset_base_href=config.asset_base_href,
            access=inputs.search.access,
        )
    return summary


def _embed(run: Run, executor: Executor, embedder: Embedder | None) -> RunSummary:
    """Embed every series into the output tree with ``executor``, then write the catalog."""
    created = [directory for layout in run.layouts.values() for directory in layout.create()]
    summary = RunSummary(run.config.out, None, list(run.layouts), streams=executor.streams(embedder))
    try:
        for series, chips in zip(run.inputs.series, executor.embed(run, embedder), strict=True):
            summary.record(series.id, chips)
    finally:
        OutputLayout.remove_if_empty(created)
    summary.catalog = finish_catalog(run)
    return summary


def finish_catalog(run: Run) -> Path:
    """Write each output collection (model card copy, quicklooks of its items, collection, items
    mirror) from its finished items, then the root catalog over every collection in ``--out`` (last).

    The quicklooks (``analysis.quicklook``) come after the items are finished and before the
    collection, which stores their PCA basis: each item's PNG and COG are written whole before
    its item JSON names them, and items whose quicklooks are up to date are left alone.
    """
    inputs = run.inputs
    for collection_id, layout in run.layouts.items():
        items = list(layout.finished_items())
        if not items:
            continue
        first = next(s for s in inputs.series if inputs.output_collection(s) == collection_id)
        write_model_card(layout, inputs.card)
        quicklooks = update_quicklooks(layout, items)
        write_collection(
            layout, quicklooks.items, provenance=run.provenance, source_href=_source_href(inputs, first),
            description=f"Embeddings of {first.items[0].collection_id or 'STAC items'} "
                        f"made with model {inputs.card.name} by stacembed.",
            properties=quicklooks.collection_properties(),
        )
    return write_root_catalog(run.config.out)


def _record_tuning(summary: RunSummary, embedder: Embedder, batch_size: int) -> None:
    """The CPU configuration the run ended with, and how it was decided, into ``summary`` and the
    log; elsewhere than on the CPU, only the batch size (``batch_size``, the run's)."""
    from .calibration import tuning_of

    tuning = tuning_of(embedder)
    if embedder.device.type != "cpu" or tuning is None:
        summary.batch_size = batch_size
        return
    measured = tuning.source in ("calibrated", "cached")  # a forward batch may be part of the feed's
    summary.streams, summary.threads = tuning.choice.streams, tuning.choice.threads
    summary.batch_size = tuning.choice.batch if measured else batch_size
    summary.cpu_configuration = tuning.source
    log.info("CPU configuration: %s", tuning.describe())


def _process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), else None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _check_inputs_survive(inputs: Inputs) -> None:
    """Refuse an ``--out`` whose outputs would overwrite an input (its catalog, items or assets)."""
    layouts = [OutputLayout(inputs.config.out, c) for c in inputs.collection_ids]
    for path in _local_inputs(inputs):
        if any(layout.writes(path) for layout in layouts):
            raise OutputError(f"--out {inputs.config.out} would overwrite the input {path}; choose another --out")


def _local_inputs(inputs: Inputs) -> Iterator[Path]:
    """The local files a run reads: the catalog or items file, item and collection JSON, assets."""
    hrefs = [inputs.config.catalog, inputs.config.items]
    for series in inputs.series:
        for acquisition in [*series.acquisitions, *(a for c in series.companions for a in c.acquisitions)]:
            item = acquisition.item
            collection = item.get_single_link("collection")
            hrefs += [item.get_self_href(), collection.get_absolute_href() if collection else None]
            hrefs += [band.href for band in acquisition.bands]
    for href in dict.fromkeys(h for h in hrefs if h):
        path = href.removeprefix("file://")
        if "://" not in path:
            yield Path(path).resolve()


def _source_href(inputs: Inputs, series: Series) -> str | None:
    """Where the source collection of ``series`` lives (``emb:source-data``), as outputs write hrefs."""
    keep = inputs.config.keep_href_query
    first = series.items[0]
    collection = first.get_single_link("collection")
    if collection is not None and collection.get_absolute_href():
        source = _at_hand_collection(first, collection)
        if source is not None:
            return canonical_href(source, keep_query=keep)
        return redact(collection.get_absolute_href(), keep_query=keep)
    if inputs.search.api:
        return redact(inputs.search.api, keep_query=keep)
    href = inputs.config.items or inputs.config.catalog
    if not href:
        return None
    return str(Path(href).resolve()) if "://" not in href else redact(href, keep_query=keep)


def _at_hand_collection(item: pystac.Item, link: pystac.Link) -> pystac.Collection | None:
    """``item``'s collection when it is at hand (already read, or a local file), so that its
    ``canonical`` link counts (``catalog.canonical_href``); a remote one is not fetched for this."""
    if not link.is_resolved() and "://" in link.get_absolute_href():
        return None
    try:
        return item.get_collection()
    except (OSError, ValueError, pystac.STACError):
        return None
