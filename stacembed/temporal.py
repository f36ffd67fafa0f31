"""Time series for temporal models: pick ``T`` acquisitions per location from the found items.

The rule (documented in the README, and the same for every run):

1. Items are grouped by location = their native pixel grid (CRS, transform and size, read from
   the files): only items on the very same grid are stacked, so no pixel is resampled in time.
2. Within a group, items are sorted by acquisition time (``datetime``, else ``start_datetime``;
   ties by id) and split into ``T`` consecutive bins of (near) equal size.
3. From each bin the least cloudy item is taken (``eo:cloud_cover``; items without it count as
   fully cloudy, ties go to the earlier item), so the series spans the whole period evenly.

Groups with fewer than ``T`` items are skipped with a warning; if no group has enough, that
is an error. The output item of a group links ``derived_from`` every item used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pystac

from .bands import BandSource
from .errors import ResolveError
from .resolve import item_time_range
from .stack import native_grid

log = logging.getLogger("stacembed")


@dataclass(frozen=True)
class Acquisition:
    item: pystac.Item
    bands: list[BandSource]


@dataclass(frozen=True)
class Series:
    """The acquisitions embedded together, oldest first; one output item per series."""

    acquisitions: tuple[Acquisition, ...]

    @property
    def id(self) -> str:
        first, last = self.acquisitions[0].item, self.acquisitions[-1].item
        return first.id if len(self.acquisitions) == 1 else f"{first.id}--{last.id}"

    @property
    def items(self) -> list[pystac.Item]:
        return [a.item for a in self.acquisitions]


def build_series(found: list[tuple[pystac.Item, list[BandSource]]], time_steps: int) -> list[Series]:
    """One series per item (``time_steps == 1``), or ``time_steps`` items per location."""
    if time_steps == 1:
        return [Series((Acquisition(item, bands),)) for item, bands in found]
    groups: dict[tuple, list[Acquisition]] = {}
    for item, bands in found:
        grid = native_grid(item, bands)
        key = (grid.crs.to_wkt(), tuple(grid.transform)[:6], grid.width, grid.height)
        groups.setdefault(key, []).append(Acquisition(item, bands))
    series = []
    for members in groups.values():
        if len(members) < time_steps:
            log.warning("skipping a location with %d acquisition(s) (%s): --time-steps %d needs more",
                        len(members), ", ".join(a.item.id for a in members), time_steps)
            continue
        series.append(Series(tuple(_pick(members, time_steps))))
    if not series:
        raise ResolveError(f"no location has {time_steps} acquisitions on one pixel grid; "
                           "widen --datetime or lower --time-steps")
    return series


def _pick(members: list[Acquisition], time_steps: int) -> list[Acquisition]:
    ordered = sorted(members, key=lambda a: (item_time_range(a.item)[0], a.item.id))
    bins = np.array_split(np.arange(len(ordered)), time_steps)
    return [min((ordered[i] for i in indices), key=lambda a: (_cloud(a.item), item_time_range(a.item)[0]))
            for indices in bins]


def _cloud(item: pystac.Item) -> float:
    cover = item.properties.get("eo:cloud_cover")
    return float(cover) if isinstance(cover, (int, float)) else 100.0
