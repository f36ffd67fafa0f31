"""Embedding catalogs in the shapes other tools read: a NeuCo-Bench CSV, one joint GeoParquet.

Both read the catalogs ``stacembed run`` writes through ``open_embeddings`` / ``iter_chips`` (so
GeoParquet and COG-only items, local or over http(s), and every stored type alike), a batch at a
time, and write atomically (``layout.atomic_path``): a failure leaves no file, or the old one.

**NeuCo-Bench / Embed2Scale CSV** (``export_neuco``). The format is what NeuCo-Bench's own loader
reads: ``load_submission`` in embed2scale/NeuCo-Bench@a89ba063cca71aab7d86660081f0bf02e41fdd12,
``benchmark/data/embeddings.py`` (documented in ``docs/embedding_generation.md``; the challenge's
checker is ``test_submission`` in ``generate_embeddings/data/submission_utils.py``):

- ``pd.read_csv``; a column ``id`` is required (else ValueError); ``.zarr.zip`` then ``.zarr`` are
  cut out of every id (SSL4EO-S12 ids are file names), ids are matched to the annotations' ids;
- the dimension columns are those whose names are digits, sorted as integers (all other columns
  when there are none): we write ``id,0,1,...,D-1``, as the docs' example and the challenge's
  ``create_submission_from_dict`` do;
- ``embedding_dim`` (config; None: inferred from the columns): more columns than it is an error,
  fewer are zero-padded. ``dim`` here does the same: pads with zeros, refuses to truncate;
- values go through ``pd.to_numeric(errors="coerce").fillna(0.0)``: NaN (and anything not a
  number) becomes 0. We write 0 for NaN ourselves, so the file also passes the challenge's
  ``test_submission``, which rejects NaN; ``NeucoExport.nan_filled`` counts them.

Ids are written as they are; pandas parses an id column that looks numeric as numbers (``0012``
becomes ``12``), and the loader cuts ``.zarr`` out of ids: name samples accordingly.

``mode="sample"`` pools the chips of each sample to their mean (float64 sums, per dimension over
the values that are not NaN; a dimension NaN in every chip is 0). A sample is an embedding item
(``sample_id="item"``), a source item (``"source_item"``, the default) or the value of any chip
column. Embeddings of sample cubes (``resolve.cubes``) carry their sample in the chip column
``stacembed:sample``, the default for them: every chip of every season of a sample is one row, named
as the challenge names it (the cube's file name without ``.zarr.zip``; SSL4EO-S12's ``sample``).
``mode="chip"`` writes one row per chip, its ``id`` the chip id. Memory: one batch, plus a
running sum and count (16 bytes x D) per open sample and the ids written so far. Rows are written
as samples complete: a sample is complete when an item passes without it (at once for ``item``),
which holds when each sample's chips lie in consecutive items (stacembed's items: one source item
each). Should a written sample come back later, the export starts over holding every sample open to
the end (memory: all samples' sums), so the file is right either way.

**One joint table** (``export_joint``). Every chip of the catalogs in one GeoParquet 1.1 file (or a
hive-partitioned directory of them): the item files' columns, then ``native_crs`` (the chip's
native CRS: ``EPSG:<code>`` when it has one, else its PROJJSON), ``collection`` and ``item`` (the
embedding collection and item), and the source properties' columns (union over items; a column
whose type differs between items becomes float64 if all are numbers, else a string). ``geometry``
is the footprint in OGC:CRS84 (WKB) with its ``bbox`` covering column; ``native_geometry`` (WKB) and
``native_xmin..native_ymax`` are the footprint in ``native_crs``, so chips of different UTM zones
mix without losing their georeferencing. ``native_geometry`` is declared a geometry column of the
``geo`` metadata only when every chip has the same native CRS (GeoParquet allows one CRS per
column); otherwise it is plain WKB, its CRS in ``native_crs``.

Embeddings are written float32 (float32 as stored, int8 dequantized with each file's parameters);
float16 stays float16 when every item stores float16 (lossless, half the size). int8 is not kept:
each item file has its own quantization parameters, and one table has one column. So the table has
no quantization, and any reader (``embeddings.read_geoparquet``, DuckDB's ``embedding::FLOAT[D]``)
takes the values as they are. The schema metadata key ``stacembed:embeddings`` (JSON) mirrors the
collection's ``emb:`` fields (``emb:type``, ``emb:dimensions``, ``data_type`` of this table,
``emb:chip_layout``) and the model (``mlm:name``, ``mlm:architecture``, ``weights_sha256`` of the
items' runtime parameters), with the source data types, the collections, and how the rows are
ordered.

Rows are ordered along a Hilbert curve (``hilbert_index``: 32 bits per axis over lon -180..180, lat
-90..90, of the centre of each chip's ``bbox``), so that a row group covers a compact area and
readers skip row groups by the ``bbox`` column statistics. Row groups hold ``row_group_rows`` rows
(default: about 64 MiB of uncompressed data, 1,024 to 65,536 rows), sized for range reads.

Memory, honestly: a global sort needs every key. Pass one streams each item once (one batch in
memory) into a local spool (lz4 Parquet in a hidden directory next to the output, removed at the
end: disk about the size of the output) and keeps 16 bytes per chip (uint64 key, uint32 spool row
group, uint32 row; 20 with partitions). Sorting them takes an 8-byte index and permuted copies: at
most about 40 bytes per chip for a moment (10 million chips: some 400 MB), then 8 (12) bytes per
chip while pass two writes the rows in key order, one output row group at a time, reading the spool
row groups it needs one at a time: one output row group (two copies while it is assembled) and one
spool row group. A spool row group whose chips lie far apart on the curve is read once per output
row group it feeds (more reading, not more memory).

With ``partition_by`` (any of ``collection``, ``date``, ``utm_zone``) the output is a directory of
``<key>=<value>/.../part-0.parquet`` files (hive layout: the values are in the paths, not in the
files), each sorted along the curve. ``date`` is the chip's UTC date (``YYYY-MM-DD``); ``utm_zone``
is the native CRS's UTM zone (``32N``) when it is a UTM CRS, else the zone of the chip's centre
(the regular 6-degree zones); a missing value is ``__HIVE_DEFAULT_PARTITION__``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyproj import CRS

from ._version import __version__
from .embeddings import BATCH_ROWS, EmbeddingCatalog, EmbeddingItem, open_embeddings
from .errors import ConfigError, OutputError, ReadError
from .layout import atomic_path
from .writers.geoparquet import geo_metadata, parquet_writer

log = logging.getLogger("stacembed")

METADATA_KEY = b"stacembed:embeddings"
HILBERT_BITS = 32  # per axis: cells of 360 / 2**32 degrees (about a centimetre)
ROW_GROUP_BYTES = 64 << 20  # uncompressed bytes per row group of the joint table
ROW_GROUP_ROWS = (1024, 65_536)  # the least and most rows per row group (default sizing)
OTHER_BYTES_PER_ROW = 800  # a chip's columns besides its embedding: footprints (~650 bytes), ids
PARTITIONS = ("collection", "date", "utm_zone")
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
SAMPLE_IDS = ("item", "source_item")
SPOOL_CACHE = 16  # spool files kept open while the joint table is written
# The joint table's columns in order (those an item has); the source properties follow.
JOINT_COLUMNS = (
    "id", "geometry", "bbox", "native_geometry", "native_crs", "embedding", "datetime", "source_item",
    "source_collection", "collection", "item", "chip_row", "chip_col", "col_off", "row_off", "width", "height",
    "native_xmin", "native_ymin", "native_xmax", "native_ymax", "valid_fraction",
)
_ADDED = ("native_crs", "collection", "item")  # columns the joint table adds to the items'
_CSV_SPECIAL = re.compile(r'[",\r\n]')


@dataclass(frozen=True)
class NeucoExport:
    """What ``export_neuco`` wrote: ``rows`` rows of ``dimensions`` values (the items' ``source_dimensions``,
    zero-padded), ``nan_filled`` NaN values written as 0."""

    path: Path
    mode: str
    rows: int
    dimensions: int
    source_dimensions: int | None
    nan_filled: int


@dataclass(frozen=True)
class JointExport:
    """What ``export_joint`` wrote: ``rows`` chips in ``files`` Parquet files (one without partitions)."""

    path: Path
    rows: int
    files: int
    row_group_rows: int
    data_type: str
    native_crs: tuple[str, ...]
    partition_by: tuple[str, ...] | None


CatalogLike = str | Path | EmbeddingCatalog


# --- what the items share ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What every item must agree on to share one table, and what describes them."""

    dimensions: int | None
    kind: str | None
    data_types: tuple[str, ...]
    chip_layouts: tuple[dict[str, Any], ...]
    model: dict[str, Any] | None
    output: Any
    collections: tuple[str, ...]


def _items(catalog: CatalogLike | Sequence[CatalogLike]) -> tuple[EmbeddingItem, ...]:
    """The embedding items of one catalog or several (an item reached twice counts once)."""
    sources = [catalog] if isinstance(catalog, str | Path | EmbeddingCatalog) else list(catalog)
    if not sources:
        raise ConfigError("no catalog to export: give a catalog.json, collection, item or run directory")
    items: list[EmbeddingItem] = []
    seen: set[str] = set()
    for source in sources:
        opened = source if isinstance(source, EmbeddingCatalog) else open_embeddings(source)
        for item in opened:
            if item.chips_href not in seen:
                seen.add(item.chips_href)
                items.append(item)
    return tuple(items)


def _model(item: EmbeddingItem) -> dict[str, Any] | None:
    collection = item.stac_item.get_collection()
    parameters = {**((collection.extra_fields if collection else {}).get("emb:runtime_parameters") or {}),
                  **(item.stac_item.properties.get("emb:runtime_parameters") or {})}
    model = {key: parameters[key] for key in ("mlm:name", "mlm:architecture", "mlm:pretrained", "weights_sha256")
             if parameters.get(key) is not None}
    return model or None


def _facts(items: Sequence[EmbeddingItem]) -> _Facts:
    """The items' shared facts; a ``ConfigError`` when their vectors cannot share columns."""
    dimensions = sorted({item.dimensions for item in items if item.dimensions is not None})
    if len(dimensions) > 1:
        raise ConfigError(f"the items have embeddings of different sizes (emb:dimensions {dimensions}): "
                          "export each catalog on its own")
    kinds = sorted({item.kind for item in items if item.kind})
    if len(kinds) > 1:
        raise ConfigError(f"the items mix embedding kinds (emb:type {kinds}): export each catalog on its own")
    models = []
    for item in items:
        model = _model(item)
        identity = None if model is None else {k: model.get(k) for k in ("mlm:name", "weights_sha256")}
        if identity is not None and identity not in [m for m, _ in models]:
            models.append((identity, model))
    if len(models) > 1:
        names = ", ".join(f"{m.get('mlm:name')} (weights {str(m.get('weights_sha256'))[:12]})" for m, _ in models)
        raise ConfigError(f"the items were embedded by different models ({names}); their vectors are not "
                          "comparable: export each catalog on its own")
    layouts: list[dict[str, Any]] = []
    for item in items:
        if item.chip_layout and item.chip_layout not in layouts:
            layouts.append(item.chip_layout)
    collection = items[0].stac_item.get_collection() if items else None
    return _Facts(
        dimensions=dimensions[0] if dimensions else None, kind=kinds[0] if kinds else None,
        data_types=tuple(sorted({item.data_type or "float32" for item in items})), chip_layouts=tuple(layouts),
        model=models[0][1] if models else None,
        output=(collection.extra_fields.get("mlm:output") if collection else None),
        collections=tuple(dict.fromkeys(item.collection_id for item in items if item.collection_id)),
    )


def _checked(vectors: np.ndarray, dims: int | None, item: EmbeddingItem) -> int:
    """The width of ``vectors``, which must be ``dims`` (when known)."""
    width = vectors.shape[1]
    if dims is not None and width != dims:
        raise ReadError(f"item {item.id!r} has embeddings of {width} values, other items (or its collection) "
                        f"{dims}: they cannot share one table")
    return width


def _output_path(out: str | Path) -> Path:
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    return path


# --- NeuCo-Bench CSV --------------------------------------------------------------------------------


class _SampleCameBack(Exception):
    """A sample whose row was written has more chips: the items are not contiguous in it."""


def export_neuco(
    catalog: CatalogLike | Sequence[CatalogLike], out_csv: str | Path, *, mode: str = "sample",
    dim: int | None = None, sample_id: str | None = None, batch_rows: int = BATCH_ROWS,
) -> NeucoExport:
    """Write the embeddings of ``catalog`` (one or several) as a NeuCo-Bench CSV: ``id,0,...,D-1``.

    ``mode="sample"``: one row per sample, the mean of its chips; ``sample_id`` is ``"source_item"``
    (default; for embeddings of sample cubes ``"stacembed:sample"``, the sample id), ``"item"`` (the
    embedding item) or a chip column whose values name the samples.
    ``mode="chip"``: one row per chip, its id the chip id (no ``sample_id``). ``dim`` pads the
    vectors with zeros to ``dim`` values (NeuCo-Bench's ``embedding_dim``); smaller than the
    embeddings is an error, as in NeuCo-Bench. NaN is written as 0 (what NeuCo-Bench makes of it).
    """
    if mode not in ("sample", "chip"):
        raise ConfigError(f"unknown NeuCo-Bench export mode {mode!r}: use 'sample' (one mean vector per sample) "
                          "or 'chip' (one row per chip)")
    if mode == "chip" and sample_id is not None:
        raise ConfigError("sample_id applies to mode='sample'; in mode='chip' each row is a chip, named by its id")
    if dim is not None and dim < 1:
        raise ConfigError(f"dim must be a positive number of values, not {dim}")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be positive, not {batch_rows}")
    items = _items(catalog)
    key = sample_id or _default_sample(items)
    facts = _facts(items)
    if dim is not None and facts.dimensions is not None and dim < facts.dimensions:
        raise ConfigError(_truncating(facts.dimensions, dim))
    if mode == "sample" and key not in (*SAMPLE_IDS, "id") and _item_sample(items[0], key) is None:
        _check_column(items, key)
    path = _output_path(out_csv)
    for hold_all in (False, True):
        try:
            with atomic_path(path) as tmp:
                export = _Neuco(items, facts.dimensions, dim, mode, key, hold_all, batch_rows).write(tmp)
            return NeucoExport(path, mode, *export)
        except _SampleCameBack as back:
            log.info("sample %r comes back after other samples: pooling again, every sample open to the end",
                     *back.args)
    raise AssertionError("unreachable: holding every sample open, none comes back")


def _default_sample(items: Sequence[EmbeddingItem]) -> str:
    """What names a sample when none is asked: the cube sample (``resolve.cubes.SAMPLE``, so that a
    sample's seasons pool into its one row) when the items or their chips carry it, else the
    source item."""
    from .resolve.cubes import SAMPLE

    if items and (SAMPLE in items[0].stac_item.properties or SAMPLE in items[0].chips_schema().names):
        return SAMPLE
    return "source_item"


def _item_sample(item: EmbeddingItem, key: str) -> str | None:
    """The sample every chip of ``item`` belongs to when ``key`` names the item (``"item"``) or one of
    its properties (a cube's ``stacembed:sample``: GeoTIFF-only embeddings have no such column), else
    None: the chips name their samples."""
    if key == "item":
        return item.id
    value = item.stac_item.properties.get(key)
    return None if value is None else str(value)


def _truncating(found: int, dim: int) -> str:
    return (f"the embeddings have {found} values, more than dim={dim}; NeuCo-Bench refuses embeddings longer "
            f"than its embedding_dim, and stacembed does not truncate them: give dim >= {found} (or none)")


def _check_column(items: Sequence[EmbeddingItem], key: str) -> None:
    """``key`` must be a column of the chips (of the first item: all share the writer's columns)."""
    names = items[0].chips_schema().names if items else []
    if key not in names:
        raise ConfigError(f"sample_id {key!r} is neither 'item', 'source_item' nor a column of the chips "
                          f"(they have {', '.join(names)})")


@dataclass
class _Sample:
    sums: np.ndarray  # float64 (D,): sum of the values that are not NaN
    counts: np.ndarray  # int64 (D,): how many were summed
    last: int  # index of the last item that had chips of it


@dataclass
class _Neuco:
    items: Sequence[EmbeddingItem]
    dims: int | None
    dim: int | None
    mode: str
    key: str
    hold_all: bool
    batch_rows: int
    open: OrderedDict[str, _Sample] = field(default_factory=OrderedDict)
    written: set[str] = field(default_factory=set)
    pending: list[tuple[list[str], np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0
    rows: int = 0
    nan_filled: int = 0
    file: Any = None

    def write(self, path: Path) -> tuple[int, int, int | None, int]:
        """Write the CSV at ``path``: (rows, values per row, the embeddings' size, NaN written as 0)."""
        with open(path, "wb") as self.file:
            for index, item in enumerate(self.items):
                sample = None if self.mode == "chip" else _item_sample(item, self.key)
                columns = ["id"] if self.mode == "chip" or sample is not None or self.key == "id" else ["id", self.key]
                for batch, vectors in item.iter_chips(self.batch_rows, columns=columns):
                    self.dims = _checked(vectors, self.dims, item)
                    self._take(index, sample, batch, vectors)
                if self.mode == "sample" and not self.hold_all:
                    self._finish([s for s, sample in self.open.items() if self.key == "item" or sample.last < index])
            self._finish(list(self.open))
            self._flush()
            width = self._width()
            if not self.rows:  # not one chip: the header alone
                self.file.write(_header(width))
        if self.nan_filled:
            log.warning("%d NaN values of the embeddings written as 0 (as NeuCo-Bench reads them)", self.nan_filled)
        return self.rows, width, self.dims, self.nan_filled

    def _width(self) -> int:
        if self.dim is not None:
            return self.dim
        return self.dims or 0

    def _take(self, index: int, sample: str | None, batch: pa.RecordBatch, vectors: np.ndarray) -> None:
        """Add the chips of item ``index`` to their samples: ``sample`` for all, else each chip's column."""
        if self.mode == "chip":
            self._add(batch.column("id").to_pylist(), vectors)
            return
        if sample is not None:
            names = np.full(len(vectors), sample, dtype=object)
        else:
            column = batch.column(self.key)
            if column.null_count:
                item = self.items[index]
                raise ReadError(f"item {item.id!r} has chips without a {self.key!r}: they belong to no sample")
            names = np.asarray(pc.cast(column, pa.string()).to_pylist(), dtype=object)
        unique, inverse = np.unique(names, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(unique)))
        finite = ~np.isnan(vectors)
        sums = np.add.reduceat(np.where(finite, vectors, 0).astype("float64")[order], starts, axis=0)
        counts = np.add.reduceat(finite[order].astype("int64"), starts, axis=0)
        for name, total, count in zip(unique.tolist(), sums, counts, strict=True):
            if name in self.written:
                raise _SampleCameBack(name)
            sample = self.open.get(name)
            if sample is None:
                self.open[name] = _Sample(total, count, index)
            else:
                sample.sums += total
                sample.counts += count
                sample.last = index

    def _finish(self, names: list[str]) -> None:
        """Write the means of samples ``names``, complete."""
        if not names:
            return
        samples = [self.open.pop(name) for name in names]
        counts = np.stack([s.counts for s in samples])
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.stack([s.sums for s in samples]) / counts
        self.written.update(names)
        self._add(names, means.astype("float32"))

    def _add(self, ids: list[str], vectors: np.ndarray) -> None:
        if self.mode == "chip":
            fresh = [i for i in ids if i not in self.written]
            if len(fresh) != len(ids) or len(set(ids)) != len(ids):
                duplicate = next(i for i in ids if i in self.written or ids.count(i) > 1)
                raise ReadError(f"chip id {duplicate!r} occurs twice (the same item in two catalogs?): "
                                "NeuCo-Bench ids must be unique")
            self.written.update(ids)
        self.pending.append((ids, vectors))
        self.pending_rows += len(ids)
        if self.pending_rows >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        """Write the pending rows: NaN as 0, zero-padded to the width."""
        if not self.pending:
            return
        ids = [i for part, _ in self.pending for i in part]
        vectors = np.concatenate([v for _, v in self.pending])
        self.pending, self.pending_rows = [], 0
        width = self._width()
        if vectors.shape[1] > width:
            raise ConfigError(_truncating(vectors.shape[1], width))
        nan = np.isnan(vectors)
        if nan.any():
            self.nan_filled += int(nan.sum())
            vectors = np.where(nan, np.float32(0), vectors)
        if not self.rows:
            self.file.write(_header(width))
        columns = [pa.array(ids, pa.string())]
        columns += [pa.array(vectors[:, j]) for j in range(vectors.shape[1])]
        columns += [pa.array(np.zeros(len(ids), "float32"))] * (width - vectors.shape[1])
        batch = pa.RecordBatch.from_arrays(columns, names=["id", *map(str, range(width))])
        # Quotes only where an id needs them, as pandas' to_csv writes (pyarrow quotes every string).
        quoting = "needed" if any(_CSV_SPECIAL.search(i) for i in ids) else "none"
        pacsv.write_csv(batch, self.file, pacsv.WriteOptions(include_header=False, quoting_style=quoting))
        self.rows += len(ids)


def _header(width: int) -> bytes:
    return (",".join(["id", *map(str, range(width))]) + "\n").encode()


# --- the Hilbert curve ------------------------------------------------------------------------------


def hilbert_index(lon: np.ndarray, lat: np.ndarray, bits: int = HILBERT_BITS) -> np.ndarray:
    """uint64 distances along a Hilbert curve of ``2**bits`` x ``2**bits`` cells over lon -180..180,
    lat -90..90 (``bits`` <= 32); NaN sorts last. The classic ``xy2d`` (Hilbert 1891; the iterative
    form of Wikipedia's "Hilbert curve"), a bit per step, vectorised."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be 1..32, not {bits}")
    lon, lat = np.asarray(lon, "float64"), np.asarray(lat, "float64")
    cells = float(1 << bits)
    missing = ~(np.isfinite(lon) & np.isfinite(lat))
    x = np.clip(np.floor((np.nan_to_num(lon) + 180.0) / 360.0 * cells), 0, cells - 1).astype("uint64")
    y = np.clip(np.floor((np.nan_to_num(lat) + 90.0) / 180.0 * cells), 0, cells - 1).astype("uint64")
    return _xy2d(x, y, bits) | np.where(missing, np.uint64(np.iinfo("uint64").max), np.uint64(0))


def _xy2d(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """Distances along the curve of the cells ``x``, ``y`` (uint64 arrays, < ``2**bits``)."""
    x, y = x.astype("uint64", copy=True), y.astype("uint64", copy=True)
    last = np.uint64((1 << bits) - 1)
    d = np.zeros(x.shape, "uint64")
    for level in range(bits - 1, -1, -1):
        s = np.uint64(1 << level)
        rx = (x & s) != 0
        ry = (y & s) != 0
        d += np.uint64(s * s) * ((3 * rx.astype("uint64")) ^ ry.astype("uint64"))
        flip = rx & ~ry
        x = np.where(flip, last - x, x)
        y = np.where(flip, last - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
    return d


def _centres(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """lon, lat of the centre of each chip's ``bbox`` (NaN where null)."""
    box = batch.column("bbox")
    xmin, ymin, xmax, ymax = (pc.struct_field(box, name).to_numpy(zero_copy_only=False).astype("float64")
                              for name in ("xmin", "ymin", "xmax", "ymax"))
    return (xmin + xmax) / 2, (ymin + ymax) / 2


# --- one joint table --------------------------------------------------------------------------------


def export_joint(
    catalog: CatalogLike | Sequence[CatalogLike], out: str | Path, *,
    partition_by: Sequence[str] | str | None = None, row_group_rows: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> JointExport:
    """Write every chip of ``catalog`` (one or several) into one GeoParquet ``out``, Hilbert-ordered.

    ``partition_by`` (``collection``, ``date``, ``utm_zone``, in the order given): a hive-partitioned
    directory ``out`` instead. ``row_group_rows``: rows per row group (default: about 64 MiB). See
    the module's docstring for the columns, the metadata and the memory it takes.
    """
    partitions = _partitions(partition_by)
    if row_group_rows is not None and row_group_rows < 1:
        raise ConfigError(f"row_group_rows must be positive, not {row_group_rows}")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be positive, not {batch_rows}")
    items = _items(catalog)
    unplaced = [item.id for item in items if not item.placed]
    if unplaced:
        raise ConfigError(f"the joint table is in OGC:CRS84, and {', '.join(map(repr, unplaced[:3]))}"
                          f"{' and more' if len(unplaced) > 3 else ''} have no georeferencing (pixel coordinates "
                          "only); export the others (export neuco takes any item)")
    facts = _facts(items)
    path = _output_path(out)
    if partitions and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{path} exists: a partitioned table is written as a new directory; remove it or "
                          "choose another")
    if not partitions and path.is_dir():
        raise OutputError(f"{path} is a directory: give a file name (e.g. all.parquet), or partition_by")
    data_type = "float16" if facts.data_types == ("float16",) else "float32"
    with atomic_path(path) as tmp:
        spool_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.spool-", dir=path.parent))
        try:
            spool = _Spool(spool_dir, data_type, partitions)
            for item in items:
                spool.add(item, batch_rows, facts.dimensions)
            dims = spool.dims or facts.dimensions or 0
            rows = row_group_rows or _row_group_rows(dims, np.dtype(data_type).itemsize)
            description = _description(items, facts, data_type, dims, spool, partitions)
            if partitions:
                tmp.mkdir()
            files = _Joint(spool, tmp, partitions, rows, description, items).write()
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)
    return JointExport(path, spool.count, files, rows, data_type,
                       tuple(sorted(spool.projjson)), partitions or None)


def _partitions(partition_by: Sequence[str] | str | None) -> tuple[str, ...]:
    if partition_by is None:
        return ()
    names = (partition_by,) if isinstance(partition_by, str) else tuple(partition_by)
    unknown = [name for name in names if name not in PARTITIONS]
    if unknown or len(set(names)) != len(names) or not names:
        raise ConfigError(f"partition_by takes some of {', '.join(PARTITIONS)} (each once), not {list(names)}")
    return names


def _row_group_rows(dims: int, itemsize: int) -> int:
    low, high = ROW_GROUP_ROWS
    return int(min(high, max(low, ROW_GROUP_BYTES // (dims * itemsize + OTHER_BYTES_PER_ROW))))


def _description(items: Sequence[EmbeddingItem], facts: _Facts, data_type: str, dims: int, spool: _Spool,
                 partitions: tuple[str, ...]) -> dict[str, Any]:
    layouts = list(facts.chip_layouts)
    description: dict[str, Any] = {
        "emb:type": facts.kind,
        "emb:dimensions": dims,
        "data_type": data_type,
        "emb:chip_layout": layouts[0] if len(layouts) == 1 else (layouts or None),
        "source_data_types": list(facts.data_types),
        "model": facts.model,
        "mlm:output": facts.output,
        "collections": list(facts.collections),
        "items": len(items),
        "columns": {"embedding": "embedding", "geometry": "geometry", "native_geometry": "native_geometry",
                    "native_crs": "native_crs"},
        "native_crs": sorted(spool.projjson),
        "order": {"curve": "hilbert", "bits": HILBERT_BITS, "extent": [-180.0, -90.0, 180.0, 90.0],
                  "point": "centre of the bbox column (OGC:CRS84)"},
        "partition_by": list(partitions) or None,
        "software": {"stacembed": __version__},
    }
    return description


class _Spool:
    """Pass one: every chip read once into local Parquet files (one per item, a row group per batch),
    and what sorts them (key, spool row group, row, partition) in memory."""

    def __init__(self, directory: Path, data_type: str, partitions: tuple[str, ...]) -> None:
        self.directory = directory
        self.data_type = data_type
        self.partitions = partitions
        self.dims: int | None = None
        self.paths: list[Path] = []
        self.schemas: list[pa.Schema] = []
        self.group_file: list[int] = []  # spool row group -> file
        self.group_index: list[int] = []  # spool row group -> row group of its file
        self.keys: list[np.ndarray] = []
        self.groups: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.parts: list[np.ndarray] = []
        self.part_codes: dict[tuple[str, ...], int] = {}
        self.projjson: dict[str, dict[str, Any]] = {}  # native_crs value -> PROJJSON
        self.empty_schema: pa.Schema | None = None
        self.count = 0  # chips spooled

    def add(self, item: EmbeddingItem, batch_rows: int, dims: int | None) -> None:
        writer = None
        native: tuple[str, str | None] | None = None
        file_index = len(self.paths)
        local_groups = 0
        path = self.directory / f"{file_index}.parquet"
        try:
            for batch, vectors in item.iter_chips(batch_rows):
                self.dims = _checked(vectors, dims or self.dims, item)
                if native is None:
                    native = self._native(batch.schema.metadata, item)
                table = self._table(batch, vectors, item, native[0])
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="lz4")
                    self.paths.append(path)
                    self.schemas.append(table.schema)
                writer.write_table(table, row_group_size=max(len(table), 1))
                n = len(table)
                self.count += n
                lon, lat = _centres(table)
                self.keys.append(hilbert_index(lon, lat))
                self.groups.append(np.full(n, len(self.group_file), "uint32"))
                self.rows.append(np.arange(n, dtype="uint32"))
                self.group_file.append(file_index)
                self.group_index.append(local_groups)
                local_groups += 1
                if self.partitions:
                    self.parts.append(self._parts(table, item, native, lon, lat))
        finally:
            if writer is not None:
                writer.close()
        if writer is None and self.empty_schema is None:
            self.empty_schema = _with_embedding(item.chips_schema(), self.dims or item.dimensions or 0,
                                                self.data_type)

    def _native(self, metadata: dict[bytes, bytes] | None, item: EmbeddingItem) -> tuple[str, str | None]:
        """(``native_crs`` value, UTM zone or None) of the item's chips, from its ``geo`` metadata."""
        try:
            projjson = json.loads((metadata or {})[b"geo"])["columns"]["native_geometry"]["crs"]
            crs = CRS.from_json_dict(projjson)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReadError(f"item {item.id!r}: its chips state no native CRS (geo metadata of "
                            f"native_geometry): {exc}") from None
        authority = crs.to_authority(min_confidence=100)
        value = f"{authority[0]}:{authority[1]}" if authority else crs.to_json()
        self.projjson.setdefault(value, projjson)
        zone = crs.utm_zone
        return value, (f"{int(zone[:-1]):02d}{zone[-1].upper()}" if zone else None)

    def _table(self, batch: pa.RecordBatch, vectors: np.ndarray, item: EmbeddingItem, native_crs: str) -> pa.Table:
        n = len(vectors)
        columns = {name: batch.column(name) for name in batch.schema.names}
        for name in _ADDED:  # a source property of that name keeps its value under "source:<name>"
            if name in columns:
                columns[f"source:{name}"] = columns.pop(name)
        flat = pa.array(np.ascontiguousarray(vectors, self.data_type).ravel())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        columns["native_crs"] = pa.repeat(pa.scalar(native_crs, pa.string()), n)
        columns["collection"] = pa.repeat(pa.scalar(item.collection_id, pa.string()), n)
        columns["item"] = pa.repeat(pa.scalar(item.id, pa.string()), n)
        return pa.table(columns)

    def _parts(self, table: pa.Table, item: EmbeddingItem, native: tuple[str, str | None],
               lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        n = len(table)
        values: list[np.ndarray] = []
        for name in self.partitions:
            if name == "collection":
                values.append(np.full(n, item.collection_id or NULL_PARTITION, dtype=object))
            elif name == "date":
                moment = table.column("datetime")
                days = pc.strftime(moment, format="%Y-%m-%d") if n else pa.array([], pa.string())
                values.append(np.asarray(pc.fill_null(days, NULL_PARTITION).to_pylist(), dtype=object))
            else:
                values.append(np.full(n, native[1], dtype=object) if native[1] else _utm_zones(lon, lat))
        joined = values[0].astype(object)
        for more in values[1:]:
            joined = joined + "\x1f" + more.astype(object)
        unique, inverse = np.unique(joined.astype(str), return_inverse=True)
        mapping = np.array([self.part_codes.setdefault(tuple(value.split("\x1f")), len(self.part_codes))
                            for value in unique.tolist()], "uint32")
        return mapping[inverse] if n else np.zeros(0, "uint32")


def _utm_zones(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The regular 6-degree UTM zones (``32N``) of points; no zone where they are not finite."""
    finite = np.isfinite(lon) & np.isfinite(lat)
    zone = np.clip(np.floor((np.nan_to_num(lon) + 180.0) / 6.0).astype("int64") + 1, 1, 60)
    names = np.char.add(np.char.zfill(zone.astype("U2"), 2), np.where(lat >= 0, "N", "S"))
    return np.where(finite, names.astype(object), NULL_PARTITION)


def _with_embedding(schema: pa.Schema, dims: int, data_type: str) -> pa.Schema:
    """The spool schema of an item without chips: its chips' columns, the embedding, the added ones."""
    fields = [f for f in schema if f.name not in _ADDED]
    fields.append(pa.field("embedding", pa.list_(pa.from_numpy_dtype(np.dtype(data_type)), dims)))
    fields += [pa.field(name, pa.string()) for name in _ADDED]
    return pa.schema(fields)


def _unified(schemas: Iterable[pa.Schema], drop: Iterable[str]) -> pa.Schema:
    """One schema for every item's columns: ``JOINT_COLUMNS`` first, then the others in the order met;
    a column typed differently by different items becomes float64 (numbers) or string."""
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            seen = types.setdefault(f.name, [])
            if f.type not in seen:
                seen.append(f.type)
    dropped = set(drop)
    names = [n for n in JOINT_COLUMNS if n in types] + [n for n in types if n not in JOINT_COLUMNS]
    fields = []
    for name in names:
        if name in dropped:
            continue
        options = [t for t in types[name] if not pa.types.is_null(t)] or [pa.string()]
        if len(options) == 1:
            kind = options[0]
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in options):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, others cast."""
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(len(table), f.type))
            continue
        column = table.column(f.name)
        if column.type != f.type:
            try:
                column = pc.cast(column, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ReadError(f"column {f.name!r} cannot be made {f.type} for one table: {exc}") from None
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


class _Joint:
    """Pass two: the spooled chips in (partition, Hilbert key) order, a row group at a time."""

    def __init__(self, spool: _Spool, target: Path, partitions: tuple[str, ...], rows_per_group: int,
                 description: dict[str, Any], items: Sequence[EmbeddingItem]) -> None:
        self.spool = spool
        self.target = target
        self.partitions = partitions
        self.rows_per_group = rows_per_group
        self.description = description
        self.schema = _unified(spool.schemas or [spool.empty_schema or _fallback_schema(items, description)],
                               drop=[p for p in partitions if p in _ADDED])
        self.files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    def write(self) -> int:
        spool = self.spool
        order = np.argsort(_drain(spool.keys, "uint64"), kind="stable")  # ties: in item order, then chip order
        groups = _drain(spool.groups, "uint32")[order]
        rows = _drain(spool.rows, "uint32")[order]
        if not self.partitions:
            del order
            self._file(self.target, groups, rows)
            return 1
        parts = _drain(spool.parts, "uint32")[order]
        del order
        by_part = np.argsort(parts, kind="stable")
        groups, rows, parts = groups[by_part], rows[by_part], parts[by_part]
        names = {code: value for value, code in spool.part_codes.items()}
        bounds = np.flatnonzero(np.diff(parts.astype("int64"))) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(parts)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if start == end:
                continue
            code = int(parts[start])
            directory = self.target.joinpath(*(f"{name}={quote(str(value), safe='')}"
                                               for name, value in zip(self.partitions, names[code], strict=True)))
            directory.mkdir(parents=True, exist_ok=True)
            self._file(directory / "part-0.parquet", groups[start:end], rows[start:end])
        return len(starts) if len(parts) else 0

    def _file(self, path: Path, groups: np.ndarray, rows: np.ndarray) -> None:
        """One GeoParquet of the chips at (``groups``, ``rows``) of the spool, in that order.

        ``native_geometry`` is a geometry column of the ``geo`` metadata when every chip of the
        export has one native CRS: the files of a partitioned table are read as one dataset, with
        the metadata of one of them, so a file's own CRS would be taken for all.
        """
        crs_values = list(self.spool.projjson.values())
        native = CRS.from_json_dict(crs_values[0]) if len(crs_values) == 1 else None
        metadata = {METADATA_KEY: json.dumps(self.description).encode()}
        schema = self.schema.with_metadata({**metadata, b"geo": json.dumps(_geo(native)).encode()})
        writer = parquet_writer(path, schema)
        extent = [math.inf, math.inf, -math.inf, -math.inf]
        native_extent = list(extent)
        try:
            for start in range(0, len(groups), self.rows_per_group):
                table = self._gather(groups[start:start + self.rows_per_group], rows[start:start + self.rows_per_group])
                extent = _grown(extent, table, "bbox")
                native_extent = _grown(native_extent, table, "native")
                writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=len(table))
            writer.add_key_value_metadata({"geo": json.dumps(_geo(native, extent, native_extent))})
        finally:
            writer.close()

    def _gather(self, groups: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The chips at (``groups``, ``rows``) of the spool, in that order: a spool row group at a time."""
        by_group = np.argsort(groups, kind="stable")
        sorted_groups = groups[by_group]
        cuts = np.flatnonzero(np.diff(sorted_groups.astype("int64"))) + 1
        pieces = []
        for run in np.split(by_group, cuts):
            group = int(groups[run[0]])
            source = self._spool_file(self.spool.group_file[group]).read_row_group(self.spool.group_index[group])
            pieces.append(_conform(source.take(pa.array(rows[run])), self.schema))
        table = pa.concat_tables(pieces)
        return table.take(pa.array(np.argsort(by_group, kind="stable")))

    def _spool_file(self, index: int) -> pq.ParquetFile:
        if index in self.files:
            self.files.move_to_end(index)
            return self.files[index]
        reader = pq.ParquetFile(self.spool.paths[index])
        self.files[index] = reader
        if len(self.files) > SPOOL_CACHE:
            _, old = self.files.popitem(last=False)
            old.close()
        return reader


def _drain(parts: list[np.ndarray], dtype: str) -> np.ndarray:
    """``parts`` in one array; the list is emptied, so that its arrays are freed."""
    whole = np.concatenate(parts) if parts else np.zeros(0, dtype)
    parts.clear()
    return whole


def _fallback_schema(items: Sequence[EmbeddingItem], description: dict[str, Any]) -> pa.Schema:
    return _with_embedding(items[0].chips_schema(), description["emb:dimensions"], description["data_type"])


def _geo(native: CRS | None, extent: list[float] | None = None, native_extent: list[float] | None = None) -> dict:
    """GeoParquet 1.1 ``geo`` metadata: ``geometry`` (OGC:CRS84, bbox covering); ``native_geometry``
    only when the file's chips share one native CRS."""
    geo = geo_metadata(native or CRS.from_user_input("OGC:CRS84"), extent, native_extent)
    if native is None:
        del geo["columns"]["native_geometry"]
    return geo


def _grown(extent: list[float], table: pa.Table, which: str) -> list[float]:
    """``extent`` grown over the ``bbox`` covering (``which="bbox"``) or the native bounds of ``table``."""
    if not len(table):
        return extent
    if which == "bbox":
        box = table.column("bbox")
        parts = [pc.struct_field(box, name) for name in ("xmin", "ymin", "xmax", "ymax")]
    elif all(f"native_{n}" in table.column_names for n in ("xmin", "ymin", "xmax", "ymax")):
        parts = [table.column(f"native_{n}") for n in ("xmin", "ymin", "xmax", "ymax")]
    else:
        return extent
    lows = [pc.min(p).as_py() for p in parts[:2]]
    highs = [pc.max(p).as_py() for p in parts[2:]]
    if any(v is None for v in (*lows, *highs)):
        return extent
    return [min(extent[0], lows[0]), min(extent[1], lows[1]), max(extent[2], highs[0]), max(extent[3], highs[1])]
