"""What a run embeds, with which parameters, and the work on one series: the unit every executor runs.

- ``Inputs`` is what ``Inputs.resolve`` finds before any model is built: the card, the items
  and their bands, the series to embed, the output collection and the chip geometry (chip
  size and stride, decided here once). A dry run stops here. With several modalities (a card
  with several inputs), each series is a location of the primary modality paired with the
  other modalities' items (``resolve.modalities``, ``temporal.pair_modalities``), and its
  ``ItemPlan`` says what each modality contributes to a chip (``readers.modal``).
- ``Run`` freezes everything else before any pixel is read: the batch size (on CUDA, probed
  with the run's real chip shape), how the outputs are made (``catalog.Provenance``) and where
  they go (``layout.OutputLayout``). Executors receive a ``Run`` and never change it.
- ``embed_series`` (read -> embed -> write one output item), ``embedded_batches`` and
  ``write_item`` are the steps executors combine: a local loop calls ``embed_series``; a
  cluster splits large items into ``embedded_batches`` of chip rows and merges them with
  ``write_item``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from tqdm import tqdm

from .bands import match_bands
from .catalog import Provenance, output_item
from .chips import ChipBatch, ChipGrid, check_patch_tiling, chip_bytes
from .config import RunConfig
from .embed import Embedder, configure_threads, default_prefetch, default_streams, select_device, tune
from .errors import BandError, ResolveError
from .feed import FeedSpec, feed
from .grid import Grid, bands_at_resolution, native_grid, target_grid
from .layout import OutputLayout, safe_name, write_json
from .models import ModelCard, resolve_card
from .models.weights import resolve_weights, weights_sha256
from .readers import Reader
from .readers.modal import ModalityRead, ModalReader, describe_resampling
from .resolve import Search
from .resolve.cubes import sample_key, states_db
from .resolve.modalities import Modality, card_modalities, companion_search, primary_search
from .temporal import Acquisition, Series, build_series, chip_context, pair_modalities
from .writers import EmbeddingLayout, SourceInfo, open_writer

log = logging.getLogger("stacembed")


# A card property: the model takes each band's centre wavelength (wavelength-aware models, DOFA).
WAVELENGTHS_FIELD = "stacembed:wavelengths"


@dataclass(frozen=True)
class ItemPlan:
    """One series of source items (usually one item) and the chip grid it will be cut into.

    ``reads``: with several modalities (or a dB conversion), what each of the card's inputs
    contributes to a chip, in the card's order (``readers.modal``); empty for a run as before.
    """

    series: Series
    chip_grid: ChipGrid
    source_grid: Grid
    reads: tuple[ModalityRead, ...] = ()

    @property
    def modalities(self) -> list[str]:
        """The card inputs that have pixels here (the primary, and the others found for it)."""
        return used_modalities(self.reads)

    @property
    def wavelengths(self) -> tuple[float | None, ...]:
        """Each chip band's centre wavelength in micrometres, in the card's order (``band_wavelengths``)."""
        return band_wavelengths(self.series, self.reads)


def used_modalities(reads: tuple[ModalityRead, ...]) -> list[str]:
    """The inputs of ``reads`` that have pixels (the primary, and the others found for it)."""
    return [read.name for read in reads if read.primary or read.sources]


def band_wavelengths(series: Series, reads: tuple[ModalityRead, ...] = ()) -> tuple[float | None, ...]:
    """Each chip band's centre wavelength in micrometres (``eo:center_wavelength`` of the items
    read: the primary's first acquisition, another modality's nearest item), in the card's order;
    None where STAC states none or the modality has no item at this location."""
    primary = series.acquisitions[0].bands
    if not reads:
        return tuple(band.wavelength for band in primary)
    found: list[float | None] = []
    for read in reads:
        if read.primary or read.sources:
            found += [band.wavelength for band in (primary if read.primary else read.sources[0][1])]
        else:
            found += [None] * len(read.bands)
    return tuple(found)


@dataclass(frozen=True)
class ModalFeedSpec(FeedSpec):
    """A ``FeedSpec`` whose reader adds the other modalities, warped onto the chip grid
    (``readers.modal.ModalReader`` around the primary's reader)."""

    reads: tuple[ModalityRead, ...] = ()

    def open(self) -> Reader:
        return ModalReader(super().open(), self.reads, self.chip_grid.grid)

    @property
    def batch_bytes(self) -> int:
        bands = sum(len(read.bands) for read in self.reads)
        return self.batch_size * chip_bytes(bands * len(self.series), self.chip_grid.size)


@dataclass(frozen=True)
class Inputs:
    """The resolved inputs of a run: everything that can fail cheaply, checked before a model is built."""

    config: RunConfig
    card: ModelCard
    search: Search
    series: tuple[Series, ...]
    chip_size: int
    stride: int
    modalities: tuple[Modality, ...] = ()  # the card's inputs, when it has several (or one read as dB)

    @classmethod
    def resolve(cls, config: RunConfig) -> Inputs:
        """Resolve the model card and the items, match bands, group series, fix the chip geometry."""
        card = resolve_card(config.model)
        modalities = card_modalities(card, config)
        primary = next((m for m in modalities if m.primary), None)
        search = Search.from_config(config) if primary is None else primary_search(config, primary)
        bands = list(card.bands) if primary is None else list(primary.bands)
        items = search.items_found()
        matched = [(item, match_bands(item, bands, search.band_aliases, search.rules_for(item))) for item in items]
        modalities = tuple(_in_db(m, matched) if m.primary else m for m in modalities)
        with rasterio.Env(**search.access.gdal_options()):
            series = build_series(matched, config.time_steps, explicit=bool(config.crs or config.resolution))
        if primary is not None:
            series, modalities = _pair(config, search, series, modalities)
        chip_size = card.chip_size(config.chip_size)
        inputs = cls(config, card, search, tuple(series), chip_size, config.stride or chip_size, modalities)
        inputs = replace(inputs, series=inputs.unique_series())
        inputs.check_wavelengths()
        return inputs

    @property
    def wants_wavelengths(self) -> bool:
        """Whether the card says its model takes the bands' wavelengths (``stacembed:wavelengths``)."""
        return bool(self.card.item.get("properties", {}).get(WAVELENGTHS_FIELD)) if self.card.item else False

    def check_wavelengths(self) -> None:
        """A card that takes the bands' wavelengths needs them stated for every band it reads."""
        if not self.wants_wavelengths:
            return
        for series in self.series:
            reads = self.reads_of(series) if self.modalities else ()
            present = [True] * len(self.card.bands) if not reads else [
                bool(read.primary or read.sources) for read in reads for _ in read.bands]
            missing = [band for band, wavelength, there in
                       zip(self.card.bands, band_wavelengths(series, reads), present, strict=True)
                       if wavelength is None and there]
            if missing:
                raise BandError(f"model {self.card.name} takes each band's centre wavelength, and item "
                                f"{series.id!r} states none for band {', '.join(missing)} (eo:center_wavelength)")

    def reads_of(self, series: Series) -> tuple[ModalityRead, ...]:
        """What each of the card's inputs contributes to ``series``' chips (``readers.modal``)."""
        reads = []
        for modality in self.modalities:
            if modality.primary:
                reads.append(ModalityRead(modality.name, modality.bands, sar_db=modality.sar_db, primary=True))
                continue
            companion = series.companion(modality.name)
            sources = tuple((a.item, tuple(a.bands)) for a in companion.acquisitions) if companion else ()
            reads.append(ModalityRead(modality.name, modality.bands, sources, modality.methods,
                                      sar_db=modality.sar_db, required=not modality.optional))
        return tuple(reads)

    def modal_parameters(self) -> dict[str, Any]:
        """What shapes a run of several modalities, for ``emb:runtime_parameters`` ({} for a run as before)."""
        if not self.modalities:
            return {}
        used = [m for m in self.modalities if not m.primary and m.collection is not None]
        return {
            "primary_modality": next(m.name for m in self.modalities if m.primary),
            "modality_collections": {m.name: m.collection for m in self.modalities},
            "modality_resampling": {m.name: describe_resampling(ModalityRead(m.name, m.bands, resampling=m.methods))
                                    for m in used} or None,
            "sar_db": [m.name for m in self.modalities if m.sar_db],
            "max_time_gap": self.config.max_time_gap if used else None,
        }

    def output_collection(self, series: Series) -> str:
        """The output collection of ``series``: ``--output-collection``, else one per source
        collection (``<source collection>-<model>``), so that items are unique per (collection, id)."""
        source = series.items[0].collection_id or "items"
        return self.config.output_collection or safe_name(f"{source}-{self.card.name}")

    @property
    def collection_ids(self) -> list[str]:
        """The output collections, in the order of the series."""
        return list(dict.fromkeys(self.output_collection(s) for s in self.series))

    def unique_series(self) -> tuple[Series, ...]:
        """The series, each writing its own output item (output collection, id).

        An item listed twice by its source is embedded once (with a warning); items of the same
        id from several source collections put in one ``--output-collection`` are an error, not
        one of them silently dropped.
        """
        seen: dict[tuple[str, str], Series] = {}
        for series in self.series:
            key = (self.output_collection(series), series.id)
            first = seen.setdefault(key, series)
            if first is series:
                continue
            sources = sorted({str(s.items[0].collection_id) for s in (first, series)})
            if len(sources) > 1:
                raise ResolveError(f"items {series.id!r} of collections {' and '.join(sources)} would be one item of "
                                   f"output collection {key[0]!r}; drop --output-collection to get one output "
                                   "collection per source collection")
            log.warning("item %r of collection %s is listed twice; embedding it once", series.id, sources[0])
        return tuple(seen.values())

    def plan_item(self, series: Series) -> ItemPlan:
        """The chip grid of ``series``: on its first item's native grid, or the one
        ``--crs``/``--resolution`` ask for. With ``--resolution``, bands of a multiscale Zarr
        store are read at the store's own level of that resolution (``grid.bands_at_resolution``)."""
        explicit = bool(self.config.crs or self.config.resolution)
        if self.config.resolution and any(band.format for a in series.acquisitions for band in a.bands):
            series = replace(series, acquisitions=tuple(
                Acquisition(a.item, bands_at_resolution(a.bands, self.config.resolution))
                for a in series.acquisitions))
        first = series.acquisitions[0]
        grid = native_grid(first.item, first.bands, explicit=explicit)
        target = grid
        if explicit:
            target = target_grid(grid, self.config.crs, self.config.resolution)
        if self.modalities and not grid.placed and sample_key(first.item) is None:
            raise BandError(f"item {series.id!r} has no georeferencing, and the model's other inputs are "
                            "warped onto its grid by place: give its asset proj:code and proj:transform")
        reads = self.reads_of(series) if self.modalities else ()
        return ItemPlan(series, ChipGrid(target, self.chip_size, self.stride), grid, reads)

    def feed_spec(self, plan: ItemPlan, batch_size: int, rows: range | None = None) -> FeedSpec:
        """How to read ``plan``'s chips (or chip rows ``rows``) in batches of ``batch_size``, for ``feed``."""
        config = self.config
        options = dict(
            batch_size=batch_size, min_valid=config.min_valid, loader=config.loader,
            resampling=config.resampling, gdal_options=self.search.access.gdal_options(),
            reader_threads=config.reader_threads, rows=rows,
        )
        series = [(a.item, a.bands) for a in plan.series.acquisitions]
        if plan.reads:
            return ModalFeedSpec(series, plan.chip_grid, plan.source_grid, **options, reads=plan.reads)
        return FeedSpec(series, plan.chip_grid, plan.source_grid, **options)

    def load_embedder(self, device: str | None = None, threads: int | None = None,
                      streams: int | None = None) -> tuple[Embedder, Path | None]:
        """The run's model, ready for inference, and the weights file it was loaded from.

        ``device``, ``threads`` and ``streams`` override the config's (a cluster worker's share of the cores).
        """
        config = self.config
        weights = resolve_weights(self.card, config.weights, offline=config.offline)
        if weights is not None:
            weights_sha256(weights)  # hashed for the provenance while the model is built
        target = select_device(device or config.device)
        threads = threads or config.threads
        given = bool(threads or streams or config.streams or config.compile)  # else measured: ``calibration``
        streams = streams or config.streams or default_streams(target, threads, config.compile)
        configure_threads(threads, config.reader_threads, streams)
        embedder = Embedder.from_card(
            self.card, weights, target, pooling=config.pooling, layer=config.layer, chip_size=self.chip_size,
            time_steps=config.time_steps, precision=config.precision, compile=config.compile, streams=streams,
        )
        tune(embedder, weights, fixed=given, reader_threads=config.reader_threads, batch_size=config.batch_size)
        return embedder, weights


@dataclass(frozen=True)
class Run:
    """A run's inputs and parameters, frozen before any pixel is read; what executors are given."""

    inputs: Inputs
    batch_size: int
    provenance: Provenance
    layouts: dict[str, OutputLayout]  # by output collection id
    wavelengths: bool = False  # record each item's band wavelengths (the model takes them)

    @classmethod
    def freeze(cls, inputs: Inputs, embedder: Embedder, weights: Path | None) -> Run:
        """Fix the batch size (``--batch-size``, else what the embedder's device holds), what the
        outputs will be and how they are made; checked up front, not after the first item."""
        config, card = inputs.config, inputs.card
        embedding = EmbeddingLayout(embedder.dimensions, embedder.output_shape[1:] if embedder.dense else None,
                                    config.dtype, config.quantization)
        if embedding.dense:
            check_patch_tiling(inputs.chip_size, inputs.stride, embedding.patches)
        provenance = Provenance(
            card=card,
            embedding=embedding,
            pretrained=weights is not None and card.pretrained,
            weights_sha256=weights_sha256(weights).result() if weights else None,
            chip_grid_size=inputs.chip_size,
            stride=inputs.stride,
            parameters={**config.runtime_parameters(), "chip_size": inputs.chip_size, "stride": inputs.stride,
                        **inputs.modal_parameters()},
        )
        batch_size = config.batch_size or embedder.auto_batch_size()
        layouts = {cid: OutputLayout(config.out, cid) for cid in inputs.collection_ids}
        wavelengths = inputs.wants_wavelengths or "wavelengths" in embedder.context_inputs
        return cls(inputs, batch_size, provenance, layouts, wavelengths)

    @property
    def config(self) -> RunConfig:
        return self.inputs.config

    def layout_of(self, series: Series) -> OutputLayout:
        """Where ``series``' output item goes: its output collection's layout."""
        return self.layouts[self.inputs.output_collection(series)]

    def provenance_of(self, series: Series) -> Provenance:
        """The run's provenance with what is ``series``' own: the modalities that had pixels there,
        and its bands' wavelengths when the model takes them."""
        extra: dict[str, Any] = {}
        reads = self.inputs.reads_of(series) if self.inputs.modalities else ()
        if self.inputs.modalities:
            extra["modalities"] = used_modalities(reads)
        if self.wavelengths:
            extra["wavelengths"] = list(band_wavelengths(series, reads))
        if not extra:
            return self.provenance
        return replace(self.provenance, parameters={**self.provenance.parameters, **extra})

    def finished(self, series: Series) -> bool:
        """Whether ``series``' item is on disk, whole, from an earlier run with the same parameters
        (``--verify``: checksums too; a damaged item is embedded again)."""
        return self.layout_of(series).resumable(series.id, self.provenance_of(series).runtime_parameters(),
                                                verify=self.config.verify)


def embed_series(run: Run, series: Series, embedder: Embedder, show: bool = False, *,
                 after_first_batch: Callable[[], None] | None = None) -> int | None:
    """Embed one series into its output item; None when it was finished already.
    ``after_first_batch``: see ``write_item``."""
    if run.finished(series):
        return None
    plan = run.inputs.plan_item(series)
    return write_item(run, plan, embedded_batches(run, plan, embedder), show, after_first_batch=after_first_batch)


def embedded_batches(run: Run, plan: ItemPlan, embedder: Embedder,
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
        context = chip_context(embedder.context_inputs, plan.series, plan.chip_grid, batch.chips, plan.wavelengths)
        return batch, embedder(batch.pixels, context)

    spec = run.inputs.feed_spec(plan, run.batch_size, rows)
    with closing(feed(spec, depth)) as batches:
        yield from embedder.map(embed, batches, ahead=spec.ahead)


def write_item(run: Run, plan: ItemPlan, batches: Iterable[tuple[ChipBatch, np.ndarray]],
               show: bool = False, *, after_first_batch: Callable[[], None] | None = None) -> int | None:
    """Write the embedded ``batches`` of one series as its output item (atomically); returns the
    chips written, or None when another process finished the same item first and its copy stood.

    ``after_first_batch`` is called once the first batch is written, while the model works on
    the next ones: work the caller needs done later costs less there than after the last batch.
    """
    formats, item_id, layout = run.config.formats, plan.series.id, run.layout_of(plan.series)
    provenance = run.provenance_of(plan.series)
    with layout.writing_item(item_id, provenance.runtime_parameters()) as staging, ExitStack() as opened:
        files = {fmt: staging.path / layout.asset_name(item_id, fmt) for fmt in formats}
        source = SourceInfo.from_items(plan.series.items, item_id)
        writers = []
        for fmt in formats:
            writers.append(open_writer(fmt, files[fmt], plan.chip_grid, source, run.provenance.embedding))
            opened.callback(writers[-1].abort)  # on the way out: nothing left open, whatever happened
        chips = 0
        with tqdm(total=len(plan.chip_grid), desc=item_id, unit="chip", leave=False, disable=not show) as bar:
            for batch, embeddings in batches:
                for writer in writers:
                    writer.write(batch, embeddings)
                if not chips and after_first_batch is not None:
                    after_first_batch()
                chips += len(batch.chips)
                bar.update(len(batch.chips))
        properties: dict = {}
        for writer in writers:
            properties.update(writer.close())
        item = output_item(
            plan.series.items, item_id=item_id, layout=layout, files=files, formats=formats,
            chip_grid=plan.chip_grid, provenance=provenance, properties=properties,
            keep_href_query=run.config.keep_href_query, companions=plan.series.sources[len(plan.series.items):],
        )
        write_json(staging.path / layout.item_file(item_id).name, item)
    if not staging.kept:
        return None
    log.info("item %s: %d chips embedded", item_id, chips)
    return chips


def _pair(config: RunConfig, search: Search, series: list[Series],
          modalities: tuple[Modality, ...]) -> tuple[list[Series], tuple[Modality, ...]]:
    """Each location (primary series) with its items of the other modalities, and the modalities
    with their collections as the sources name them and each band's resampling decided."""
    found: dict[str, list] = {}
    describe: dict[str, str] = {}
    done = []
    for modality in modalities:
        if modality.primary:
            collections = search.filter.collections
            done.append(replace(modality, collection=collections[0] if len(collections) == 1 else modality.collection))
            continue
        if modality.collection is None:
            log.info("input %s of the model is left out: no collection serves it (it is optional)", modality.name)
            done.append(modality)
            continue
        other = companion_search(config, modality, [s.items[0] for s in series])
        collection = other.filter.collections[0]
        try:
            items = other.items_found()
        except ResolveError as exc:
            if modality.named:
                raise ResolveError(f"input {modality.name}: {exc}") from None
            log.warning("input %s: %s; it is left out", modality.name, exc)
            items = []
        matched = [(item, match_bands(item, list(modality.bands), other.band_aliases, other.rules_for(item)))
                   for item in items]
        found[modality.name] = matched
        describe[modality.name] = f"collection {collection}"
        done.append(_in_db(replace(modality, collection=collection, methods=_methods(modality, matched)), matched))
    if found:
        series = pair_modalities(series, found, static={m.name for m in modalities if m.static},
                                 optional={m.name for m in modalities if m.optional},
                                 max_gap=config.time_gap_seconds, gap_text=config.max_time_gap, describe=describe)
    return series, tuple(done)


def _in_db(modality: Modality, matched: list) -> Modality:
    """``modality`` without its dB conversion (``stacembed:sar_db``) when every item found states its
    bands in dB already (``unit``; sample cubes' S1 bands): 10·log10 of decibels is no measurement."""
    if not modality.sar_db or not matched or not all(states_db(item, bands) for item, bands in matched):
        return modality
    log.info("input %s: its items state their bands in dB already; they are not converted to dB again",
             modality.name)
    return replace(modality, sar_db=False)


def _methods(modality: Modality, matched: list) -> tuple[str, ...]:
    """How each of the modality's bands is resampled onto the primary's grid: as asked
    (``--modality-resampling``, the card's ``stacembed:resampling``), else ``nearest`` for a band
    of classes (``classification:*`` in its metadata) and ``bilinear`` for any other."""
    if modality.resampling:
        return (modality.resampling,) * len(modality.bands)
    if not matched:
        return ("bilinear",) * len(modality.bands)
    return tuple("nearest" if band.categorical else "bilinear" for band in matched[0][1])
