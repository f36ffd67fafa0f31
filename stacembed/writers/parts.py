"""Part files: the embeddings of one tile (a band of chip rows) of an item, kept until merged.

When a cluster splits a large item into tiles, each tile's chips are embedded on some worker
and streamed, batch by batch, into an Arrow IPC stream file: chip row, chip column, valid
fraction and the float32 embedding (flattened when dense). Merging replays the parts, in
row order, through the ordinary writers, so a split item's GeoParquet and GeoTIFF (and its
int8 ranges, fitted over all chips) are the ones a single process writes. Arrow, not
pickle: a part file is plain data whoever wrote it.

A part is written under a temporary name and renamed when complete, so a part that exists
is whole: a task re-run after a lost worker rewrites it, and a rerun of the command keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..chips import ChipBatch, ChipGrid
from ..layout import atomic_path
from .base import EmbeddingLayout

SUFFIX = ".arrows"


def part_path(directory: Path, rows: range) -> Path:
    """The part file of chip rows ``rows``; names sort in row order."""
    return directory / f"rows-{rows.start:07d}-{rows.stop:07d}{SUFFIX}"


def write_part(path: Path, batches: Iterable[tuple[ChipBatch, np.ndarray]], embedding: EmbeddingLayout) -> int:
    """Stream ``(batch, embeddings)`` pairs into ``path`` atomically; returns the chips written."""
    size = embedding.dimensions * (embedding.patches[0] * embedding.patches[1] if embedding.dense else 1)
    schema = pa.schema([
        ("chip_row", pa.int32()), ("chip_col", pa.int32()), ("valid_fraction", pa.float32()),
        ("embedding", pa.list_(pa.float32(), size)),
    ])
    chips = 0
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as stream:
        for batch, embeddings in batches:
            flat = np.ascontiguousarray(embeddings, dtype="float32").reshape(-1)
            stream.write_batch(pa.record_batch([
                pa.array([c.row for c in batch.chips], pa.int32()),
                pa.array([c.col for c in batch.chips], pa.int32()),
                pa.array(batch.valid_fraction, pa.float32()),
                pa.FixedSizeListArray.from_arrays(pa.array(flat), size),
            ], schema=schema))
            chips += len(batch.chips)
    return chips


def read_parts(paths: Iterable[Path], chip_grid: ChipGrid,
               embedding: EmbeddingLayout) -> Iterator[tuple[ChipBatch, np.ndarray]]:
    """Replay part files as the ``(batch, embeddings)`` pairs the writers take (no pixels)."""
    shape = (embedding.dimensions, *embedding.patches) if embedding.dense else (embedding.dimensions,)
    for path in paths:
        with pa.memory_map(str(path)) as source, pa.ipc.open_stream(source) as stream:
            for record in stream:
                rows = record.column("chip_row").to_numpy()
                cols = record.column("chip_col").to_numpy()
                chips = [chip_grid.chip(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
                values = record.column("embedding").flatten().to_numpy().reshape(-1, *shape)
                fractions = record.column("valid_fraction").to_numpy()
                yield ChipBatch(chips, np.empty((len(chips), 0), "float32"), fractions), values
