"""What every writer is given and promises: the source item's facts, the embeddings' layout, the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pystac

from ..chips import ChipBatch


@dataclass(frozen=True)
class SourceInfo:
    """What the writers record about the source item of the chips."""

    item_id: str
    collection: str | None
    datetime: str | None
    properties: dict[str, Any]

    @classmethod
    def from_item(cls, item: pystac.Item) -> SourceInfo:
        properties = dict(item.properties)
        moment = properties.get("datetime") or properties.get("start_datetime")
        return cls(item.id, item.collection_id, moment, properties)

    @classmethod
    def from_items(cls, items: list[pystac.Item], item_id: str) -> SourceInfo:
        """A time series is described by its first acquisition, under the series' id."""
        first = cls.from_item(items[0])
        return first if len(items) == 1 else cls(item_id, first.collection, first.datetime, first.properties)


@dataclass(frozen=True)
class EmbeddingLayout:
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

    def close(self) -> dict[str, Any]:
        """Finish the file; returns the item properties the writer determined."""

    def abort(self) -> None:
        """Release what is open without finishing the file (after a failure; a no-op after
        ``close``). The caller removes the files."""
