"""Writers: stream chip embeddings into files, batch by batch, so memory stays flat.

Each writer is opened for one source item, takes ``write(batch, embeddings)`` calls, and
``close()`` finishes the file and returns item properties it determined (e.g.
``emb:quantization``). The caller writes into a temporary directory and renames it into
place, so a file is either complete or absent.
"""

from __future__ import annotations

from ..chips import ChipGrid
from .base import ChipWriter, EmbeddingLayout, SourceInfo

__all__ = ["ChipWriter", "EmbeddingLayout", "SourceInfo", "open_writer"]


def open_writer(fmt: str, path, chip_grid: ChipGrid, source: SourceInfo, embedding: EmbeddingLayout) -> ChipWriter:
    """A writer for ``fmt`` (``geoparquet`` or ``geotiff``) at ``path``."""
    if fmt == "geoparquet":
        from .geoparquet import GeoParquetWriter

        return GeoParquetWriter(path, chip_grid, source, embedding)
    from .cog import CogWriter

    return CogWriter(path, chip_grid, source, embedding)
