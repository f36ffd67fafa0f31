"""Streaming k-means over the chip embeddings of a catalog, published as class maps in STAC.

``cluster_catalog(catalog, k=..., out=...)`` reads every chip vector twice, in bounded batches
(``EmbeddingItem.iter_chips``: a GeoParquet row group at a time, or windows of the COG of a
GeoTIFF-only or dense item, whose chips are its pixels: patches, for dense embeddings), so memory
is bounded by the batch, never by the catalog:

1. **fit**: scikit-learn's ``MiniBatchKMeans.partial_fit`` on chunks of the vectors, in catalog
   order, seeded (``seed``): the same catalog and arguments give the same centroids;
2. **label**: each chip gets its nearest centroid (Euclidean, computed in float64, here, so
   that labelling with stored centroids, ``--apply``, gives the same labels as the run that
   fitted them).

Per embedding item it writes a class map (a uint8 COG on the item's embedding grid: chips, or
patches for dense embeddings; 255 where no chip was kept, with a colour table) and the cluster
of every chip (GeoParquet: the chip's footprint, chip_row, chip_col, source item, cluster),
published as one STAC item with the classification extension v2.0.0
(``classification:classes``: value, name, title, colour, count) linked ``derived_from`` its
embedding item. The collection holds the centroids
(``centroids.parquet``: k rows of D float32, with the model they belong to), so that
``centroids=`` labels another catalog of the same model with the same clusters.
"""

from __future__ import annotations

import colorsys
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..embeddings import EmbeddingItem, is_url, local_copy, open_embeddings, read_errors
from ..errors import ConfigError, ReadError
from ..grid import Grid
from ..stac import COG, FILE, ITEM_ASSETS, PARQUET, PROCESSING, PROJECTION
from .chipmap import Layer, map_chips
from .derived import (
    AnalysisError,
    DerivedOutput,
    NoChipError,
    catalog_href,
    describe_model,
    embedding_grid,
    file_asset,
    item_key,
    one_model,
    processing,
    projection_fields,
    time_properties,
    unique_ids,
    write_cog,
)

log = logging.getLogger("stacembed")

CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
NODATA = 255  # class map value where no chip was kept; so k is at most 255
MAX_K = 255
BATCH_ROWS = 4096  # vectors read (and fitted) at a time
CENTROIDS_FILE = "centroids.parquet"
CENTROIDS_KEY = b"stacembed:centroids"
CENTROIDS_ROLE = "centroids"
CLASS_ASSET, LABELS_ASSET = "classes", "labels"
# The columns of an embeddings GeoParquet that the labels file keeps, with the cluster.
@dataclass(frozen=True)
class Centroids:
    """k centroids in one embedding space: ``values`` (k, D) float32, the model they belong to
    (``derived.model_of``), the seed and the number of chips they were fitted on."""

    values: np.ndarray
    model: dict[str, Any]
    seed: int | None = None
    chips: int | None = None

    def __repr__(self) -> str:
        return (f"Centroids(k={self.k}, dimensions={self.dimensions}, model={self.model.get('model')!r}, "
                f"seed={self.seed}, chips={self.chips})")

    @property
    def k(self) -> int:
        return len(self.values)

    @property
    def dimensions(self) -> int:
        return int(self.values.shape[1])

    def label(self, vectors: np.ndarray) -> np.ndarray:
        """The nearest centroid of each of ``vectors`` (n, D), as uint8.

        Squared Euclidean distances in float64 (``|x|^2 - 2 x.c + |c|^2``), so that rounding
        does not depend on how the vectors were batched: the labels of a chip are the same in
        the run that fitted the centroids and in any run that applies them.
        """
        x = np.asarray(vectors, "float64")
        c = self.values.astype("float64")
        distances = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
        return distances.argmin(axis=1).astype("uint8")

    def check_fits(self, model: dict[str, Any], what: str) -> None:
        """Refuse vectors of another embedding space (dimensions, or model) in one line."""
        if model.get("dimensions") != self.dimensions:
            raise AnalysisError(f"{what} holds {model.get('dimensions')}-d embeddings ({describe_model(model)}); "
                                f"the centroids are {self.dimensions}-d ({describe_model(self.model)})")
        if {**model, "dimensions": None} != {**self.model, "dimensions": None}:
            raise AnalysisError(f"{what} holds embeddings of {describe_model(model)}; the centroids were fitted on "
                                f"{describe_model(self.model)}, whose vectors are not comparable with them")

    def metadata(self) -> dict[str, Any]:
        return {"k": self.k, "dimensions": self.dimensions, "model": self.model, "seed": self.seed,
                "chips": self.chips}

    def write(self, path: Path) -> None:
        """A Parquet table, one row per cluster (``cluster``, ``name``, ``color_hint``,
        ``centroid`` as a fixed-size list of float32), the model in its schema metadata."""
        from ..layout import atomic_path

        classes = class_objects(self.k)[: self.k]
        flat = pa.array(np.ascontiguousarray(self.values, "float32").ravel(), pa.float32())
        table = pa.table({
            "cluster": pa.array(np.arange(self.k), pa.uint8()),
            "name": pa.array([c["name"] for c in classes], pa.string()),
            "color_hint": pa.array([c["color_hint"] for c in classes], pa.string()),
            "centroid": pa.FixedSizeListArray.from_arrays(flat, self.dimensions),
        }).replace_schema_metadata({CENTROIDS_KEY: json.dumps(self.metadata()).encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    @classmethod
    def read(cls, href: str | Path) -> Centroids:
        """Centroids from a ``centroids.parquet``, or from the cluster output that holds one (its
        ``--out`` directory, ``catalog.json`` or ``collection.json``; local or http(s))."""
        href = _centroids_href(str(href))
        with read_errors(href), local_copy(href) as path:
            table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(CENTROIDS_KEY)
        if raw is None or "centroid" not in table.column_names:
            raise ReadError(f"{href} holds no centroids of `stacembed cluster` (no {CENTROIDS_KEY.decode()} metadata)")
        meta = json.loads(raw)
        column = table.column("centroid").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
        order = np.argsort(table.column("cluster").to_numpy())
        return cls(values[order].astype("float32"), meta["model"], meta.get("seed"), meta.get("chips"))


@dataclass(frozen=True)
class ClusterResult:
    """What ``cluster_catalog`` wrote: the catalog and collection, the items, chips labelled,
    the centroids (and where they are stored)."""

    catalog: Path
    collection: Path
    items: tuple[str, ...]
    chips: int
    centroids: Centroids
    centroids_file: Path


def cluster_catalog(
    catalog: str | Path,
    *,
    out: str | Path,
    k: int | None = None,
    seed: int = 0,
    centroids: str | Path | Centroids | None = None,
    batch_rows: int = BATCH_ROWS,
    output_collection: str | None = None,
    progress: bool = True,
    table: bool = True,
) -> ClusterResult:
    """Cluster the chip embeddings of ``catalog`` into ``k`` clusters and publish the class maps
    under ``out`` (see the module's description); ``centroids`` (stored centroids, or where
    they are) labels with those instead of fitting. ``table`` False: the class maps only, no
    table of every chip (dense embeddings hold millions of pixels)."""
    items = list(open_embeddings(catalog))
    what = f"catalog {catalog}"
    model = one_model(items, what)
    given = None
    if centroids is not None:
        given = centroids if isinstance(centroids, Centroids) else Centroids.read(centroids)
        given.check_fits(model, what)
        if k is not None and k != given.k:
            raise ConfigError(f"--k {k} differs from the {given.k} clusters of the centroids given; leave --k out")
        k = given.k
    elif k is None:
        raise ConfigError("give the number of clusters (--k N), or centroids to apply (--apply CENTROIDS)")
    _check_k(k)
    output = DerivedOutput(Path(out), output_collection or f"clusters-k{k}")
    output.check_free()  # before the fit, which may take long
    fitted = given or fit_centroids(items, k, seed=seed, batch_rows=batch_rows, progress=progress, model=model)
    source = centroids if given is not None else None
    with output.writing():
        chips = _label_items(output, items, fitted, batch_rows=batch_rows, progress=progress, table=table)
        centroids_path = output.staging / CENTROIDS_FILE
        fitted.write(centroids_path)
        _write_collection(output, fitted, catalog, source, centroids_path, table)
    return ClusterResult(output.catalog_file, output.layout.collection_file, tuple(i["id"] for i in output.items),
                         chips, fitted, output.layout.collection_dir / CENTROIDS_FILE)


def fit_centroids(
    items: Sequence[EmbeddingItem], k: int, *, seed: int = 0, batch_rows: int = BATCH_ROWS, progress: bool = True,
    model: dict[str, Any] | None = None,
) -> Centroids:
    """Mini-batch k-means over every chip vector of ``items``, read a batch at a time.

    The vectors are fitted in chunks of ``max(batch_rows, 3k)`` (the first must hold at least k
    for k-means++ to start), in catalog order; with the same ``seed`` the same items give the
    same centroids, whichever file (GeoParquet or COG) their chips are read from.
    """
    from sklearn.cluster import MiniBatchKMeans

    _check_k(k)
    model = model or one_model(items, "the items")
    total = _chip_count(items)
    if total is not None and k > total:
        raise AnalysisError(f"--k {k} is more than the {total} chips the catalog holds; choose k <= {total}")
    chunk_rows = max(batch_rows, 3 * k)
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=chunk_rows, n_init=1,
                             compute_labels=False)
    seen = 0
    with tqdm(total=total, desc="fitting k-means", unit="chip", disable=not progress) as bar:
        for chunk in _chunks(_vectors(items, batch_rows, bar), chunk_rows):
            if seen == 0 and len(chunk) < k:
                raise AnalysisError(f"--k {k} is more than the {len(chunk)} chips the catalog holds; "
                                    f"choose k <= {len(chunk)}")
            kmeans.partial_fit(chunk)
            seen += len(chunk)
    if seen == 0:
        raise AnalysisError("the catalog's embedding items hold no chip (every chip was skipped): nothing to cluster")
    return Centroids(kmeans.cluster_centers_.astype("float32"), model, seed, seen)


def class_objects(k: int, counts: np.ndarray | None = None) -> list[dict[str, Any]]:
    """``classification:classes`` of a class map of ``k`` clusters (v2.0.0 class objects), the
    no-chip value last; with ``counts``, each class's number of chips and share of them."""
    classes = []
    total = int(counts.sum()) if counts is not None else 0
    for value, color in enumerate(palette(k)):
        entry: dict[str, Any] = {"value": value, "name": f"cluster-{value}", "title": f"Cluster {value}",
                                 "color_hint": "".join(f"{c:02X}" for c in color)}
        if counts is not None:
            entry["count"] = int(counts[value])
            entry["percentage"] = round(100.0 * int(counts[value]) / total, 4) if total else 0.0
        classes.append(entry)
    classes.append({"value": NODATA, "name": "no-chip", "title": "No chip",
                    "description": "No chip embedding at this position (skipped, or outside the item)", "nodata": True})
    return classes


def palette(k: int) -> list[tuple[int, int, int]]:
    """k distinct colours (RGB), the same for the same k: hues spaced by the golden angle, in
    two lightness levels so neighbours in hue still differ."""
    colors = []
    for i in range(k):
        hue = (i * 0.6180339887498949) % 1.0
        value = 0.95 if i % 2 == 0 else 0.7
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def colormap(k: int) -> dict[int, tuple[int, int, int, int]]:
    """The class map's colour table: the palette, and transparent black for no chip."""
    table = {value: (*color, 255) for value, color in enumerate(palette(k))}
    table[NODATA] = (0, 0, 0, 0)
    return table


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"--k must be between 1 and {MAX_K} (the class map is uint8, 255 means no chip); got {k}")


def _chip_count(items: Sequence[EmbeddingItem]) -> int | None:
    """Chips in the items' GeoParquet files, from their footers (local files only; None when
    any file is remote, not downloaded an extra time to count, or any item has no GeoParquet:
    counting a COG's chips would read it whole)."""
    total = 0
    for item in items:
        href = item.hrefs.get("geoparquet")
        if href is None or is_url(href):
            return None
        with read_errors(href):
            total += pq.ParquetFile(href).metadata.num_rows
    return total


def _vectors(items: Sequence[EmbeddingItem], batch_rows: int, bar: tqdm) -> Iterator[np.ndarray]:
    for item in items:
        for _, vectors in item.iter_chips(batch_rows, columns=[]):
            bar.update(len(vectors))
            yield vectors


def _chunks(batches: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The batches regrouped into chunks of exactly ``rows`` vectors (the last may be fewer), so
    that the fit does not depend on how the files are batched."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch)
        while count >= rows:
            joined = np.concatenate(pending)
            yield joined[:rows]
            pending, count = [joined[rows:]], count - rows
    if count:
        yield np.concatenate(pending)


def _label_items(output: DerivedOutput, items: Sequence[EmbeddingItem], centroids: Centroids, *,
                 batch_rows: int, progress: bool, table: bool = True) -> int:
    """The labelling pass: a class map, a labels table (if ``table``) and an item per embedding item."""
    ids = unique_ids(items)
    chips = 0
    with tqdm(total=_chip_count(items), desc="labelling chips", unit="chip", disable=not progress) as bar:
        for item in items:
            item_id = ids[item_key(item)]
            try:
                grid = embedding_grid(item)
            except NoChipError as exc:
                log.warning("%s: no class map for it", exc)
                continue
            made = map_chips(item, grid, output.asset_path(item_id, "geoparquet") if table else None,
                             lambda vectors: {"cluster": centroids.label(vectors)},
                             layers=[Layer("cluster", "uint8", NODATA)], columns={"cluster": pa.uint8()},
                             batch_rows=batch_rows, on_batch=bar.update)
            chips += made.chips
            _write_item(output, item_id, item, centroids, grid, made.maps["cluster"][0], table)
    return chips


def _write_item(output: DerivedOutput, item_id: str, item: EmbeddingItem, centroids: Centroids, grid: Grid,
                classes: np.ndarray, table: bool) -> None:
    counts = np.bincount(classes[classes != NODATA], minlength=centroids.k)[: centroids.k]
    map_path = output.asset_path(item_id, "geotiff")
    write_cog(map_path, classes, grid, nodata=NODATA, colormap=colormap(centroids.k),
              description=f"cluster (k-means, k={centroids.k}; {NODATA}: no chip)",
              tags={"STAC_ITEM_ID": item_id, "DERIVED_FROM": item.id})
    assets = {
        CLASS_ASSET: file_asset(
            map_path, media_type=COG, roles=["data", "classification"], title=_CLASS_MAP_TITLE,
            **{"classification:classes": class_objects(centroids.k, counts)}, **projection_fields(grid)),
    }
    if table:
        assets[LABELS_ASSET] = file_asset(output.asset_path(item_id, "geoparquet"), media_type=PARQUET,
                                          roles=["data"], title=_LABELS_TITLE)
    properties = {
        **time_properties(item),
        **processing(_lineage(centroids, item), _software()),
        "stacembed:clusters": {"k": centroids.k, "seed": centroids.seed, "model": centroids.model.get("model"),
                               "dimensions": centroids.dimensions},
    }
    output.add_item(item_id, geometry=item.stac_item.geometry, bbox=item.bbox, properties=properties,
                    extensions=[CLASSIFICATION, PROJECTION, FILE, PROCESSING], assets=assets, sources=[item])


_CLASS_MAP_TITLE = "Cluster of each chip (uint8 class map on the embeddings' grid of chips or patches; 255: no chip)"
_LABELS_TITLE = "Cluster of each chip (GeoParquet: footprint, chip_row, chip_col, source item, cluster)"


def _lineage(centroids: Centroids, item: EmbeddingItem) -> str:
    fitted = (f"fitted with seed {centroids.seed} on {centroids.chips} chips" if centroids.chips is not None
              else "given")
    return (f"Each chip embedding of item {item.id!r} ({describe_model(centroids.model)}) labelled with the nearest "
            f"of {centroids.k} k-means centroids (scikit-learn MiniBatchKMeans, {fitted})")


def _software() -> dict[str, str]:
    import sklearn

    return {"scikit-learn": sklearn.__version__, "numpy": np.__version__}


def _write_collection(output: DerivedOutput, centroids: Centroids, catalog: str | Path,
                      source: str | Path | Centroids | None, centroids_path: Path, table: bool = True) -> None:
    derived_from = [(catalog_href(catalog), "Embeddings")]
    if isinstance(source, (str, Path)):
        derived_from.append((_centroids_href(str(source)), "Centroids applied"))
    how = ("labelled with centroids fitted on another catalog" if source is not None
           else f"k-means, seed {centroids.seed}, fitted on {centroids.chips} chips")
    output.write_collection(
        title=f"Clusters of chip embeddings (k={centroids.k})",
        description=(f"Every chip embedding of {describe_model(centroids.model)} labelled with the nearest of "
                     f"{centroids.k} centroids ({how}): a class map{' and a labels table' if table else ''} "
                     "per embedding item."),
        extensions=[CLASSIFICATION, ITEM_ASSETS, FILE],
        item_assets={
            CLASS_ASSET: {"type": COG, "roles": ["data", "classification"], "title": _CLASS_MAP_TITLE,
                          "classification:classes": class_objects(centroids.k)},
            **({LABELS_ASSET: {"type": PARQUET, "roles": ["data"], "title": _LABELS_TITLE}} if table else {}),
        },
        assets={"centroids": file_asset(
            centroids_path, media_type=PARQUET, roles=["metadata", CENTROIDS_ROLE],
            title=f"The {centroids.k} centroids ({centroids.dimensions} float32 each) and the model they belong to; "
                  "`stacembed cluster --apply` labels other catalogs with them")},
        derived_from=derived_from,
        extra={"stacembed:clusters": centroids.metadata()},
    )


def _centroids_href(href: str) -> str:
    """The centroids file of ``href``: itself, or the ``centroids`` asset of the cluster
    collection that ``href`` is (or that the catalog or directory at ``href`` links)."""
    if Path(href).is_dir():
        href = str(Path(href) / "catalog.json")
    if not urlparse(href).path.endswith(".json"):
        return href
    import pystac

    from ..access import Access

    try:
        stac = pystac.read_file(href, stac_io=Access().stac_io(href))
    except Exception as exc:  # pystac's StacIO raises a bare Exception for HTTP errors
        raise ReadError(f"cannot read {href}: {exc}") from None
    collections = [stac] if isinstance(stac, pystac.Collection) else (
        list(stac.get_children()) if isinstance(stac, pystac.Catalog) else [])
    found = [asset.get_absolute_href() or asset.href for collection in collections
             for asset in collection.assets.values() if CENTROIDS_ROLE in (asset.roles or [])]
    if len(found) != 1:
        raise ReadError(f"{href} {'holds no' if not found else 'holds several'} centroids of `stacembed cluster`; "
                        "give the centroids.parquet, or the collection.json of one cluster output")
    return found[0]
