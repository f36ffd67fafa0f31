"""Writers: stream chip embeddings into files, batch by batch, so memory stays flat.

Each writer is opened for one source item, takes ``write(batch, embeddings)`` calls, and
``close()`` finishes the file and returns item properties it determined (e.g.
``emb:quantization``). The caller writes into a temporary directory and renames it into
place, so a file is either complete or absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pystac

from ..chips import ChipBatch, ChipGrid


@dataclass(frozen=True)
class SourceInfo:
    """What the writers record about the source item of the chips."""

    item_id: str
    collection: str | None
    datetime: str | None
    properties: dict[str, Any]

    @classmethod
    def from_item(cls, item: pystac.Item) -> "SourceInfo":
        properties = dict(item.properties)
        moment = properties.get("datetime") or properties.get("start_datetime")
        return cls(item.id, item.collection_id, moment, properties)

    @classmethod
    def from_items(cls, items: list[pystac.Item], item_id: str) -> "SourceInfo":
        """A time series is described by its first acquisition, under the series' id."""
        first = cls.from_item(items[0])
        return first if len(items) == 1 else cls(item_id, first.collection, first.datetime, first.properties)


DTYPES = ("float32", "float16", "int8")


@dataclass(frozen=True)
class Layout:
    """The shape and storage of the embeddings: vectors, or dense ``patches`` (h, w) per chip."""

    dimensions: int
    patches: tuple[int, int] | None = None
    dtype: str = "float32"
    quantization: str = "per-dimension"

    @property
    def dense(self) -> bool:
        return self.patches is not None


class ChipWriter(Protocol):
    def write(self, batch: ChipBatch, embeddings: np.ndarray) -> None: ...

    def close(self) -> dict[str, Any]: ...


def open_writer(fmt: str, path, chip_grid: ChipGrid, source: SourceInfo, layout: Layout) -> ChipWriter:
    """A writer for ``fmt`` (``geoparquet`` or ``geotiff``) at ``path``."""
    if fmt == "geoparquet":
        from .geoparquet import GeoParquetWriter

        return GeoParquetWriter(path, chip_grid, source, layout)
    from .cog import CogWriter

    return CogWriter(path, chip_grid, source, layout)
