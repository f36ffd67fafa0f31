"""Time series for temporal models: pick ``T`` acquisitions per location from the found items.

The rule (documented in the README, and the same for every run):

1. Items are grouped by location = their native pixel grid (CRS, transform and size, read from
   the files): only items on the very same grid are stacked, so no pixel is resampled in time.
   Bands of an item on several grids (10 and 20 m) need ``--resolution`` (or ``--crs``), and the
   item's location is then its finest band's grid (``grid.native_grid``); every acquisition is
   read onto the run's grid as a single-time run of that item reads it.
   Items of sample cubes are grouped by their sample (``resolve.cubes``): its seasons.
2. Within a group, items are sorted by acquisition time (``datetime``, else ``start_datetime``;
   ties by id) and split into ``T`` consecutive bins of (near) equal size.
3. From each bin the least cloudy item is taken (``eo:cloud_cover``; items without it count as
   fully cloudy, ties go to the earlier item), so the series spans the whole period evenly.

Groups with fewer than ``T`` items are skipped with a warning; if no group has enough, that
is an error. The output item of a group links ``derived_from`` every item used.

Several modalities (``pair_modalities``; a card with several inputs, README "Several
modalities") pair each location, an item of the primary modality, with items of every other one:

1. Candidates are the other modality's items whose footprint overlaps the location's, and, for a
   modality that changes in time, whose time lies within ``--max-time-gap`` of the location's
   (the gap between the two time ranges; no limit without the option). Static modalities (DEM)
   ignore time.
2. The nearest in time comes first (ties by id; static: by id). Further candidates are taken, in
   that order, only while they cover part of the location that the ones taken leave uncovered:
   tiles of one modality are mosaicked, the nearer item winning where they overlap.
3. A location with no candidate for a required modality is skipped with a warning naming both;
   an optional modality is then left out for that location (its bands are no data).

Items of sample cubes (``resolve.cubes``) are paired by their sample and season instead: the
modalities' cubes hold the same samples on the same pixels. A sample missing from a required
modality's cubes is an error, not a skip (the cubes do not match).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pystac

from .bands import BandSource
from .errors import ResolveError
from .grid import native_grid
from .resolve import item_time_range
from .resolve.cubes import by_sample, sample_key
from .resolve.modalities import footprint

log = logging.getLogger("stacembed")


@dataclass(frozen=True)
class Acquisition:
    item: pystac.Item
    bands: list[BandSource]


@dataclass(frozen=True)
class Companion:
    """Another modality at a location: its items to mosaic, nearest in time first (none: missing)."""

    name: str
    acquisitions: tuple[Acquisition, ...] = ()


@dataclass(frozen=True)
class Series:
    """The acquisitions embedded together, oldest first; one output item per series.

    With several modalities, ``acquisitions`` are the primary modality's (the location) and
    ``companions`` the other modalities' items paired with it, in the card's order."""

    acquisitions: tuple[Acquisition, ...]
    companions: tuple[Companion, ...] = ()

    @property
    def id(self) -> str:
        first, last = self.acquisitions[0].item, self.acquisitions[-1].item
        return first.id if len(self.acquisitions) == 1 else f"{first.id}--{last.id}"

    @property
    def items(self) -> list[pystac.Item]:
        """The primary modality's items (the location and its time)."""
        return [a.item for a in self.acquisitions]

    @property
    def sources(self) -> list[pystac.Item]:
        """Every item read: the primary's, then each other modality's."""
        return self.items + [a.item for c in self.companions for a in c.acquisitions]

    def companion(self, name: str) -> Companion | None:
        return next((c for c in self.companions if c.name == name), None)


def build_series(found: list[tuple[pystac.Item, list[BandSource]]], time_steps: int, *,
                 explicit: bool = False) -> list[Series]:
    """One series per item (``time_steps == 1``), or ``time_steps`` items per location.

    ``explicit``: the run resamples onto a grid it asks for (``--resolution``, ``--crs``), so an
    item's bands may be on several grids (Sentinel-2's 10 and 20 m, a multiscale Zarr store); its
    location is then the grid that ``grid.native_grid`` picks for it (the finest band's), the
    one a single-time run derives its grid from."""
    if time_steps == 1:
        return [Series((Acquisition(item, bands),)) for item, bands in found]
    groups: dict[tuple, list[Acquisition]] = {}
    for item, bands in found:
        grid, cube = native_grid(item, bands, explicit=explicit), sample_key(item)
        if not grid.placed and cube is None:  # pixel grids of one shape are not one place
            raise ResolveError(f"--time-steps groups items by place, and item {item.id!r} has no georeferencing")
        # A sample cube's seasons are one location: its sample (``resolve.cubes``), placed or not.
        key = (item.collection_id, cube[0]) if cube else (grid.crs.to_wkt(), tuple(grid.transform)[:6], grid.width,
                                                          grid.height)
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


def pair_modalities(series: list[Series], found: Mapping[str, list[tuple[pystac.Item, list[BandSource]]]], *,
                    static: set[str], optional: set[str], max_gap: float | None, gap_text: str | None = None,
                    describe: Mapping[str, str] = {}) -> list[Series]:
    """Each location (a series of one primary item) with its items of every other modality in
    ``found`` (by modality name, in the card's order), by the rule in this module's docstring.

    ``max_gap`` is in seconds (``gap_text`` as the user wrote it); ``describe`` says how to name
    each modality's source in a warning (its collection).
    """
    paired = []
    samples: dict[str, dict] = {}  # sample cube items of each modality by (sample, season), made on first use
    for location in series:
        primary = location.acquisitions[0].item
        area = footprint(primary)
        companions, missing = [], None
        for name, candidates in found.items():
            if sample_key(primary) is not None:
                if name not in samples:
                    samples[name] = by_sample(candidates)
                picked = _same_sample(primary, name, samples[name], required=name not in optional,
                                      source=describe.get(name, name))
            else:
                picked = _cover(primary, area, candidates, static=name in static, max_gap=max_gap)
            if not picked and name not in optional:
                missing = name
                break
            companions.append(Companion(name, tuple(Acquisition(item, bands) for item, bands in picked)))
        if missing is not None:
            within = "" if missing in static or max_gap is None else f" within --max-time-gap {gap_text or max_gap}"
            log.warning("skipping location %r: no %s item (%s) covers it%s", primary.id, missing,
                        describe.get(missing, missing), within)
            continue
        paired.append(Series(location.acquisitions, tuple(companions)))
    if not paired:
        needed = ", ".join(name for name in found if name not in optional)
        raise ResolveError(f"no location has an item of every modality the model needs ({needed}); "
                           "see the warnings above, and widen --max-time-gap or --datetime")
    return paired


def _same_sample(primary: pystac.Item, name: str, index: Mapping[tuple[str, int], tuple[pystac.Item, list[BandSource]]],
                 *, required: bool, source: str) -> list[tuple[pystac.Item, list[BandSource]]]:
    """The sample cube item of input ``name`` (``index``: ``resolve.cubes.by_sample``) with ``primary``'s
    sample and season; none for a required input is an error (the modalities' cubes do not hold the
    same samples)."""
    key = sample_key(primary)
    picked = [index[key]] if key in index else []
    if not picked and required:
        sample, season = key
        raise ResolveError(f"sample {sample!r} (season {season}) of {primary.collection_id} has no counterpart in "
                           f"input {name} ({source}): its sample cubes must hold the same samples")
    return picked


def _cover(primary: pystac.Item, area, candidates: list[tuple[pystac.Item, list[BandSource]]], *, static: bool,
           max_gap: float | None) -> list[tuple[pystac.Item, list[BandSource]]]:
    """The candidates that serve ``primary``: nearest first, then those that cover more of it."""
    def gap(item: pystac.Item) -> float:
        if static:
            return 0.0
        start, end = item_time_range(primary)
        other_start, other_end = item_time_range(item)
        return max(0.0, (other_start - end).total_seconds(), (start - other_end).total_seconds())

    near = []
    for item, bands in candidates:
        shape = footprint(item)
        overlap = None if area is None or shape is None else shape.intersection(area)
        if overlap is not None and overlap.area <= 0:
            continue
        distance = gap(item)
        if max_gap is None or distance <= max_gap:
            near.append((distance, item.id, item, bands, overlap))
    near.sort(key=lambda entry: (entry[0], entry[1]))
    picked, covered = [], None
    for _, _, item, bands, overlap in near:
        if overlap is None:  # no footprint to compare: the nearest one serves alone
            return picked or [(item, bands)]
        if covered is not None and overlap.difference(covered).area <= 1e-9 * area.area:
            continue
        picked.append((item, bands))
        covered = overlap if covered is None else covered.union(overlap)
        if area.difference(covered).area <= 1e-9 * area.area:
            break
    return picked


def _pick(members: list[Acquisition], time_steps: int) -> list[Acquisition]:
    ordered = sorted(members, key=lambda a: (item_time_range(a.item)[0], a.item.id))
    bins = np.array_split(np.arange(len(ordered)), time_steps)
    return [min((ordered[i] for i in indices), key=lambda a: (_cloud(a.item), item_time_range(a.item)[0]))
            for indices in bins]


def _cloud(item: pystac.Item) -> float:
    cover = item.properties.get("eo:cloud_cover")
    return float(cover) if isinstance(cover, (int, float)) else 100.0


def chip_context(names: tuple[str, ...], series: Series, chip_grid, chips,
                 wavelengths: tuple[float | None, ...] = ()) -> dict[str, np.ndarray]:
    """Per-chip extra model inputs: ``temporal_coords`` (n, T, 2) as (year, day of year) of each
    acquisition, ``acquisition_hour`` (n, T) as its hour of day (with minutes and seconds as a
    fraction; both as written in the item's datetime), ``location_coords`` (n, 2) as (lat, lon)
    of each chip's centre, ``gsd`` (n,) as the chip grid's pixel size in metres (projected CRS:
    its resolution in the CRS's linear unit, converted; geographic CRS: the geodesic size of a
    pixel at the chip's centre; the mean of its width and height), and ``wavelengths`` (n, C):
    each band's centre wavelength in micrometres (NaN where unknown)."""
    context: dict[str, np.ndarray] = {}
    if "wavelengths" in names:
        row = np.array([np.nan if w is None else w for w in wavelengths], "float32")
        context["wavelengths"] = np.tile(row, (len(chips), 1))
    timed = "temporal_coords" in names or "acquisition_hour" in names
    times = [item_time_range(item)[0] for item in series.items] if timed else []
    if "temporal_coords" in names:
        pairs = [(t.year, t.timetuple().tm_yday) for t in times]
        context["temporal_coords"] = np.tile(np.asarray(pairs, "float32"), (len(chips), 1, 1))
    if "acquisition_hour" in names:
        hours = [t.hour + t.minute / 60 + t.second / 3600 for t in times]
        context["acquisition_hour"] = np.tile(np.asarray(hours, "float32"), (len(chips), 1))
    if ("location_coords" in names or "gsd" in names) and not chip_grid.grid.placed:
        raise ResolveError(f"the model takes each chip's {'location' if 'location_coords' in names else 'gsd'}, "
                           f"and item {series.id!r} has no georeferencing")
    if "location_coords" in names or "gsd" in names:
        from pyproj import CRS, Transformer

        crs = CRS.from_wkt(chip_grid.grid.crs.to_wkt())
        to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        bounds = np.array([chip_grid.bounds(c) for c in chips], "float64").reshape(-1, 4)
        lon, lat = to_wgs84.transform((bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2)
        lon, lat = np.atleast_1d(lon), np.atleast_1d(lat)
        if "location_coords" in names:
            context["location_coords"] = np.column_stack([lat, lon]).astype("float32")
        if "gsd" in names:
            width, height = (abs(v) for v in chip_grid.grid.resolution)
            if crs.is_geographic:  # degrees: the pixel's geodesic width and height at each chip's centre
                geod = crs.get_geod() or CRS("EPSG:4326").get_geod()
                _, _, east = geod.inv(lon - width / 2, lat, lon + width / 2, lat)
                _, _, north = geod.inv(lon, lat - height / 2, lon, lat + height / 2)
                gsd = (np.asarray(east) + np.asarray(north)) / 2
            else:
                unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
                gsd = np.full(len(chips), (width + height) / 2 * unit)
            context["gsd"] = np.asarray(gsd, "float32").reshape(len(chips))
    return context
