"""The training set: every chip of a catalog that labels cover, with its vector and its label.

Chips are read a batch at a time (``EmbeddingItem.iter_chips``), labelled on their own
footprints in their native CRS (``Labels.per_chip``), and those covered at least
``min_fraction`` are kept. Their vectors go to a memory-mapped file in a working directory, so
the memory a training set takes is its labels and keys, not its vectors; heads read the
vectors a mini-batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from rasterio.crs import CRS
from tqdm.auto import tqdm

from ..analysis.derived import embedding_grid
from ..embeddings import BATCH_ROWS, EmbeddingItem
from ..errors import ConfigError, LabelError
from .labels import Labels

# What a sample keeps of its chip: where it is (to split by place and to write predictions) and
# what it was cut from (to join the baseline's chips).
KEY_COLUMNS = ("id", "source_item", "chip_row", "chip_col", "geometry")
_BOUNDS = ("native_xmin", "native_ymin", "native_xmax", "native_ymax")


@dataclass(frozen=True)
class Samples:
    """Labelled chips: ``vectors`` (n, D) float32 (memory-mapped), ``targets`` (class codes or
    values), ``fractions`` covered, ``keys`` (item, chip and footprint per row), chip
    ``centres`` (x, y in ``crs``) and ``crs`` per row, ``extent`` (CRS units across a chip),
    and ``method``: how the labels were brought onto the chips, as the outputs record it."""

    vectors: np.ndarray
    targets: np.ndarray
    fractions: np.ndarray
    keys: pa.Table
    centres: np.ndarray
    crs: np.ndarray
    extent: float
    method: str

    def __len__(self) -> int:
        return len(self.targets)

    def item_ids(self) -> np.ndarray:
        """The source item of each chip (a split by items holds out whole source items)."""
        return np.asarray(self.keys.column("source_item").to_pylist(), object)

    def join_keys(self) -> list[tuple[str, int, int]]:
        """``(source_item, chip_row, chip_col)`` per row: a chip's place, whatever model embedded it."""
        return list(zip(self.keys.column("source_item").to_pylist(), self.keys.column("chip_row").to_pylist(),
                        self.keys.column("chip_col").to_pylist(), strict=True))


def collect(items: Sequence[EmbeddingItem], labels: Labels, work: Path, *, min_fraction: float,
            batch_rows: int = BATCH_ROWS, progress: bool = False, name: str = "vectors") -> Samples:
    """The chips of ``items`` that ``labels`` cover at least ``min_fraction``; their vectors are
    written to ``work/<name>.f32`` as they are found."""
    path = work / f"{name}.f32"
    parts: dict[str, list] = {"targets": [], "fractions": [], "keys": [], "centres": [], "crs": []}
    extents: list[float] = []
    methods: dict[str, None] = {}
    dimensions = 0
    with open(path, "wb") as file, tqdm(desc="labelling chips", unit="chip", disable=not progress) as bar:
        for crs, batch, vectors in _chips(items, batch_rows):
            bounds = np.column_stack([batch.column(name).to_numpy() for name in _BOUNDS])
            resolution = (bounds[:, 2] - bounds[:, 0]) / batch.column("width").to_numpy()
            found = labels.per_chip(crs, bounds, (float(resolution[0]), float(resolution[0])))
            kept = found.kept(min_fraction)
            methods[found.describe(min_fraction)] = None
            bar.update(len(vectors))
            if not kept.any():
                continue
            dimensions = vectors.shape[1]
            file.write(np.ascontiguousarray(vectors[kept], "float32").tobytes())
            parts["targets"].append(found.labels[kept])
            parts["fractions"].append(found.fraction[kept])
            parts["keys"].append(pa.Table.from_batches([batch]).select(list(KEY_COLUMNS)).filter(pa.array(kept)))
            parts["centres"].append(np.column_stack([(bounds[kept, 0] + bounds[kept, 2]) / 2,
                                                     (bounds[kept, 1] + bounds[kept, 3]) / 2]))
            parts["crs"].append(np.full(int(kept.sum()), crs.to_string(), object))
            extents.append(float(bounds[0, 2] - bounds[0, 0]))
    if not parts["targets"]:
        path.unlink()
        raise LabelError(f"the labels cover no chip of the embeddings by at least {min_fraction:g} of its area "
                         "(check that they overlap the embeddings, or lower --min-label-fraction)")
    count = sum(len(t) for t in parts["targets"])
    vectors = np.memmap(path, dtype="float32", mode="r", shape=(count, dimensions))
    return Samples(vectors, np.concatenate(parts["targets"]), np.concatenate(parts["fractions"]),
                   pa.concat_tables(parts["keys"]), np.concatenate(parts["centres"]), np.concatenate(parts["crs"]),
                   max(extents), " / ".join(methods))


def _chips(items: Sequence[EmbeddingItem], batch_rows: int) -> Iterator[tuple[CRS, pa.RecordBatch, np.ndarray]]:
    """``(native CRS, chip rows, vectors)`` a batch at a time, over every item."""
    columns = [*KEY_COLUMNS, *_BOUNDS, "width"]
    for item in items:
        crs = embedding_grid(item).crs
        if crs is None:  # labels are placed on the map, chips without georeferencing are not
            raise ConfigError(f"labels meet chips by place, and item {item.id!r} has no georeferencing "
                              "(pixel coordinates only); leave it out")
        for batch, vectors in item.iter_chips(batch_rows, columns=columns):
            if len(vectors):
                yield crs, batch, vectors
