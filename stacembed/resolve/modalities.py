"""Several modalities in one run: which collection serves each of a model card's inputs, and the
searches that find their items.

A card may declare several inputs (``mlm:input``, one per modality: ``S2L2A``, ``S1GRD``,
``DEM``, ...). ``card_modalities`` turns them, with the run's options, into one ``Modality`` each,
in the card's order; ``()`` means a run as before (one input, read as it is). The **primary**
modality (the card's first input, or ``--primary``) says where the locations are: each of its
items is one location, on its own grid. The others are found near them (``companion_search``),
paired with each location in ``temporal.pair_modalities`` and warped onto its grid by
``readers.modal``.

Where an input's collection comes from, first match wins:

1. ``--modality NAME=COLLECTION``;
2. for the primary only, ``--collection`` (one);
3. the ``--catalog`` preset's collection that lists NAME in its ``modalities``;
4. none: an error for a required input, an input left out for an optional one.

Fields a card may set for this (README "Several modalities"):

- on an ``mlm:input`` entry: ``stacembed:optional`` (the model runs without this input),
  ``stacembed:static`` (ignores time, like a DEM; default true for inputs named DEM, DSM, DTM),
  ``stacembed:sar_db`` (the values are linear SAR backscatter; the model takes 10·log10 of them),
  ``stacembed:resampling`` (how another grid's pixels are brought onto the primary's:
  ``bilinear``, ``nearest``, ...);
- in the card's properties: ``stacembed:optional_inputs`` (a list of input names, the same as
  ``stacembed:optional`` on each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pystac
import shapely
import shapely.geometry

from ..errors import ConfigError, ModelError
from .filters import item_time_range
from .presets import find_preset

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..models import ModelCard
    from . import Search

STATIC_NAMES = frozenset({"DEM", "DSM", "DTM"})
CARD_FIELDS = ("stacembed:optional", "stacembed:static", "stacembed:sar_db", "stacembed:resampling")


@dataclass(frozen=True)
class Modality:
    """One of a card's inputs in a run: its bands, the collection that serves it, how it is read."""

    name: str  # the card's input name (mlm:input[].name)
    bands: tuple[str, ...]
    collection: str | None = None  # None: the primary of a one-input card (--collection as ever), or left out
    primary: bool = False
    optional: bool = False
    static: bool = False  # ignores time (DEM): any item that covers the location will do
    sar_db: bool = False  # linear backscatter -> 10·log10 (dB) before value scaling
    resampling: str | None = None  # asked for: --modality-resampling, else the card's stacembed:resampling
    named: bool = False  # the user named its collection (--modality / --collection), not a preset
    methods: tuple[str, ...] = ()  # per band, decided once its items are found (job: asked, else by metadata)

    @property
    def used(self) -> bool:
        """Whether the run reads this input at all (an optional input without a collection is left out)."""
        return self.primary or self.collection is not None


def card_modalities(card: ModelCard, config: RunConfig) -> tuple[Modality, ...]:
    """The card's inputs as this run reads them, in the card's order; ``()`` for a run as before
    (a card with one input, no dB conversion): nothing about it changes.

    Every option that names an input (``--modality``, ``--primary``, ``--modality-resampling``)
    must name one of the card's; a one-input card takes none of them, nor ``--max-time-gap``.
    """
    entries = _imagery_entries(card)
    inputs = card.inputs or ()
    names = [entry.name for entry in inputs]
    if len(names) <= 1 and (config.modalities or config.max_time_gap is not None or config.modality_resampling):
        flag = "--modality" if config.modalities else (
            "--max-time-gap" if config.max_time_gap is not None else "--modality-resampling")
        raise ConfigError(f"{flag} is for models with several inputs; model {card.name} has one "
                          f"({', '.join(names) or 'its bands'}): give its collection with --collection")
    flags = {"--modality": list(config.modalities), "--modality-resampling": list(config.modality_resampling),
             "--primary": [config.primary] if config.primary else []}
    for flag, given in flags.items():
        for name in given:
            if _find(names, name) is None:
                raise ConfigError(f"{flag} {name}: model {card.name} has no input {name!r} "
                                  f"(its inputs: {', '.join(names)})")
    sar = [bool(entry.get("stacembed:sar_db")) for entry in entries]
    if not names or (len(names) == 1 and not sar[0]):
        return ()
    optional = _optional_names(card, names)
    if len(inputs) > 1 and config.time_steps > 1:
        raise ConfigError(f"--time-steps {config.time_steps}: model {card.name} takes several inputs "
                          f"({', '.join(names)}), which are paired per location, not stacked in time")
    primary = names[_find(names, config.primary) if config.primary else 0]
    modalities = []
    for entry, card_input, db in zip(entries, inputs, sar, strict=True):
        name = card_input.name
        static = entry.get("stacembed:static")
        resampling = _given(config.modality_resampling, name) or entry.get("stacembed:resampling")
        if resampling is not None:
            _check_resampling(card, name, resampling)
        modalities.append(Modality(
            name=name, bands=tuple(card_input.bands), primary=name == primary,
            optional=name != primary and name in optional,
            static=bool(static) if static is not None else name.upper() in STATIC_NAMES,
            sar_db=db, resampling=resampling,
        ))
    if len(inputs) == 1:
        return tuple(modalities)
    return tuple(_with_collections(modalities, card, config))


def _imagery_entries(card: ModelCard) -> list[dict[str, Any]]:
    """The card's ``mlm:input`` entries with bands (one per ``card.inputs``), as written."""
    entries = card.item.get("properties", {}).get("mlm:input", []) if card.item else []
    found = [entry for entry in entries if isinstance(entry, dict) and entry.get("bands")]
    return found if len(found) == len(card.inputs) else [{} for _ in card.inputs]


def _optional_names(card: ModelCard, names: list[str]) -> set[str]:
    listed = card.item.get("properties", {}).get("stacembed:optional_inputs") or [] if card.item else []
    if not isinstance(listed, list):
        raise ModelError(f"model card {card.href}: stacembed:optional_inputs must be a list of input names")
    optional = set()
    for name in listed:
        index = _find(names, str(name))
        if index is None:
            raise ModelError(f"model card {card.href}: stacembed:optional_inputs names {name!r}, which is not one "
                             f"of its inputs ({', '.join(names)})")
        optional.add(names[index])
    for entry, name in zip(_imagery_entries(card), names, strict=True):
        if entry.get("stacembed:optional"):
            optional.add(name)
    return optional


def _check_resampling(card: ModelCard, name: str, method: Any) -> None:
    from ..config import RESAMPLING

    if method not in RESAMPLING:
        raise ConfigError(f"input {name} of model {card.name}: resampling {method!r} is not one of "
                          f"{', '.join(RESAMPLING)}")


def _with_collections(modalities: list[Modality], card: ModelCard, config: RunConfig) -> list[Modality]:
    """Each input with the collection that serves it (see the module's rules)."""
    preset = find_preset(config.catalog)
    done = []
    for modality in modalities:
        collection, named = _given(config.modalities, modality.name), True
        if collection is None and modality.primary and config.collections:
            if len(config.collections) > 1:
                raise ConfigError(f"model {card.name} takes several inputs: name each one's collection with "
                                  f"--modality NAME=COLLECTION (got --collection {','.join(config.collections)})")
            collection = config.collections[0]
        if collection is None and preset is not None:
            served = preset.collection_for(modality.name)
            collection, named = (served.id if served else None), False
        if collection is None and not modality.optional:
            raise ConfigError(
                f"model {card.name} takes input {modality.name} (bands {', '.join(modality.bands)}): name its "
                f"collection with --modality {modality.name}=COLLECTION"
                + ("" if not modality.primary else " or --collection"))
        done.append(replace(modality, collection=collection, named=named and collection is not None))
    if config.collections and any(m.primary and _given(config.modalities, m.name) for m in done):
        raise ConfigError("--collection and --modality both name the primary input's collection; give one")
    return done


def _find(names: Sequence[str], name: str | None) -> int | None:
    """Index of ``name`` among the card's input names (any case)."""
    if name is None:
        return None
    wanted = name.casefold()
    return next((i for i, known in enumerate(names) if known.casefold() == wanted), None)


def _given(options: Any, name: str) -> str | None:
    """The value an ``INPUT=VALUE`` option gives for input ``name`` (any case), if any."""
    wanted = name.casefold()
    return next((value for key, value in options.items() if key.casefold() == wanted), None)


# --- searches --------------------------------------------------------------------------------------

def primary_search(config: RunConfig, modality: Modality) -> Search:
    """The run's search (every filter given) asked of the primary input's collection."""
    from . import Search

    if modality.collection is None:
        return Search.from_config(config)
    return Search.from_config(replace(config, collections=(modality.collection,)))


def companion_search(config: RunConfig, modality: Modality, locations: Sequence[pystac.Item]) -> Search:
    """Items of another input's collection that may serve ``locations`` (the primary items).

    Only where and when count: the area of the locations' footprints, and for an input that
    changes in time the locations' time span widened by ``--max-time-gap`` (without one, the
    run's ``--datetime``). ``--ids``, ``--query``, ``--filter``, ``--sortby`` and ``--max-items``
    choose primary items and are not asked here.
    """
    from . import Search

    gap = config.time_gap_seconds
    interval = None
    if not modality.static:
        interval = config.datetime
        if gap is not None:
            ranges = [item_time_range(item) for item in locations]
            interval = (min(r[0] for r in ranges) - timedelta(seconds=gap),
                        max(r[1] for r in ranges) + timedelta(seconds=gap))
    area = footprint_union(locations)
    asked = replace(config, collections=(modality.collection,), bbox=None, intersects=area, datetime=interval,
                    ids=(), query=None, filter=None, sortby=(), max_items=None)
    return Search.from_config(asked)


def footprint(item: pystac.Item) -> shapely.Geometry | None:
    """An item's footprint in lon/lat: its geometry, else its bbox; None when it has neither."""
    if item.geometry is not None:
        return shapely.geometry.shape(item.geometry)
    if item.bbox is not None:
        return shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
    return None


def footprint_union(items: Sequence[pystac.Item]) -> dict | None:
    """GeoJSON of the union of the items' footprints (their bounding boxes: few vertices for an
    API request), or None when one has no footprint (then the area is not limited)."""
    shapes = [footprint(item) for item in items]
    if not shapes or any(shape is None for shape in shapes):
        return None
    return shapely.geometry.mapping(shapely.union_all([shapely.box(*shape.bounds) for shape in shapes]))
