"""Approximate nearest-neighbour indexes of an embeddings collection, for ``similar``.

``build_index(catalog)`` writes, next to each embeddings collection's ``collection.json`` (chip or
dense, GeoParquet or GeoTIFF only: the chips ``EmbeddingItem.iter_chips`` reads):

- ``index-<digest>.faiss``: a FAISS ``IndexHNSWFlat`` (inner product over unit vectors, i.e.
  cosine), in FAISS's own file format (``faiss.write_index``; nothing is pickled);
- ``index-<digest>.parquet``: its sidecar, one row per index position: the chip (``id``,
  ``item``, ``row`` in the item's chips (``iter_chips`` order), ``chip_row``/``chip_col``, source item and
  collection, ``datetime``, WGS84 ``geometry`` and ``bbox``), so a search answers from the
  index alone, and filters by bbox, datetime and item without reading the items. Its schema
  metadata ``stacembed:index`` records what the index was built from: each item's id and the
  checksum (``file:checksum``) of the file its chips are read from, the model and the dimensions;

and registers both as collection assets (``index``, ``index-chips``; role ``index``) through an
atomic rewrite of ``collection.json``. ``<digest>`` is the digest of the items, so an index and
its sidecar always belong together, whatever a crash interrupted.

An index is *stale* when an item it would search is not in it with the same checksum (an item
was added or embedded again): ``open_index`` then returns None (``similar`` scans that
collection exactly, with a warning) and ``build_index`` rebuilds it. Items of the index that a
search leaves out (filters, a catalog opened at one item) are masked, not a reason to rebuild.
Over http(s) the index and its sidecar are downloaded once per process and version of the files
(``embeddings.cached_copy``), not at every search.

Why FAISS and not USearch, measured on this project's 2-core machine with 200,000 x 384
clustered unit vectors (200 classes x 20 sub-classes on a 48-dimensional manifold, plus noise;
1,000 queries near catalog vectors; HNSW M/connectivity 16, efConstruction/expansion_add 128;
efSearch/expansion_search 32; recall@10 against exact search):

===============================  =======  =======  ==============  =========  ======
library, index                   build    open     single queries  recall@10  size
===============================  =======  =======  ==============  =========  ======
FAISS 1.15 IndexHNSWFlat         25.8 s   0.22 s   10,600 q/s      1.000      336 MB
FAISS IndexHNSWSQ (8-bit)        18.1 s   0.05 s   25,800 q/s      0.973      106 MB
FAISS IndexIVFFlat (nprobe 8)     7.2 s   0.14 s    9,300 q/s      1.000      312 MB
USearch 2.26 f32                 42.2 s   0.04 s    9,200 q/s      0.994      337 MB
USearch f16                      35.7 s   0.03 s   11,000 q/s      0.992      183 MB
USearch i8                       25.2 s   0.04 s   14,000 q/s      0.908      107 MB
===============================  =======  =======  ==============  =========  ======

On vectors whose neighbours are all but equidistant (1,000 isotropic clusters), recall at
efSearch 128 was 0.73 for FAISS HNSW and 0.61 for USearch f32. FAISS builds the same HNSW graph
in 60 % of USearch's time, at the same recall, speed and size, and searches with a filter
natively (``IDSelectorBitmap``), which ``--bbox``/``--datetime`` need; USearch's Python API has
no filtered search (a filter would mean over-fetching and retrying). USearch opens its file
memory-mapped, instantly; FAISS reads it whole (about a second per 1.5 GB). HNSW needs no
training (IVF's recall depends on how well its k-means cells fit the data), and flat storage
keeps the vectors exact, so a filter that keeps few chips is answered exactly from the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._version import __version__
from ..embeddings import BATCH_ROWS, EmbeddingCatalog, EmbeddingItem, cached_copy, is_url, open_embeddings, read_errors
from ..errors import ConfigError, OutputError, ReadError
from ..layout import atomic_path, file_sha256, write_json
from .derived import describe_model, model_of
from .scan import (
    CHIP_SCHEMA,
    SCAN_COLUMNS,
    Filters,
    TopK,
    catalog_order,
    chip_rows,
    cosine,
    scan,
    select_items,
)

log = logging.getLogger("stacembed")

INDEX_ASSET = "index"
SIDECAR_ASSET = "index-chips"
INDEX_METADATA_KEY = b"stacembed:index"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
HNSW_M = 16  # graph degree (as measured below): 128 bytes of links a vector on the base layer
EF_CONSTRUCTION = 128
EF_SEARCH = 128  # at least; raised for large k and for filters that keep few chips
# A filter that keeps at most this many chips is answered by scoring them all (exact), from the
# vectors the index holds: HNSW's filtered search loses recall when few nodes pass.
BRUTE_FORCE_BELOW = 20_000
SIDECAR_ROW_GROUP = 1024  # small: a search reads the row groups of its k hits
ADD_ROWS = 32_768  # vectors handed to FAISS at a time (its insertion is parallel within a call)
SIDECAR_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("item", pa.string()),
    ("row", pa.int64()),
    ("source_item", pa.string()),
    ("source_collection", pa.string()),
    ("chip_row", pa.int32()),
    ("chip_col", pa.int32()),
    ("datetime", pa.timestamp("us", tz="UTC")),
    ("geometry", pa.binary()),
    ("bbox", pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])),
])


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - a dependency; named for installs without it
        raise ConfigError("the similarity index needs FAISS: pip install faiss-cpu") from None
    return faiss


@dataclass(frozen=True)
class IndexReport:
    """What ``build_index`` did for one collection."""

    collection: str
    index: Path
    chips: int
    built: bool  # False: the index was up to date and kept
    seconds: float
    size: int  # bytes of the index file


# -- fingerprints ---------------------------------------------------------------------------------

def fingerprint(item: EmbeddingItem) -> str:
    """What identifies the contents of the file ``item``'s chips are read from (its GeoParquet,
    else its COG): its ``file:checksum``, else the SHA-256 of the file (local) or its size and
    href (remote)."""
    href = item.chips_href
    asset = next((a for key, a in item.stac_item.assets.items()
                  if (key == "embeddings" or key.startswith("embeddings-")) and a.get_absolute_href() == href), None)
    fields = asset.extra_fields if asset is not None else {}
    if fields.get("file:checksum"):
        return str(fields["file:checksum"])
    if not is_url(href):
        with read_errors(href):
            return "1220" + file_sha256(Path(href))
    return f"size:{fields.get('file:size')}:{href}"


def items_digest(fingerprints: dict[str, str], model: dict[str, Any]) -> str:
    text = json.dumps({"items": sorted(fingerprints.items()), "model": model}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- building -------------------------------------------------------------------------------------

def build_index(
    catalog: str | Path | EmbeddingCatalog, *, collections: Sequence[str] = (), force: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> list[IndexReport]:
    """Build (or keep, when up to date and not ``force``) the index of each embeddings
    collection of a local ``catalog``; one report per collection."""
    catalog = catalog if isinstance(catalog, EmbeddingCatalog) else open_embeddings(catalog)
    items = select_items(catalog, collections)
    reports = []
    for collection_id, group in _collections(items):
        reports.append(_build_one(collection_id, group, force, batch_rows))
    return reports


def _build_one(collection_id: str, items: list[EmbeddingItem], force: bool, batch_rows: int) -> IndexReport:
    faiss = _faiss()
    collection_file = _collection_file(items[0])
    if collection_file is None or is_url(str(collection_file)):
        raise ConfigError(f"collection {collection_id!r} is not a local file: an index is written next to its "
                          "collection.json, so build it on a local copy of the catalog")
    # Every item of the collection, also when the catalog was opened at one of them.
    items = select_items(open_embeddings(collection_file))
    models = {json.dumps(model_of(item), sort_keys=True) for item in items}
    if len(models) > 1:
        raise ConfigError(f"collection {collection_id!r} mixes embeddings of different models or dimensions: "
                          "it cannot have one index")
    model = model_of(items[0])
    prints = {item.id: fingerprint(item) for item in items}
    digest = items_digest(prints, model)
    current = json.loads(collection_file.read_text()).get("assets", {}).get(INDEX_ASSET, {})
    index_path = collection_file.parent / f"index-{digest[:16]}.faiss"
    sidecar_path = collection_file.parent / f"index-{digest[:16]}.parquet"
    if (not force and current.get("stacembed:index", {}).get("items_digest") == digest
            and index_path.is_file() and sidecar_path.is_file()):
        log.info("index of %s is up to date (%s)", collection_id, index_path.name)
        return IndexReport(collection_id, index_path, current["stacembed:index"].get("chips", 0), False, 0.0,
                           index_path.stat().st_size)

    started = time.perf_counter()
    dims = model.get("dimensions")
    index = None
    count = pending_rows = 0
    pending: list[np.ndarray] = []
    metadata = {"library": "faiss", "faiss_version": faiss.__version__, "type": "IndexHNSWFlat", "M": HNSW_M,
                "ef_construction": EF_CONSTRUCTION, "metric": "cosine", "model": model,
                "items": [[item.id, prints[item.id]] for item in items], "items_digest": digest,
                "stacembed_version": __version__}
    with atomic_path(sidecar_path) as sidecar_tmp:
        with pq.ParquetWriter(sidecar_tmp, SIDECAR_SCHEMA, compression="zstd") as writer:
            for item in items:
                offset = 0
                for batch, vectors in item.iter_chips(batch_rows, columns=SCAN_COLUMNS):
                    if dims is None:
                        dims = vectors.shape[1]
                    if vectors.shape[1] != dims:
                        raise ConfigError(f"item {item.id!r} has {vectors.shape[1]}-d vectors, its collection "
                                          f"{collection_id!r} {dims}-d ones: it cannot have one index")
                    if index is None:
                        index = faiss.IndexHNSWFlat(dims, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                        index.hnsw.efConstruction = EF_CONSTRUCTION
                    pending.append(_normalized(vectors))
                    pending_rows += len(vectors)
                    if pending_rows >= ADD_ROWS:
                        index.add(np.concatenate(pending))
                        pending, pending_rows = [], 0
                    rows = chip_rows(batch, item)
                    sidecar = pa.table({
                        "id": rows.column("id"), "item": rows.column("item"),
                        "row": pa.array(np.arange(offset, offset + batch.num_rows), pa.int64()),
                        "source_item": rows.column("source_item"),
                        "source_collection": rows.column("source_collection"),
                        "chip_row": rows.column("chip_row"), "chip_col": rows.column("chip_col"),
                        "datetime": rows.column("datetime"), "geometry": rows.column("geometry"),
                        "bbox": pc.cast(batch.column("bbox"), SIDECAR_SCHEMA.field("bbox").type) if item.placed
                        else pa.nulls(batch.num_rows, SIDECAR_SCHEMA.field("bbox").type),  # pixel coordinates
                    }, schema=SIDECAR_SCHEMA)
                    writer.write_table(sidecar, row_group_size=SIDECAR_ROW_GROUP)
                    offset += batch.num_rows
                    count += batch.num_rows
            if pending:
                index.add(np.concatenate(pending))
            if index is None or count == 0:
                raise ConfigError(f"collection {collection_id!r} has no chips to index")
            metadata.update({"chips": count, "dimensions": dims})
            writer.add_key_value_metadata({INDEX_METADATA_KEY: json.dumps(metadata)})
    try:
        with atomic_path(index_path) as index_tmp:
            faiss.write_index(index, str(index_tmp))
    except BaseException:
        sidecar_path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    _register(collection_file, index_path, sidecar_path, metadata)
    log.info("indexed %d chips of %s in %.1f s (%s)", count, collection_id, seconds, index_path.name)
    return IndexReport(collection_id, index_path, count, True, seconds, index_path.stat().st_size)


def _register(collection_file: Path, index_path: Path, sidecar_path: Path, metadata: dict[str, Any]) -> None:
    """Name the index and its sidecar in ``collection.json`` (read again now, rewritten atomically),
    and remove the files of the index they replace."""
    collection = json.loads(collection_file.read_text())
    assets = collection.setdefault("assets", {})
    old = [assets.get(key, {}).get("href") for key in (INDEX_ASSET, SIDECAR_ASSET)]
    summary = {key: metadata[key] for key in ("library", "faiss_version", "type", "metric", "chips", "dimensions",
                                              "items_digest")}
    summary["model"] = metadata["model"].get("model")
    summary["created"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assets[INDEX_ASSET] = {
        "href": f"./{index_path.name}", "type": "application/octet-stream", "roles": ["index"],
        "title": f"Approximate nearest-neighbour index of the chip embeddings (FAISS {metadata['type']}, cosine)",
        "description": "Read with faiss.read_index; position i is row i of the index-chips asset. "
                       "Used by `stacembed similar`; rebuilt by `stacembed index`.",
        "file:size": index_path.stat().st_size, "stacembed:index": summary,
    }
    assets[SIDECAR_ASSET] = {
        "href": f"./{sidecar_path.name}", "type": "application/vnd.apache.parquet", "roles": ["index", "metadata"],
        "title": "The chips of the index, by position (item, chip_row, chip_col, footprint, datetime)",
        "file:size": sidecar_path.stat().st_size,
    }
    extensions = collection.setdefault("stac_extensions", [])
    if not any("/file/" in url for url in extensions):
        extensions.append(FILE_EXTENSION)
    write_json(collection_file, collection)
    for href in old:
        if href and Path(href).name not in (index_path.name, sidecar_path.name):
            (collection_file.parent / Path(href).name).unlink(missing_ok=True)


# -- searching ------------------------------------------------------------------------------------

class ChipIndex:
    """An opened, up-to-date index of one collection, restricted to the items searched."""

    def __init__(self, index: Any, sidecar_path: str, metadata: dict[str, Any], items: Sequence[EmbeddingItem]) -> None:
        self.index = index
        self.sidecar = pq.ParquetFile(sidecar_path)
        self.metadata = metadata
        self.item_ids = [item.id for item in items]
        self.indexed_ids = [entry[0] for entry in metadata["items"]]
        self._filter_columns: pa.Table | None = None

    def close(self) -> None:
        self.sidecar.close()

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Positions searched: chips of the items asked for that pass ``filters``; None: all."""
        mask = None
        if set(self.item_ids) != set(self.indexed_ids):
            mask = pc.is_in(self.sidecar.read(columns=["item"]).column("item"),
                            pa.array(self.item_ids)).to_numpy(zero_copy_only=False)
        if filters.active:
            if self._filter_columns is None:  # read once per opened index
                self._filter_columns = self.sidecar.read(columns=["bbox", "datetime"])
            rows = filters.rows(self._filter_columns)
            mask = rows if mask is None else mask & rows
        return mask

    def search(self, query: np.ndarray, k: int, filters: Filters,
               order: dict[tuple[str | None, str], int]) -> tuple[np.ndarray, np.ndarray, pa.Table, int]:
        """``(scores, keys (item order, row), chip rows, chips searched)`` of the ``k`` best."""
        faiss = _faiss()
        mask = self.mask(filters)
        searched = self.size if mask is None else int(mask.sum())
        wanted = min(k, searched)
        if wanted == 0:
            return np.empty(0, "float32"), np.empty((0, 2), "int64"), self._rows(np.empty(0, "int64")), 0
        positions = scores = None
        if mask is not None and searched <= BRUTE_FORCE_BELOW:
            scores, positions = self._brute_force(query, np.flatnonzero(mask), wanted)
        else:
            ef = max(EF_SEARCH, 2 * wanted)
            params = faiss.SearchParametersHNSW()
            bitmap = None
            if mask is not None:
                ef = min(max(ef, int(ef * self.size / searched)), 4096)
                bitmap = np.packbits(mask, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
            params.efSearch = ef
            found_scores, found = self.index.search(query[None].astype("float32"), wanted, params=params)
            del bitmap  # held until the search is done (the selector points into it)
            keep = found[0] >= 0
            scores, positions = found_scores[0][keep], found[0][keep]
            if len(positions) < wanted:  # the graph walk found too few chips that pass: score them all
                scores, positions = self._brute_force(query, np.flatnonzero(mask), wanted)
        rows = self._rows(positions)
        collection = self.metadata.get("collection")
        places = [order.get((collection, item_id), len(order)) for item_id in rows.column("item").to_pylist()]
        keys = np.column_stack([np.array(places, "int64"),
                                rows.column("row").to_numpy(zero_copy_only=False).astype("int64")])
        return (scores.astype("float32"), keys, rows.select(CHIP_SCHEMA.names).cast(CHIP_SCHEMA), searched)

    def _brute_force(self, query: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        top = TopK(k)
        for start in range(0, len(positions), 8192):
            chunk = positions[start:start + 8192]
            vectors = self.index.reconstruct_batch(chunk)
            keys = np.column_stack([np.zeros(len(chunk), "int64"), chunk])
            top.push(cosine(vectors, query), keys)
        return top.scores, top.keys[:, 1]

    def _rows(self, positions: np.ndarray) -> pa.Table:
        """The sidecar rows at ``positions``, in that order (reading only their row groups)."""
        columns = ["id", "item", "row", "source_item", "source_collection", "chip_row", "chip_col", "datetime",
                   "geometry"]
        meta = self.sidecar.metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        ascending = np.argsort(positions, kind="stable")
        wanted = np.asarray(positions, "int64")[ascending]
        groups = np.searchsorted(starts, wanted, side="right") - 1
        chosen = np.unique(groups)
        if len(chosen):  # the row groups read come one after the other, in ascending order
            within = np.concatenate([[0], np.cumsum([meta.row_group(int(g)).num_rows for g in chosen])[:-1]])
            offsets = wanted - starts[groups] + within[np.searchsorted(chosen, groups)]
            rows = self.sidecar.read_row_groups([int(g) for g in chosen], columns=columns).take(pa.array(offsets))
        else:
            rows = self.sidecar.schema_arrow.empty_table().select(columns)
        back = np.empty(len(ascending), "int64")
        back[ascending] = np.arange(len(ascending))
        rows = rows.take(pa.array(back))
        collection = self.metadata.get("collection")
        return rows.add_column(2, "collection", pa.array([collection] * len(rows), pa.string()))


def open_index(items: Sequence[EmbeddingItem]) -> ChipIndex | None:
    """The up-to-date index of the collection of ``items`` (all of one collection), or None:
    none was built, or it is stale (then a warning says so)."""
    collection = items[0].stac_item.get_collection()
    if collection is None or INDEX_ASSET not in collection.assets or SIDECAR_ASSET not in collection.assets:
        return None
    index_href = collection.assets[INDEX_ASSET].get_absolute_href()
    sidecar_href = collection.assets[SIDECAR_ASSET].get_absolute_href()
    missing = [href for href in (index_href, sidecar_href) if not is_url(href) and not Path(href).is_file()]
    if missing:
        log.warning("the index of collection %s names %s, which is missing: searching it exactly; run "
                    "`stacembed index` to rebuild it", collection.id, missing[0])
        return None
    with read_errors(sidecar_href):
        sidecar_path = cached_copy(sidecar_href)
        metadata = json.loads((pq.read_metadata(sidecar_path).metadata or {}).get(INDEX_METADATA_KEY, b"{}"))
    indexed = {item_id: value for item_id, value in metadata.get("items", [])}
    changed = [item.id for item in items if indexed.get(item.id) != fingerprint(item)]
    if changed:
        log.warning("the index of collection %s is stale (%d item(s) added or changed since it was built, "
                    "e.g. %s): searching it exactly; run `stacembed index` to rebuild it",
                    collection.id, len(changed), changed[0])
        return None
    model = model_of(items[0])
    if metadata.get("model") != model:
        log.warning("the index of collection %s was built for %s, not %s: searching it exactly",
                    collection.id, describe_model(metadata.get("model") or {}), describe_model(model))
        return None
    metadata["collection"] = collection.id
    index = _read_index(index_href)
    if index.ntotal != metadata.get("chips"):
        raise ReadError(f"index {index_href} holds {index.ntotal} vectors, its sidecar {metadata.get('chips')}: "
                        "rebuild it with `stacembed index --force`")
    log.info("searching collection %s with its index (%d chips)", collection.id, index.ntotal)
    with read_errors(sidecar_href):
        return ChipIndex(index, sidecar_path, metadata, items)


def _read_index(href: str) -> Any:
    faiss = _faiss()
    with read_errors(href):
        path = cached_copy(href)
        try:
            return faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ReadError(f"cannot read index {href}: {str(exc).splitlines()[0] if str(exc) else 'FAISS error'}; "
                            "rebuild it with `stacembed index --force`") from None


def _collection_file(item: EmbeddingItem) -> Path | None:
    collection = item.stac_item.get_collection()
    href = collection.get_self_href() if collection is not None else None
    return Path(href) if href and not is_url(href) else None


def _collections(items: Sequence[EmbeddingItem]) -> list[tuple[str, list[EmbeddingItem]]]:
    groups: dict[str, list[EmbeddingItem]] = {}
    for item in items:
        if item.collection_id is None:
            raise OutputError(f"item {item.id!r} belongs to no collection: an index is a collection asset")
        groups.setdefault(item.collection_id, []).append(item)
    return list(groups.items())


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1), dtype="float32")


# -- checking -------------------------------------------------------------------------------------

def check_index(catalog: str | Path | EmbeddingCatalog, *, queries: int = 100, k: int = 10, seed: int = 0,
                collections: Sequence[str] = (), batch_rows: int = BATCH_ROWS) -> dict[str, float]:
    """Recall@k of indexed search against exact search, per collection: the share of the exact
    top k that the index finds, over ``queries`` chips drawn at random (each chip's own vector is
    a query; exact search answers all of them in one pass over the items)."""
    catalog = catalog if isinstance(catalog, EmbeddingCatalog) else open_embeddings(catalog)
    items = select_items(catalog, collections)
    order = catalog_order(items)
    rng = np.random.default_rng(seed)
    recalls = {}
    for collection_id, group in _collections(items):
        index = open_index(group)
        if index is None:
            raise ConfigError(f"collection {collection_id!r} has no up-to-date index: run `stacembed index` first")
        try:
            sample = np.sort(rng.choice(index.size, size=min(queries, index.size), replace=False))
            vectors = _normalized(index.index.reconstruct_batch(sample))
            kk = min(k, index.size)
            approximate = [index.search(vector, kk, Filters(), order)[1] for vector in vectors]
        finally:
            index.close()
        tops = [TopK(kk) for _ in vectors]
        scan(group, order, vectors, Filters(), tops, batch_rows)
        found = sum(len({tuple(key) for key in found} & {tuple(key) for key in top.keys})
                    for found, top in zip(approximate, tops, strict=True))
        recalls[collection_id] = found / (kk * len(vectors))
    return recalls
