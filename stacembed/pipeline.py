"""``run(config)``: resolve -> stack -> chips -> embed -> write -> publish, item by item.

Each source item's outputs are written into a temporary directory and renamed into place
when complete, so an item is either fully there or absent. A rerun into the same ``--out``
skips finished items (after checking they were made with the same parameters) and never
duplicates one. The catalog is written last, from every finished item on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pystac
import rasterio
from tqdm import tqdm

from .access import redact
from .bands import match_bands
from .chips import ChipBatch, ChipGrid, check_patch_tiling
from .config import RunConfig
from .concurrency import ordered_map
from .embed import Embedder, configure_threads, default_prefetch, default_streams, select_device
from .errors import OutputError
from .feed import FeedSpec, feed
from .grid import Grid
from .models import ModelCard, resolve_card
from .models.weights import file_sha256, resolve_weights
from .publish import (
    SUFFIXES, Provenance, canonical_href, item_dir_name, model_card_href, output_item, write_catalog, write_json,
    write_model_card,
)
from .resolve import Search
from .stack import native_grid, target_grid
from .temporal import Series, build_series, chip_context
from .writers import Layout, SourceInfo, open_writer

log = logging.getLogger("stacembed")


@dataclass
class ItemPlan:
    """One series of source items (usually one item) and the chip grid it will be cut into."""

    series: Series
    chip_grid: ChipGrid
    source_grid: Grid


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

    def record(self, item_id: str, chips: int | None) -> None:
        """Count an item as embedded (``chips``) or as found finished already (None)."""
        if chips is None:
            self.items_resumed.append(item_id)
        else:
            self.chips += chips
            self.items_done.append(item_id)


@dataclass
class Run:
    """The resolved inputs of a run, before any pixel is read."""

    config: RunConfig
    card: ModelCard
    search: Search
    series: list[Series]
    collection_id: str
    chip_size: int
    stride: int
    batch_size: int = 16

    def plan_item(self, series: Series) -> ItemPlan:
        first = series.acquisitions[0]
        grid = native_grid(first.item, first.bands)
        target = grid
        if self.config.crs or self.config.resolution:
            target = target_grid(grid, self.config.crs, self.config.resolution)
        return ItemPlan(series, ChipGrid(target, self.chip_size, self.stride), grid)

    def feed_spec(self, plan: ItemPlan, rows: range | None = None) -> FeedSpec:
        """How to read ``plan``'s chips (or chip rows ``rows``), for ``feed``."""
        config = self.config
        return FeedSpec(
            [(a.item, a.bands) for a in plan.series.acquisitions], plan.chip_grid, plan.source_grid,
            batch_size=self.batch_size, min_valid=config.min_valid, loader=config.loader,
            resampling=config.resampling, gdal_options=self.search.access.gdal_options(),
            reader_threads=config.reader_threads, rows=rows,
        )


def prepare(config: RunConfig) -> Run:
    """Resolve the model card and the items and match bands: everything that can fail cheaply."""
    card = resolve_card(config.model)
    search = Search.from_config(config)
    items = search.items_found()
    matched = [(item, match_bands(item, list(card.bands), search.band_aliases, search.rules_for(item)))
               for item in items]
    with rasterio.Env(**search.access.gdal_options()):
        series = build_series(matched, config.time_steps)
    chip_size = config.chip_size or card.input_size[0]
    source_collection = items[0].collection_id or "items"
    collection_id = config.output_collection or item_dir_name(f"{source_collection}-{card.name}")
    return Run(config, card, search, series, collection_id, chip_size, config.stride or chip_size,
               config.batch_size or 16)


def plan(config: RunConfig) -> dict:
    """What a run would do (items, chips, output size), without running the model."""
    prepared = prepare(config)
    rows, total_chips = [], 0
    with rasterio.Env(**prepared.search.access.gdal_options()):
        for series in prepared.series:
            chip_grid = prepared.plan_item(series).chip_grid
            rows.append({"id": series.id, "chips": len(chip_grid), "grid": f"{chip_grid.rows}x{chip_grid.cols}"})
            total_chips += len(chip_grid)
    bytes_per_chip = prepared.card.embedding_size * {"float32": 4, "float16": 2, "int8": 1}[config.dtype] * len(config.formats)
    return {
        "source": prepared.search.source,
        "model": prepared.card.name,
        "bands": list(prepared.card.bands),
        "chip_size": prepared.chip_size,
        "stride": prepared.stride,
        "collection": prepared.collection_id,
        "items": rows,
        "chips": total_chips,
        "estimated_bytes": total_chips * bytes_per_chip,
    }


def run(config: RunConfig) -> RunSummary:
    """Embed every matched item and publish the result as a STAC catalog under ``config.out``.

    With ``config.dask_address`` or ``config.workers``, items are embedded on a dask.distributed
    cluster (see ``distributed``). With ``config.publish``, the finished catalog is also sent to
    that STAC API.
    """
    prepared = prepare(config)
    if config.dask_address or config.workers:
        from .distributed import embed_on_cluster

        summary = embed_on_cluster(prepared)
    else:
        with rasterio.Env(**prepared.search.access.gdal_options()), short_switch_interval():
            summary = _embed_all(prepared)
    if config.publish:
        from .transactions import publish_catalog

        summary.published = publish_catalog(
            summary.catalog, config.publish, asset_base_href=config.asset_base_href,
            access=prepared.search.access,
        )
    return summary


@contextmanager
def short_switch_interval(seconds: float = 0.0002) -> Iterator[None]:
    """Let the reader thread and the model hand the GIL over quickly during a run.

    With Python's default 5 ms switch interval, each call the model makes into Python while the
    reader holds the GIL waits up to 5 ms (measured: the model ran at half speed next to the
    reader). Restored afterwards.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def load_embedder(prepared: Run, device: str | None = None, threads: int | None = None,
                  streams: int | None = None) -> tuple[Embedder, Path | None]:
    """The run's model, ready for inference, and the weights file it was loaded from.

    ``threads`` and ``streams`` override the config's (a cluster worker's share of the cores).
    """
    config = prepared.config
    weights = resolve_weights(prepared.card, config.weights, offline=config.offline)
    target = select_device(device or config.device)
    threads = threads or config.threads
    streams = streams or config.streams or default_streams(target, threads, config.compile)
    configure_threads(threads, config.reader_threads, streams)
    embedder = Embedder.from_card(
        prepared.card, weights, target, pooling=config.pooling, layer=config.layer, chip_size=prepared.chip_size,
        time_steps=config.time_steps, precision=config.precision, compile=config.compile, streams=streams,
    )
    return embedder, weights


def describe_run(prepared: Run, embedder: Embedder, weights: Path | None) -> Provenance:
    """What the outputs will be (layout) and how they are made (provenance); checked up front."""
    config, card = prepared.config, prepared.card
    layout = Layout(embedder.dimensions, embedder.output_shape[1:] if embedder.dense else None,
                    config.dtype, config.quantization)
    if layout.dense:  # fail before any item is read, not after the first one
        check_patch_tiling(prepared.chip_size, prepared.stride, layout.patches)
    return Provenance(
        card=card,
        layout=layout,
        pretrained=weights is not None and card.pretrained,
        weights_sha256=file_sha256(weights) if weights else None,
        chip_grid_size=prepared.chip_size,
        stride=prepared.stride,
        parameters={**config.runtime_parameters(), "chip_size": prepared.chip_size, "stride": prepared.stride},
    )


def embed_series(prepared: Run, series: Series, embedder: Embedder, provenance: Provenance,
                 show: bool = False) -> int | None:
    """Embed one series into its output item directory; None when it was already there."""
    final = item_path(prepared, series)
    if finished(final, provenance):
        return None
    plan = prepared.plan_item(series)
    return write_item(plan, prepared, provenance, final, embedded_batches(plan, prepared, embedder), show)


def item_path(prepared: Run, series: Series) -> Path:
    """The directory of ``series``' output item."""
    return prepared.config.out / prepared.collection_id / item_dir_name(series.id)


def embedded_batches(plan: ItemPlan, run: Run, embedder: Embedder,
                     rows: range | None = None) -> Iterator[tuple[ChipBatch, np.ndarray]]:
    """``(batch, embeddings)`` of the item's chips (or of chip rows ``rows``), in row order.

    The model works on ``embedder.streams`` batches at once, while this thread reads the next
    ones, ``FeedSpec.ahead`` of them queued (or a thread reads ``--prefetch`` batches ahead;
    see ``feed``).
    """
    depth = run.config.prefetch
    if depth is None:
        depth = default_prefetch(embedder.device, embedder.streams)

    def embed(batch: ChipBatch) -> tuple[ChipBatch, np.ndarray]:
        context = chip_context(embedder.context_inputs, plan.series, plan.chip_grid, batch.chips)
        return batch, embedder(batch.pixels, context)

    spec = run.feed_spec(plan, rows)
    with closing(feed(spec, depth)) as batches:
        yield from ordered_map(embed, batches, embedder.streams, ahead=spec.ahead)


def output_dirs(prepared: Run) -> list[Path]:
    """Create the output directories; returns those that did not exist (removed again on failure)."""
    config = prepared.config
    created = [d for d in (config.out / prepared.collection_id, config.out) if not d.exists()]
    _prepare_out(config.out, prepared.collection_id)
    return created


def finish_catalog(prepared: Run, provenance: Provenance, summary: RunSummary) -> RunSummary:
    """Write the model card copy, the collection and the catalog from every finished item (last)."""
    config, card = prepared.config, prepared.card
    coll_dir = config.out / prepared.collection_id
    write_model_card(coll_dir, card)
    summary.catalog = write_catalog(
        config.out, prepared.collection_id, list(_finished_items(coll_dir)), provenance=provenance,
        source_href=_source_href(config, prepared),
        description=f"Embeddings of {prepared.series[0].items[0].collection_id or 'STAC items'} "
                    f"made with model {card.name} by stacembed.",
    )
    return summary


def _embed_all(prepared: Run) -> RunSummary:
    config = prepared.config
    embedder, weights = load_embedder(prepared)
    prepared.batch_size = config.batch_size or embedder.auto_batch_size()
    provenance = describe_run(prepared, embedder, weights)
    created = output_dirs(prepared)
    summary = RunSummary(config.out, None, prepared.collection_id, streams=embedder.streams)
    show = config.progress and sys.stderr.isatty()
    try:
        for series in tqdm(prepared.series, desc="items", unit="item", disable=not show):
            summary.record(series.id, embed_series(prepared, series, embedder, provenance, show))
    finally:
        _remove_if_empty(*created)
    return finish_catalog(prepared, provenance, summary)


def write_item(plan: ItemPlan, run: Run, provenance: Provenance, final: Path,
               batches: Iterable[tuple[ChipBatch, np.ndarray]], show: bool = False) -> int:
    """Write the embedded ``batches`` of one item as its output item at ``final`` (atomically)."""
    config = run.config
    name = final.name
    tmp = final.with_name(f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        chip_grid = plan.chip_grid
        source = SourceInfo.from_items(plan.series.items, plan.series.id)
        files = {fmt: tmp / f"{name}{SUFFIXES[fmt]}" for fmt in config.formats}
        writers = [open_writer(fmt, files[fmt], chip_grid, source, provenance.layout)
                   for fmt in config.formats]
        chips = 0
        with tqdm(total=len(chip_grid), desc=plan.series.id, unit="chip", leave=False, disable=not show) as bar:
            for batch, embeddings in batches:
                for writer in writers:
                    writer.write(batch, embeddings)
                chips += len(batch.chips)
                bar.update(len(batch.chips))
        properties: dict = {}
        for writer in writers:
            properties.update(writer.close())
        item = output_item(
            plan.series.items, item_id=plan.series.id, collection_id=run.collection_id, files=files, formats=config.formats,
            chip_grid=chip_grid, provenance=provenance, model_href=model_card_href(run.card), properties=properties,
        )
        item["links"] += [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ]
        write_json(tmp / f"{name}.json", item)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("item %s: %d chips embedded", plan.series.id, chips)
    return chips


def _move_into_place(tmp: Path, final: Path) -> None:
    """Atomic rename; if another worker finished the same item first, its copy stands and ours goes."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / f"{final.name}.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("item %s was finished by another worker; kept that copy", final.name)


def _prepare_out(out: Path, collection_id: str) -> Path:
    coll_dir = out / collection_id
    try:
        coll_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {coll_dir}: {exc.strerror}") from None
    for stale in coll_dir.glob(".tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return coll_dir


def _remove_if_empty(*dirs: Path) -> None:
    """Leave no empty directories we created behind a run that failed before finishing any item."""
    for directory in dirs:
        try:
            directory.rmdir()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished(final: Path, provenance: Provenance) -> bool:
    item_file = final / f"{final.name}.json"
    if not item_file.is_file():
        return False
    previous = json.loads(item_file.read_text())["properties"].get("emb:runtime_parameters", {})
    wanted = provenance.runtime_parameters()
    differing = sorted(k for k in wanted if k != "weights_sha256" and previous.get(k) != wanted[k])
    if previous.get("weights_sha256") != wanted["weights_sha256"]:
        differing.append("weights")
    if differing:
        raise OutputError(
            f"{final.parent} already holds item {final.name} made with other parameters "
            f"({', '.join(differing)}); use another --out or --output-collection"
        )
    return True


def _finished_items(coll_dir: Path) -> Iterator[dict]:
    for item_file in sorted(coll_dir.glob("*/*.json")):
        if item_file.parent.name.startswith(".") or item_file.parent.name == "model":
            continue
        if item_file.stem == item_file.parent.name:
            yield json.loads(item_file.read_text())


def _source_href(config: RunConfig, run: Run) -> str | None:
    first = run.series[0].items[0]
    collection = first.get_single_link("collection")
    if collection is not None and collection.get_absolute_href():
        source = _at_hand_collection(first, collection)
        return canonical_href(source) if source is not None else redact(collection.get_absolute_href())
    if run.search.api:
        return redact(run.search.api)
    href = config.items or config.catalog
    return str(Path(href).resolve()) if href and "://" not in href else href


def _at_hand_collection(item: pystac.Item, link: pystac.Link) -> pystac.Collection | None:
    """``item``'s collection when it is at hand (already read, or a local file), so that its
    ``canonical`` link counts (``publish.canonical_href``); a remote one is not fetched for this."""
    if not link.is_resolved() and "://" in link.get_absolute_href():
        return None
    try:
        return item.get_collection()
    except (OSError, ValueError, pystac.STACError):
        return None
