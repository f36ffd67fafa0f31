"""The scan every similarity search shares: chips of a catalog streamed in bounded batches
(``EmbeddingItem.iter_chips``: GeoParquet row groups, or windows of a COG for GeoTIFF-only and
dense embeddings), filtered by footprint and time, scored by cosine similarity, and a running
top-k; used by exact search (``similar``) and by the index (``index``), which import it, not
each other."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import Bbox, Interval
from ..embeddings import BATCH_ROWS, EmbeddingCatalog, EmbeddingItem, footprints_meet
from ..errors import ConfigError

CHIP_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("item", pa.string()),
    ("collection", pa.string()),
    ("source_item", pa.string()),
    ("source_collection", pa.string()),
    ("chip_row", pa.int32()),
    ("chip_col", pa.int32()),
    ("datetime", pa.timestamp("us", tz="UTC")),
    ("geometry", pa.binary()),
])

SCAN_COLUMNS = ("id", "source_item", "source_collection", "chip_row", "chip_col", "datetime", "geometry", "bbox")
# What a scan reads of a COG's chips when no footprint filter needs theirs: the place of each
# chip. A COG's other columns are computed per chip (ids, reprojected footprints: 90% of a
# dense item's scan), so those of the chips a top-k keeps are computed when it keeps them.
COG_PLACE = ("chip_row", "chip_col")

@dataclass(frozen=True)
class Filters:
    """Which chips are searched: footprint bbox intersecting ``bbox``, ``datetime`` within the interval."""

    bbox: Bbox | None = None
    datetime: Interval | None = None

    def item_may_match(self, item: EmbeddingItem) -> bool:
        """Whether ``item`` may hold a chip that passes (its bbox and time range, before reading it)."""
        if self.bbox is not None and not item.placed:
            return False
        reach = item_reach(item) if self.bbox is not None else None
        if reach is not None and not boxes_meet(reach, self.bbox):
            return False
        if self.datetime is not None:
            common = item.stac_item.common_metadata
            start = item.stac_item.datetime or common.start_datetime
            end = item.stac_item.datetime or common.end_datetime
            lo, hi = self.datetime
            if start is not None and hi is not None and start > hi:
                return False
            if end is not None and lo is not None and end < lo:
                return False
        return True

    def rows(self, data: pa.Table | pa.RecordBatch) -> np.ndarray | None:
        """The mask of the rows of ``data`` that pass (``bbox`` and ``datetime`` columns); None: all."""
        mask = footprints_meet(data, self.bbox) if self.bbox is not None else None
        if self.datetime is not None:
            lo, hi = self.datetime
            times = data.column("datetime")
            inside = pc.is_valid(times)
            if lo is not None:
                inside = pc.and_(inside, pc.greater_equal(times, pa.scalar(lo, times.type)))
            if hi is not None:
                inside = pc.and_(inside, pc.less_equal(times, pa.scalar(hi, times.type)))
            inside = pc.fill_null(inside, False).to_numpy(zero_copy_only=False)
            mask = inside if mask is None else mask & inside
        return mask

    @property
    def active(self) -> bool:
        return self.bbox is not None or self.datetime is not None

def item_reach(item: EmbeddingItem) -> list[float] | None:
    """Where ``item``'s chips may lie (lon/lat): its bbox grown by one chip, since edge chips
    extend past the raster; None when that is not known (no bbox, no ``gsd``; dense embeddings,
    whose ``gsd`` is a patch's), so nothing is skipped. One chip is ``chip_size`` x ``gsd`` /
    ``stride`` metres (``gsd`` is the embeddings')."""
    bbox, layout = item.bbox, item.chip_layout or {}
    gsd = item.stac_item.properties.get("gsd")
    size, stride = layout.get("chip_size"), layout.get("stride")
    if not bbox or not gsd or not size or not stride or item.kind == "pixel":
        return None
    size = max(size) if isinstance(size, list | tuple) else size
    stride = min(stride) if isinstance(stride, list | tuple) else stride
    metres = float(size) * float(gsd) / float(stride)
    west, south, east, north = bbox[0], bbox[1], bbox[-2], bbox[-1]
    dlat = metres / 110_574
    dlon = metres / (111_320 * max(math.cos(math.radians(max(abs(south), abs(north)) + dlat)), 0.01))
    return [west - dlon, south - dlat, east + dlon, north + dlat]

def boxes_meet(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and a[2] >= b[0] and a[1] <= b[3] and a[3] >= b[1]

def select_items(catalog: EmbeddingCatalog, collections: Sequence[str] = ()) -> list[EmbeddingItem]:
    """The embedding items of ``catalog`` (chip or dense) in ``collections`` (all when empty), in catalog order."""
    items = list(catalog)
    if collections:
        known = {item.collection_id for item in items}
        unknown = [c for c in collections if c not in known]
        if unknown:
            raise ConfigError(f"{catalog.href} has no embeddings collection {', '.join(map(repr, unknown))}; "
                              f"it has {', '.join(sorted(str(c) for c in known))}")
        items = [item for item in items if item.collection_id in collections]
    return items

def cosine(vectors: np.ndarray, unit_queries: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``vectors`` to unit-length queries: ``(n,)`` for one
    query ``(D,)``, ``(n, m)`` for ``(m, D)``; 0 for zero rows, -inf for rows that are not finite.

    Row by row with ``einsum`` rather than a BLAS product: BLAS sums in an order that depends on
    the batch's shape, so scores (and ties) would change with batch sizes; einsum's do not, and
    it is faster here than ``vectors @ query`` (measured: 0.07 vs 0.66 ms for 2048 x 384).
    """
    vectors = np.asarray(vectors, "float32")
    queries = np.asarray(unit_queries, "float32")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if queries.ndim == 1:
        dots = np.einsum("ij,j->i", vectors, queries)
    else:
        dots = np.stack([np.einsum("ij,j->i", vectors, query) for query in queries], axis=1)
        norms = norms[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(norms > 0, dots / norms, 0).astype("float32")
    scores[np.isnan(scores)] = -np.inf
    return scores

def catalog_order(items: Sequence[EmbeddingItem]) -> dict[tuple[str | None, str], int]:
    """Each item's place in the catalog, by (collection, item id): the first key of ties."""
    return {(item.collection_id, item.id): number for number, item in enumerate(items)}

def scan(items: Sequence[EmbeddingItem], order: dict[tuple[str | None, str], int], queries: np.ndarray,
         filters: Filters, tops: Sequence[TopK], batch_rows: int = BATCH_ROWS) -> int:
    """Exact search: score every chip of ``items`` that passes ``filters`` against each of the
    unit ``queries`` ``(m, D)`` into ``tops[j]``, streaming a batch at a time (one pass for all
    queries); the number of chips that passed."""
    matched = 0
    for item in items:
        offset = 0
        later = filters.bbox is None and "geoparquet" not in item.hrefs  # the kept chips' columns only
        read = (*COG_PLACE, *(("datetime",) if filters.datetime else ())) if later else SCAN_COLUMNS
        for batch, vectors in item.iter_chips(batch_rows, columns=read, bbox=filters.bbox):
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            mask = filters.rows(batch)
            if mask is not None:
                batch, vectors, rows = batch.filter(pa.array(mask)), vectors[mask], rows[mask]
            matched += len(rows)
            if not len(rows):
                continue
            if vectors.shape[1] != queries.shape[1]:
                raise ConfigError(f"item {item.id!r} has {vectors.shape[1]}-d vectors, the query "
                                  f"{queries.shape[1]} dimensions: restrict the search with --collection")
            keys = np.column_stack([np.full(len(rows), order[(item.collection_id, item.id)]), rows])
            scores = cosine(vectors, queries)

            def take(chosen: np.ndarray, batch: pa.RecordBatch = batch, item: EmbeddingItem = item,
                     later: bool = later) -> pa.Table:
                kept = batch.take(pa.array(chosen))
                if later:
                    kept = item.cog_chips(kept.column("chip_row").to_numpy(), kept.column("chip_col").to_numpy(),
                                          SCAN_COLUMNS)
                return chip_rows(kept, item)

            for j, top in enumerate(tops):
                top.push(scores[:, j], keys, take)
    return matched

def chip_rows(data: pa.Table | pa.RecordBatch, item: EmbeddingItem) -> pa.Table:
    """Chip rows of an item (``iter_chips``) as ``CHIP_SCHEMA`` (columns a file lacks are null;
    ``geometry`` is lon/lat, so null for an item without georeferencing: ``EmbeddingItem.placed``)."""
    n = data.num_rows
    names = data.schema.names
    columns = []
    for column in CHIP_SCHEMA:
        if column.name == "item":
            values = pa.array([item.id] * n, pa.string())
        elif column.name == "collection":
            values = pa.array([item.collection_id] * n, pa.string())
        elif column.name in names and (column.name != "geometry" or item.placed):
            values = pc.cast(data.column(column.name), column.type)
        else:
            values = pa.nulls(n, column.type)
        columns.append(values)
    return pa.Table.from_arrays(columns, schema=CHIP_SCHEMA)

class TopK:
    """The ``k`` best rows seen so far: scores, ordering keys (item order, row) and chip rows.

    ``push`` keeps, of a batch, only the rows scoring at least the batch's k-th best (and the
    best kept so far), so memory is the batch and k rows. Ties go to the lower key.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.empty(0, "float32")
        self.keys = np.empty((0, 2), "int64")
        self._rows = pa.Table.from_batches([], CHIP_SCHEMA)

    def push(self, scores: np.ndarray, keys: np.ndarray,
             take: Callable[[np.ndarray], pa.Table] | None = None) -> None:
        """Offer rows with ``scores`` and ``keys``; ``take(positions)`` gives the chip rows chosen
        (without it, only scores and keys are kept)."""
        if not len(scores):
            return
        chosen = np.arange(len(scores))
        if len(scores) > self.k:
            kth = np.partition(scores, len(scores) - self.k)[len(scores) - self.k]
            chosen = np.flatnonzero(scores >= kth)
        if len(self.scores) == self.k:
            chosen = chosen[scores[chosen] >= self.scores[-1]]
        if not len(chosen):
            return
        all_scores = np.concatenate([self.scores, scores[chosen]])
        all_keys = np.concatenate([self.keys, keys[chosen]])
        best = np.lexsort((all_keys[:, 1], all_keys[:, 0], -all_scores))[:self.k]
        self.scores, self.keys = all_scores[best], all_keys[best]
        if take is not None:
            self._rows = pa.concat_tables([self._rows, take(chosen)]).take(pa.array(best))

    def rows(self) -> pa.Table:
        return self._rows
