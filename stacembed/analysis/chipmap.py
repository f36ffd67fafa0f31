"""One pass over an item's chips that turns each vector into values, written as maps and a table.

Clustering and prediction both do this: read an item's chips a batch at a time
(``EmbeddingItem.iter_chips``), compute values per chip (a cluster, a class, a probability),
paint some of them onto the item's embedding grid (one pixel per chip position, or per patch)
and write every chip's values beside its footprint and place in a GeoParquet table, streamed
row group by row group. The maps are one item's grid (a value per chip position), so they are
built in memory; the table never is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..embeddings import EmbeddingItem
from ..grid import Grid

# What a chip's row keeps of its embeddings row: where it is, what it was cut from, when.
KEPT_COLUMNS = ("id", "geometry", "bbox", "chip_row", "chip_col", "source_item", "source_collection", "datetime")
PLACE_COLUMNS = ("chip_row", "chip_col")  # what painting the maps needs

Compute = Callable[[np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Layer:
    """A map painted from the computed column ``column``: ``bands`` values per chip (a 2-D
    column, one row per chip, for several), ``dtype``, ``nodata`` where no chip was kept."""

    column: str
    dtype: str
    nodata: float
    bands: int = 1


@dataclass(frozen=True)
class ChipMaps:
    """What ``map_chips`` made of one item: the painted maps ((bands, height, width) per layer
    column) and the number of chips."""

    maps: dict[str, np.ndarray]
    chips: int


def map_chips(item: EmbeddingItem, grid: Grid, table_path: Path | None, compute: Compute, *,
              layers: Sequence[Layer], columns: Mapping[str, pa.DataType], batch_rows: int,
              on_batch: Callable[[int], Any] = lambda n: None) -> ChipMaps:
    """Compute every chip's values of ``item``; paint ``layers`` onto ``grid``; write the chips'
    ``KEPT_COLUMNS`` and the computed ``columns`` (name -> Arrow type) to ``table_path``
    (None: the maps only, and the chips' footprints are never computed)."""
    maps = {layer.column: np.full((layer.bands, grid.height, grid.width), layer.nodata, layer.dtype)
            for layer in layers}
    table = _Table(table_path, columns) if table_path is not None else None
    chips = 0
    try:
        for batch, vectors in item.iter_chips(batch_rows, columns=KEPT_COLUMNS if table else PLACE_COLUMNS):
            values = compute(vectors)
            _paint(maps, batch, values, grid)
            if table:
                table.write(batch, values)
            chips += len(vectors)
            on_batch(len(vectors))
        if table:
            table.finish(item)
    finally:
        if table:
            table.close()
    return ChipMaps(maps, chips)


def _paint(maps: dict[str, np.ndarray], batch: pa.RecordBatch, values: Mapping[str, np.ndarray], grid: Grid) -> None:
    rows, cols = batch.column("chip_row").to_numpy(), batch.column("chip_col").to_numpy()
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    for column, painted in maps.items():
        value = np.asarray(values[column])
        bands = value.reshape(len(value), -1).T  # (bands, chips)
        painted[:, rows[inside], cols[inside]] = bands[:, inside]


class _Table:
    """The chips' table, written a row group at a time; its ``geo`` metadata (the embeddings
    file's, for ``geometry``, with a ``bbox`` covering every chip written) goes in the footer.

    Without the Arrow schema copy (``store_schema=False``; every column is a plain Parquet
    type): pyarrow would read the metadata of that copy, made when the file is opened, before
    the footer's."""

    def __init__(self, path: Path, columns: Mapping[str, pa.DataType]) -> None:
        self.path, self.columns = path, dict(columns)
        self.writer: pq.ParquetWriter | None = None
        self.geo: dict[str, Any] = {}
        self.extent = [np.inf, np.inf, -np.inf, -np.inf]

    def write(self, batch: pa.RecordBatch, values: Mapping[str, np.ndarray]) -> None:
        table = pa.Table.from_batches([batch])
        for name, dtype in self.columns.items():
            table = table.append_column(name, pa.array(values[name], dtype))
        if self.writer is None:
            self.geo = _geo(batch.schema.metadata)
            self.writer = self._open(table.schema)
        self.writer.write_table(table, row_group_size=max(1, len(table)))
        self.extent = _grown(self.extent, table)

    def finish(self, item: EmbeddingItem) -> None:
        if self.writer is None:  # no chip kept: an empty table of the same columns
            schema = item.chips_schema(KEPT_COLUMNS)
            for name, dtype in self.columns.items():
                schema = schema.append(pa.field(name, dtype))
            self.geo = _geo(schema.metadata)
            self.writer = self._open(schema)
        if np.isfinite(self.extent).all():
            self.geo["columns"]["geometry"]["bbox"] = [float(v) for v in self.extent]
        self.writer.add_key_value_metadata({"geo": json.dumps(self.geo)})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _open(self, schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(self.path, schema.remove_metadata(), compression="zstd", store_schema=False)


def _geo(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The table's ``geo`` metadata: the embeddings file's, for its ``geometry`` column."""
    geo = json.loads((metadata or {}).get(b"geo", b"{}"))
    column = dict(geo.get("columns", {}).get("geometry") or {"encoding": "WKB", "geometry_types": ["Polygon"]})
    column.pop("bbox", None)
    return {"version": geo.get("version", "1.1.0"), "primary_column": "geometry", "columns": {"geometry": column}}


def _grown(extent: list[float], table: pa.Table) -> list[float]:
    if "bbox" not in table.column_names or table.num_rows == 0:
        return extent
    box = table.column("bbox").combine_chunks()
    values = [pc.min(box.field("xmin")).as_py(), pc.min(box.field("ymin")).as_py(),
              pc.max(box.field("xmax")).as_py(), pc.max(box.field("ymax")).as_py()]
    return [min(extent[0], values[0]), min(extent[1], values[1]), max(extent[2], values[2]), max(extent[3], values[3])]
