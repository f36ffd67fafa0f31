"""Change maps: the cosine distance between two dates' embeddings of the same places, in STAC.

``change_catalog(catalog, before=..., after=..., out=...)`` picks the items of each date
(``before``/``after``: item ids, or an RFC 3339 datetime or interval, as ``--datetime``), pairs
them by chip grid (the same CRS, transform and shape: the same place, chipped the same way),
and writes per pair a float32 COG on that grid holding ``1 - cos(a, b)`` of the two vectors
of each chip position (0: the same direction, 2: opposite; NaN where either date has no chip),
published as a STAC item spanning both dates (``start_datetime``/``end_datetime``) and linked
``derived_from`` both embedding items.

The vectors are read a strip of chip rows at a time from the embeddings COGs (an item that has
only GeoParquet is read whole: one item's vectors); the distances are computed in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from tqdm import tqdm

from ..embeddings import EmbeddingItem, open_embeddings
from ..errors import ConfigError
from ..grid import Grid
from ..stac import COG, FILE, ITEM_ASSETS, PROCESSING, PROJECTION
from .derived import (
    AnalysisError,
    DerivedOutput,
    catalog_href,
    describe_grid,
    describe_model,
    file_asset,
    iso,
    item_grid,
    item_key,
    one_model,
    processing,
    projection_fields,
    same_grid,
    time_range,
    write_cog,
)

log = logging.getLogger("stacembed")

CHANGE_ASSET = "change"
STRIP_BYTES = 32 * 2**20  # float32 vectors of both dates read at a time (a strip of chip rows)
_CHANGE_TITLE = ("Cosine distance between the two dates' embeddings of each chip (float32; 0: no change, "
                 "2: opposite; NaN: no chip at either date)")


@dataclass(frozen=True)
class Pair:
    """Two embedding items of one place (one chip grid) at two times."""

    before: EmbeddingItem
    after: EmbeddingItem
    grid: Grid


@dataclass(frozen=True)
class ChangeResult:
    """What ``change_catalog`` wrote: the catalog, the collection and the item of each pair."""

    catalog: Path
    collection: Path
    items: tuple[str, ...]
    pairs: tuple[Pair, ...]


def change_catalog(
    catalog: str | Path,
    *,
    before: str | Sequence[str],
    after: str | Sequence[str],
    out: str | Path,
    output_collection: str | None = None,
    progress: bool = True,
) -> ChangeResult:
    """Change maps between the ``before`` and ``after`` items of ``catalog``, under ``out``."""
    items = list(open_embeddings(catalog))
    first = select(items, before, "--before", catalog)
    second = select(items, after, "--after", catalog)
    unplaced = [item.id for item in (*first, *second) if not item.placed]
    if unplaced:  # pixel grids of the same shape are not the same place
        raise AnalysisError(f"change pairs items by place, and {', '.join(map(repr, unplaced))} "
                            f"{'has' if len(unplaced) == 1 else 'have'} no georeferencing (pixel coordinates "
                            "only); leave them out of --before/--after")
    model = one_model([*first, *second], f"catalog {catalog} (--before and --after)")
    output = DerivedOutput(Path(out), output_collection or "change")
    output.check_free()
    pairs = pair_items(first, second)
    with output.writing():
        for pair in tqdm(pairs, desc="change maps", unit="pair", disable=not progress):
            _write_pair(output, pair, model)
        output.write_collection(
            title="Change between embeddings of two dates",
            description=("Per chip position, the cosine distance between the embeddings of one place at two "
                         f"dates ({describe_model(model)})."),
            extensions=[ITEM_ASSETS],
            item_assets={CHANGE_ASSET: {"type": COG, "roles": ["data"], "title": _CHANGE_TITLE}},
            derived_from=[(catalog_href(catalog), "Embeddings")],
        )
    return ChangeResult(output.catalog_file, output.layout.collection_file, tuple(i["id"] for i in output.items),
                        tuple(pairs))


def select(items: Sequence[EmbeddingItem], spec: str | Sequence[str], flag: str,
           catalog: str | Path = "the catalog") -> list[EmbeddingItem]:
    """The items ``spec`` names: comma-separated item ids, or a datetime or interval (RFC 3339,
    ``2024``, ``2024-06``, ``2024-06-01/2024-06-30``, ``..`` for an open end) their time overlaps."""
    from ..config import parse_datetime

    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise ConfigError(f"{flag} is empty: give item ids or a datetime or interval")
    ids = {item.id for item in items}
    if all(token in ids for token in tokens):
        return [item for item in items if item.id in tokens]
    text = ",".join(tokens)
    try:
        start, end = parse_datetime(text)
    except ConfigError:
        missing = ", ".join(repr(t) for t in tokens if t not in ids)
        raise ConfigError(f"{flag} {text!r}: {missing} is neither an item id of {catalog} nor an RFC 3339 datetime "
                          "or interval") from None
    chosen = []
    for item in items:
        first, last = time_range(item)
        if first is not None and (end is None or first <= end) and (start is None or (last or first) >= start):
            chosen.append(item)
    if not chosen:
        raise AnalysisError(f"{flag} {text} matches no embedding item of {catalog} (their times: {_times(items)})")
    return chosen


def pair_items(before: Sequence[EmbeddingItem], after: Sequence[EmbeddingItem]) -> list[Pair]:
    """Pairs of a ``before`` and an ``after`` item on the same chip grid; each grid must hold one
    item of each side. Items without a partner are left out with a warning; no pair at all is
    an ``AnalysisError`` (the grids differ)."""
    grids = {item_key(item): _GridOf(*item_grid(item)) for item in [*before, *after]}
    first, second = _by_grid(before, grids), _by_grid(after, grids)
    pairs, unpaired = [], []
    for grid, items in first:
        partners = [other for other_grid, other in second if grid.matches(other_grid)]
        if not partners:
            unpaired += [item.id for item in items]
            continue
        others = [item for group in partners for item in group]
        for side, group in (("--before", items), ("--after", others)):
            if len(group) > 1:
                names = ", ".join(i.id for i in group)
                raise AnalysisError(f"{side} matches {len(group)} items on one chip grid ({names}): narrow it to "
                                    "one date there, or give item ids")
        pairs.append(Pair(items[0], others[0], grid.joined(grids[item_key(others[0])])))
    paired = {item_key(pair.after) for pair in pairs}
    unpaired += [item.id for _, group in second for item in group if item_key(item) not in paired]
    if not pairs:
        b, a = before[0], after[0]
        shown = "; ".join(f"{i.id}: {describe_grid(grids[item_key(i)].grid)}" for i in (b, a))
        raise AnalysisError("the --before and --after items lie on different chip grids, so no place was embedded "
                            f"at both times (e.g. {shown})")
    if unpaired:
        log.warning("no partner on the same chip grid for %d item(s), left out: %s", len(unpaired),
                    ", ".join(sorted(set(unpaired))))
    return pairs


def cosine_distance(a: np.ndarray, b: np.ndarray, axis: int = 0) -> np.ndarray:
    """``1 - cos`` of the vectors of ``a`` and ``b`` along ``axis`` (float32; NaN where either is
    NaN or a zero vector). Computed in float64: identical vectors give exactly 0."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    dot, aa, bb = (a * b).sum(axis=axis), (a * a).sum(axis=axis), (b * b).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = 1.0 - dot / np.sqrt(aa * bb)
    return np.clip(distance, 0.0, 2.0).astype("float32")


def change_map(pair: Pair) -> np.ndarray:
    """The ``(height, width)`` float32 cosine distances of ``pair`` on its grid, read a strip of
    chip rows at a time."""
    grid = pair.grid
    before, after = _Vectors(pair.before, grid), _Vectors(pair.after, grid)
    dims = pair.before.dimensions or 1
    rows = max(1, STRIP_BYTES // (2 * 4 * dims * max(grid.width, 1)))
    distances = np.full((grid.height, grid.width), np.nan, "float32")
    for top in range(0, grid.height, rows):
        height = min(rows, grid.height - top)
        distances[top:top + height] = cosine_distance(before.rows(top, height), after.rows(top, height))
    return distances


@dataclass(frozen=True)
class _GridOf:
    """An item's grid, and whether its shape is the COG's (exact) or ends at its last chip kept
    (a grid rebuilt from a GeoParquet-only item: trailing positions without a chip are not known)."""

    grid: Grid
    exact: bool

    def matches(self, other: _GridOf) -> bool:
        """The same CRS and transform, and shapes that agree (a rebuilt shape may be smaller)."""
        a, b = self.grid, other.grid
        if not same_grid(Grid(a.crs, a.transform, 1, 1), Grid(b.crs, b.transform, 1, 1)):
            return False
        if self.exact and other.exact:
            return (a.width, a.height) == (b.width, b.height)
        if self.exact or other.exact:
            large, small = (a, b) if self.exact else (b, a)
            return small.width <= large.width and small.height <= large.height
        return True

    def joined(self, other: _GridOf) -> Grid:
        """The grid of a pair: the exact one, else the larger shape of the two."""
        for g in (self, other):
            if g.exact:
                return g.grid
        a, b = self.grid, other.grid
        return Grid(a.crs, a.transform, max(a.width, b.width), max(a.height, b.height))


def _by_grid(items: Sequence[EmbeddingItem], grids: dict[str, _GridOf]) -> list[tuple[_GridOf, list[EmbeddingItem]]]:
    groups: list[tuple[_GridOf, list[EmbeddingItem]]] = []
    for item in items:
        grid = grids[item_key(item)]
        for known, members in groups:
            if known.matches(grid):
                members.append(item)
                break
        else:
            groups.append((grid, [item]))
    return groups


class _Vectors:
    """An item's vectors on ``grid``, a strip of rows at a time: window reads of its COG, or
    its GeoParquet's chips placed by chip_row/chip_col (read once, whole)."""

    def __init__(self, item: EmbeddingItem, grid: Grid) -> None:
        self.item, self.grid = item, grid
        self.whole: np.ndarray | None = None

    def rows(self, top: int, height: int) -> np.ndarray:
        if "geotiff" in self.item.hrefs:
            values, _, _ = self.item.array(window=Window(0, top, self.grid.width, height))
            return values
        if self.whole is None:
            self.whole = self._placed()
        return self.whole[:, top:top + height]

    def _placed(self) -> np.ndarray:
        dims = self.item.dimensions or 0
        whole = None
        for batch, vectors in self.item.iter_batches(columns=["chip_row", "chip_col"]):
            if whole is None:
                whole = np.full((vectors.shape[1] or dims, self.grid.height, self.grid.width), np.nan, "float32")
            whole[:, batch.column("chip_row").to_numpy(), batch.column("chip_col").to_numpy()] = vectors.T
        return whole if whole is not None else np.full((dims, self.grid.height, self.grid.width), np.nan, "float32")


def _write_pair(output: DerivedOutput, pair: Pair, model: dict[str, Any]) -> None:
    item_id = f"{pair.before.id}--{pair.after.id}"
    distances = change_map(pair)
    path = output.asset_path(item_id, "geotiff")
    write_cog(path, distances, pair.grid, nodata=float("nan"), description="cosine distance (1 - cos)",
              tags={"STAC_ITEM_ID": item_id, "BEFORE": pair.before.id, "AFTER": pair.after.id})
    (start_b, end_b), (start_a, end_a) = time_range(pair.before), time_range(pair.after)
    times = [t for t in (start_b, end_b, start_a, end_a) if t is not None]
    compared = np.isfinite(distances)
    properties = {
        "datetime": None,
        "start_datetime": iso(min(times)) if times else None,
        "end_datetime": iso(max(times)) if times else None,
        **processing(
            f"1 - cosine similarity of the embeddings ({describe_model(model)}) of item {pair.before.id!r} "
            f"({_when(start_b, end_b)}) and item {pair.after.id!r} ({_when(start_a, end_a)}), chip by chip on "
            "their common chip grid", {"numpy": np.__version__}),
        "stacembed:change": {
            "before": pair.before.id, "after": pair.after.id, "chips": int(compared.sum()),
            "max_distance": float(distances[compared].max()) if compared.any() else None,
        },
    }
    geometry = _common_geometry(pair)
    asset = file_asset(path, media_type=COG, roles=["data"], title=_CHANGE_TITLE, **projection_fields(pair.grid))
    output.add_item(item_id, geometry=geometry, bbox=_bbox(geometry) or pair.before.bbox, properties=properties,
                    extensions=[PROJECTION, FILE, PROCESSING], assets={CHANGE_ASSET: asset},
                    sources=[pair.before, pair.after])


def _common_geometry(pair: Pair) -> dict | None:
    """Where both items have data: the intersection of their footprints (the first's when they
    do not overlap, which on one chip grid means footprints cut to their data)."""
    import shapely.geometry

    a, b = pair.before.stac_item.geometry, pair.after.stac_item.geometry
    if not a or not b:
        return a or b
    both = shapely.geometry.shape(a).intersection(shapely.geometry.shape(b))
    return shapely.geometry.mapping(both) if not both.is_empty and both.area > 0 else a


def _bbox(geometry: dict | None) -> list[float] | None:
    if not geometry:
        return None
    import shapely.geometry

    return [float(v) for v in shapely.geometry.shape(geometry).bounds]


def _when(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "no time"
    return iso(start) if start == end or end is None else f"{iso(start)}/{iso(end)}"


def _times(items: Sequence[EmbeddingItem]) -> str:
    ranges = sorted({_when(*time_range(item)) for item in items})
    return ", ".join(ranges[:5]) + (f" and {len(ranges) - 5} more" if len(ranges) > 5 else "")

