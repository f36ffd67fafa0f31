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
from .grid import native_grid
from .resolve import item_time_range

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


def chip_context(names: tuple[str, ...], series: Series, chip_grid, chips) -> dict[str, np.ndarray]:
    """Per-chip extra model inputs: ``temporal_coords`` (n, T, 2) as (year, day of year) of each
    acquisition, and ``location_coords`` (n, 2) as (lat, lon) of each chip's centre."""
    context: dict[str, np.ndarray] = {}
    if "temporal_coords" in names:
        times = [item_time_range(item)[0] for item in series.items]
        pairs = [(t.year, t.timetuple().tm_yday) for t in times]
        context["temporal_coords"] = np.tile(np.asarray(pairs, "float32"), (len(chips), 1, 1))
    if "location_coords" in names:
        from pyproj import Transformer

        to_wgs84 = Transformer.from_crs(chip_grid.grid.crs.to_wkt(), "EPSG:4326", always_xy=True)
        bounds = np.array([chip_grid.bounds(c) for c in chips], "float64").reshape(-1, 4)
        lon, lat = to_wgs84.transform((bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2)
        context["location_coords"] = np.column_stack([lat, lon]).astype("float32")
    return context
