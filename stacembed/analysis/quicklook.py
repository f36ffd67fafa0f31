"""Quicklooks: each item's embeddings drawn as a picture, PCA -> RGB, for STAC browsers and QGIS.

One PCA basis per collection, so that a colour means the same vector in every item:

- **Sample.** At most ``sample`` (20,000) vectors, a uniform sample without replacement over
  every kept chip (or patch) of the collection: each vector gets a pseudo-random 64-bit key
  from ``(seed, item id, row, col)`` (its pixel in the embedding grid), and the smallest keys
  win. Items are read a strip of rows (COG) or a row group (GeoParquet) at a time through
  ``open_embeddings``' readers, so memory is the sample plus one batch, whatever the catalog;
  the sample does not depend on the order items are listed in, nor on the format read.
- **Basis.** PCA as scikit-learn's ``PCA`` computes it (``svd_solver="covariance_eigh"``
  when the sample has more vectors than dimensions, else ``"full"``), in numpy
  (``_principal_axes``), in float64 on the sample: the mean and the first three components
  (signs as scikit-learn fixes them: each component's largest entry is positive), then the
  2nd and 98th percentiles of each projected channel as its stretch. It is stored in the
  collection (``stacembed:quicklook``), exactly (JSON floats round-trip), and kept by later
  runs: finished items are never redrawn because items were added. ``refit``
  (``stacembed quicklook --refit``) fits it anew over all items.
- **Colour** of a vector ``v``, channel ``k``:
  ``round(255 * clip((components[k] . (v - mean) - low[k]) / (high[k] - low[k]), 0, 1))``,
  computed row by row in float64 (a row's colour does not depend on the batch it came in).
  Chips without data are transparent.

Each item gets two assets, drawn on the grid of its embeddings (one pixel per chip, or per
patch for dense embeddings; a GeoParquet-only item on the chip grid rebuilt from its chips'
native bounds, up to its last kept chip row and column):

- ``thumbnail`` (roles thumbnail, overview): a PNG, RGBA, transparent where no chip was kept,
  at most ``THUMBNAIL_MAX`` (1024) px on its long side: larger grids are down-sampled by
  nearest neighbour (each thumbnail pixel is the chip at its centre), so colours stay PCA
  colours and the file stays small.
- ``overview`` (roles overview, visual): a Cloud-Optimized GeoTIFF at full chip resolution,
  same CRS and transform as the embeddings COG, 4 uint8 bands red, green, blue and alpha
  (TIFF ExtraSamples = unassociated alpha), DEFLATE, with nearest-neighbour overviews when
  larger than a tile. An alpha band, not a nodata value or a mask: a nodata colour could be a
  real PCA colour (any RGB triple can occur), and QGIS, GDAL (as the dataset mask) and
  rio-tiler/TiTiler all take an alpha band as transparency (a separate mask is read by fewer).

Both files are byte-reproducible (no timestamps), written atomically, and named in the item
JSON (with ``file:size``/``file:checksum`` and the basis digest ``stacembed:quicklook_basis``)
only once complete. An item whose assets carry the current digest and have their recorded
sizes is not read again, so a rerun that changes nothing reads and writes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rasterio.windows import Window

from ..access import redact_text
from ..embeddings import EmbeddingItem
from ..errors import ConfigError, ReadError
from ..grid import RASTER_ERRORS, Grid, gdal_reason
from ..layout import OutputLayout, catalog_file, exclusive, multihash_sha256, safe_name, write_bytes, write_json

log = logging.getLogger("stacembed")

SAMPLE = 20_000  # vectors in the PCA sample, at most
SEED = 0
PERCENTILES = (2.0, 98.0)  # the stretch of each channel: these percentiles of the projected sample
THUMBNAIL_MAX = 1024  # px on the long side of the PNG
STRIP_BYTES = 16 * 2**20  # float32 bytes of the embeddings COG read at a time (at least one tile)
BASIS_KEY = "stacembed:quicklook"  # the collection's basis
BASIS_FIELD = "stacembed:quicklook_basis"  # on each quicklook asset: the digest of the basis that drew it
THUMBNAIL, OVERVIEW = "thumbnail", "overview"
SUFFIXES = {THUMBNAIL: ".thumbnail.png", OVERVIEW: ".overview.tif"}
# The drawing rules, part of the digest: a change here redraws every quicklook.
RENDERING = {"version": 1, "thumbnail_max": THUMBNAIL_MAX, "overview": "rgba-deflate-nearest"}
_TABLE_GRID_COLUMNS = ["chip_row", "chip_col", "native_xmin", "native_ymin", "native_xmax", "native_ymax",
                       "width", "height"]


@dataclass(frozen=True)
class QuicklookBasis:
    """A collection's PCA -> RGB mapping: ``mean`` (D,), ``components`` (3, D), the stretch
    ``low``/``high`` (3,) of each channel, and how the sample was drawn."""

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray
    explained_variance_ratio: tuple[float, ...]
    sample_size: int
    sample_limit: int
    seed: int

    @property
    def dimensions(self) -> int:
        return len(self.mean)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, D)`` vectors -> ``(n, 3)`` float64 coordinates on the components.

        Row by row (an elementwise product summed along each contiguous row), not a matrix
        product, whose rounding may depend on how many rows a BLAS call gets: the same vector
        gets the same colour in any batch, in any item.
        """
        centered = np.ascontiguousarray(vectors, dtype=np.float64) - self.mean
        return np.stack([(centered * component).sum(axis=1) for component in self.components], axis=1)

    def colours(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, D)`` vectors -> ``(n, 3)`` uint8 RGB (a channel with no spread is mid-grey)."""
        projected = self.project(vectors)
        spread = self.high - self.low
        flat = spread <= 0
        scaled = (projected - self.low) / np.where(flat, 1.0, spread)
        rgb = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
        rgb[:, flat] = 128
        return rgb

    def to_stac(self) -> dict[str, Any]:
        """The collection property ``stacembed:quicklook``."""
        return {
            "method": "pca",
            "sample": {"size": self.sample_size, "limit": self.sample_limit, "seed": self.seed},
            "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio],
            "stretch": {"percentiles": list(PERCENTILES), "low": _floats(self.low), "high": _floats(self.high)},
            "mean": _floats(self.mean),
            "components": [_floats(c) for c in self.components],
        }

    @classmethod
    def from_stac(cls, data: dict[str, Any]) -> QuicklookBasis:
        mean = np.asarray(data["mean"], dtype=np.float64)
        components = np.asarray(data["components"], dtype=np.float64)
        low = np.asarray(data["stretch"]["low"], dtype=np.float64)
        high = np.asarray(data["stretch"]["high"], dtype=np.float64)
        if mean.ndim != 1 or components.shape != (3, len(mean)) or low.shape != (3,) or high.shape != (3,):
            raise ValueError("malformed quicklook basis")
        sample = data.get("sample", {})
        return cls(mean, components, low, high, tuple(data.get("explained_variance_ratio", ())),
                   int(sample.get("size", 0)), int(sample.get("limit", SAMPLE)), int(sample.get("seed", SEED)))

    @property
    def digest(self) -> str:
        """Names this basis and the drawing rules (recorded on every asset drawn with them)."""
        text = json.dumps({"basis": self.to_stac(), "rendering": RENDERING}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Quicklook:
    """One item's picture: ``rgba`` (H, W, 4) uint8 on the embeddings grid ``transform``/``crs``."""

    rgba: np.ndarray
    transform: Affine
    crs: CRS | None  # None: no georeferencing (pixel coordinates)

    @property
    def grid(self) -> Grid:
        return Grid(self.crs, self.transform, self.rgba.shape[1], self.rgba.shape[0])

    def png(self, max_size: int = THUMBNAIL_MAX) -> bytes:
        """The thumbnail: RGBA PNG, at most ``max_size`` px on the long side (nearest neighbour)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(thumbnail(self.rgba, max_size)).save(buffer, format="PNG")
        return buffer.getvalue()

    def cog(self) -> bytes:
        """The overview: an RGBA Cloud-Optimized GeoTIFF at full resolution."""
        height, width, _ = self.rgba.shape
        with MemoryFile() as memory, tempfile.TemporaryDirectory(prefix="stacembed-") as scratch:
            with memory.open(driver="GTiff", width=width, height=height, count=4, dtype="uint8", crs=self.crs,
                             transform=self.transform, photometric="RGB", alpha="YES") as ds:
                ds.write(np.moveaxis(self.rgba, 2, 0))
                ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
                for band, name in enumerate(("PC1 (red)", "PC2 (green)", "PC3 (blue)", "alpha"), start=1):
                    ds.set_band_description(band, name)
            path = Path(scratch) / "overview.tif"
            with memory.open() as source:
                rasterio.shutil.copy(source, path, driver="COG", compress="DEFLATE", predictor=2,
                                     overviews="AUTO", overview_resampling="NEAREST")
            return path.read_bytes()


@dataclass
class QuicklookResult:
    """What ``update_quicklooks`` did for one collection; ``items`` are the item documents as
    they are now on disk."""

    collection_id: str
    basis: QuicklookBasis | None
    items: list[dict[str, Any]]
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # no chip kept: no quicklook

    def collection_properties(self) -> dict[str, Any]:
        """What the collection document holds of it: the basis, when there is one."""
        return {BASIS_KEY: self.basis.to_stac()} if self.basis is not None else {}


def thumbnail(rgba: np.ndarray, max_size: int = THUMBNAIL_MAX) -> np.ndarray:
    """``rgba`` down-sampled by nearest neighbour to at most ``max_size`` px on its long side:
    thumbnail pixel (i, j) is the source pixel under its centre. Smaller pictures are returned as they are."""
    height, width = rgba.shape[:2]
    if max(height, width) <= max_size:
        return rgba
    scale = max_size / max(height, width)
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = ((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64)
    cols = ((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64)
    return np.ascontiguousarray(rgba[rows[:, None], cols[None, :]])


# --- the sample and the basis ---------------------------------------------------------------------

def sample_vectors(items: Iterable[EmbeddingItem], sample: int = SAMPLE, seed: int = SEED) -> np.ndarray:
    """At most ``sample`` vectors ``(n, D)`` float32 drawn uniformly from every kept chip (or
    patch) of ``items``, in the order of their keys: the same set and order whatever order the
    items come in, and whichever of an item's formats is read."""
    if sample < 1:
        raise ConfigError(f"the quicklook sample needs at least 1 vector, not {sample}")
    pool_keys: list[np.ndarray] = []
    pool_vectors: list[np.ndarray] = []
    pooled = 0
    threshold: np.uint64 | None = None  # once the sample is full: the largest key in it
    for item in sorted(items, key=lambda i: i.id):
        for rows, cols, vectors in _kept_chips(item):
            keys = _keys(seed, item.id, rows, cols)
            if threshold is not None:
                below = keys < threshold
                keys, vectors = keys[below], vectors[below]
            if not len(keys):
                continue
            pool_keys.append(keys)
            pool_vectors.append(np.array(vectors, dtype=np.float32))
            pooled += len(keys)
            if pooled >= 2 * sample:
                keys, vectors = _smallest(pool_keys, pool_vectors, sample)
                pool_keys, pool_vectors, pooled = [keys], [vectors], len(keys)
                threshold = keys.max()
    if not pool_keys:
        return np.empty((0, 0), dtype=np.float32)
    keys, vectors = _smallest(pool_keys, pool_vectors, sample)
    return vectors[np.argsort(keys, kind="stable")]


def fit_basis(items: Iterable[EmbeddingItem], sample: int = SAMPLE, seed: int = SEED) -> QuicklookBasis | None:
    """The PCA -> RGB basis of a collection's ``items`` (None when no item kept a chip)."""
    vectors = sample_vectors(items, sample, seed)
    if not len(vectors):
        return None
    return basis_from_sample(vectors, limit=sample, seed=seed)


def basis_from_sample(vectors: np.ndarray, *, limit: int = SAMPLE, seed: int = SEED) -> QuicklookBasis:
    """Fit the basis on a sample ``(n, D)``: PCA in float64, then the percentile stretch."""
    n, dims = vectors.shape
    mean = vectors.mean(axis=0, dtype=np.float64)
    components = np.zeros((3, dims))
    ratio = [0.0, 0.0, 0.0]
    kept = min(3, n, dims)
    if n >= 2 and kept:
        components[:kept], ratio[:kept] = _principal_axes(vectors, mean, kept)
    basis = QuicklookBasis(mean, components, np.zeros(3), np.zeros(3), tuple(ratio), n, limit, seed)
    low, high = np.percentile(basis.project(vectors), PERCENTILES, axis=0)
    return QuicklookBasis(mean, components, low, high, tuple(ratio), n, limit, seed)


def _principal_axes(vectors: np.ndarray, mean: np.ndarray, kept: int) -> tuple[np.ndarray, list[float]]:
    """The first ``kept`` principal axes of ``vectors`` and their shares of the variance.

    What scikit-learn's PCA computes (each axis signed so that its largest component is
    positive, as its ``svd_flip`` does), in numpy, in float64: importing scikit-learn's
    decomposition module took 0.94 s, a cost every run would pay for three vectors. With more
    vectors than dimensions (the usual sample), from the eigenvectors of the centred sample's
    scatter matrix, as its ``svd_solver="covariance_eigh"``: an SVD of the whole sample costs
    ~10x more (1.8 s against 0.19 s for 20,000 vectors of 768 dimensions, at the end of every
    run on 2 cores); else from an SVD of the sample.
    """
    centred = np.asarray(vectors, dtype=np.float64) - mean
    if len(centred) >= centred.shape[1]:
        scatter = centred.T @ centred
        eigenvalues, eigenvectors = np.linalg.eigh(scatter)  # ascending
        axes, variance = eigenvectors[:, ::-1].T, np.clip(eigenvalues[::-1], 0, None)
        total = np.trace(scatter)
    else:
        _, singular, axes = np.linalg.svd(centred, full_matrices=False)
        variance = singular**2
        total = variance.sum()
    axes = axes[:kept] * np.sign(axes[:kept][np.arange(kept), np.abs(axes[:kept]).argmax(axis=1)])[:, None]
    shares = variance[:kept] / total if total > 0 else np.zeros(kept)
    return axes, [float(v) if np.isfinite(v) else 0.0 for v in shares]


def _keys(seed: int, item_id: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A pseudo-random uint64 key per (item, row, col): splitmix64 of the position, salted by
    the seed and the item id (a counter-based generator: no state, so no order dependence)."""
    salt = int.from_bytes(hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()[:8], "little")
    x = (rows.astype(np.uint64) << np.uint64(32)) | cols.astype(np.uint64)
    z = x ^ np.uint64(salt)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _smallest(keys: list[np.ndarray], vectors: list[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    all_keys, all_vectors = np.concatenate(keys), np.concatenate(vectors)
    if len(all_keys) <= count:
        return all_keys, all_vectors
    best = np.argpartition(all_keys, count - 1)[:count]
    return all_keys[best], all_vectors[best]


# --- reading an item's chips ----------------------------------------------------------------------

def _kept_chips(item: EmbeddingItem) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(rows, cols, (n, D) float32 vectors)`` of an item's kept chips (or patches), a bounded
    batch at a time: from its COG when it has one, else from its GeoParquet."""
    if "geotiff" in item.hrefs:
        for window, values in _blocks(item):
            valid = np.isfinite(values).all(axis=0)
            rows, cols = np.nonzero(valid)
            if len(rows):
                yield rows + window.row_off, cols + window.col_off, values[:, valid].T
        return
    for batch, vectors in item.iter_batches(columns=["chip_row", "chip_col"]):
        valid = np.isfinite(vectors).all(axis=1)
        rows = batch.column("chip_row").to_numpy(zero_copy_only=False)
        cols = batch.column("chip_col").to_numpy(zero_copy_only=False)
        if valid.any():
            yield rows[valid].astype(np.int64), cols[valid].astype(np.int64), vectors[valid]


def _blocks(item: EmbeddingItem) -> Iterator[tuple[Window, np.ndarray]]:
    """The COG in windows of whole tiles, at most ``STRIP_BYTES`` of float32 each (or one tile):
    ``(window, (D, rows, cols) float32)``. Full-width strips of tile rows where they fit, else
    runs of tiles along a tile row, so every tile is decoded once."""
    grid, bands, (block_h, block_w) = _raster_grid(item)
    tile_row = block_h * grid.width * bands * 4
    if tile_row <= STRIP_BYTES:
        height, width = block_h * (STRIP_BYTES // tile_row), grid.width
    else:
        height, width = block_h, block_w * max(1, STRIP_BYTES // (block_h * block_w * bands * 4))
    for top in range(0, grid.height, height):
        for left in range(0, grid.width, width):
            window = Window(left, top, min(width, grid.width - left), min(height, grid.height - top))
            values, _, _ = item.array(window=window)
            yield window, values


def _raster_grid(item: EmbeddingItem) -> tuple[Grid, int, tuple[int, int]]:
    """The grid of an item's embeddings COG, its band count and its tile shape."""
    href = item.hrefs["geotiff"]
    try:
        with rasterio.open(href) as ds:
            return Grid(ds.crs, ds.transform, ds.width, ds.height), ds.count, ds.block_shapes[0]
    except RASTER_ERRORS as exc:
        raise ReadError(f"cannot read embeddings {redact_text(href)}: {gdal_reason(exc)}") from None


def _table_grid(item: EmbeddingItem) -> Grid | None:
    """The chip grid of a GeoParquet-only item, rebuilt from its chips: one pixel per chip
    position, ``stride`` source pixels wide, centred on the chip (as the COG's), up to the
    last kept chip row and column. None when no chip was kept."""
    table = item.table(columns=_TABLE_GRID_COLUMNS)
    if table.num_rows == 0:
        return None
    first = {name: table.column(name)[0].as_py() for name in _TABLE_GRID_COLUMNS}
    parameters = item.stac_item.properties.get("emb:runtime_parameters", {})
    stride = parameters.get("stride") or ((item.chip_layout or {}).get("stride") or [first["width"]])[0]
    res_x = (first["native_xmax"] - first["native_xmin"]) / first["width"]
    res_y = (first["native_ymax"] - first["native_ymin"]) / first["height"]
    size_x, size_y = stride * res_x, stride * res_y
    centre_x = (first["native_xmin"] + first["native_xmax"]) / 2
    centre_y = (first["native_ymin"] + first["native_ymax"]) / 2
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    column = geo.get("columns", {}).get("native_geometry", {})
    crs_json = column.get("crs")
    if crs_json is None and "crs" not in column:
        raise ReadError(f"item {item.id!r}: its GeoParquet names no CRS of native_geometry")
    import pyproj

    # "crs": null: no georeferencing, pixel/line coordinates whose y grows down the rows.
    crs = CRS.from_wkt(pyproj.CRS.from_json_dict(crs_json).to_wkt()) if crs_json is not None else None
    left = centre_x - size_x / 2 - first["chip_col"] * size_x
    if crs is not None:
        transform = Affine(size_x, 0.0, left, 0.0, -size_y, centre_y + size_y / 2 + first["chip_row"] * size_y)
    else:
        transform = Affine(size_x, 0.0, left, 0.0, size_y, centre_y - size_y / 2 - first["chip_row"] * size_y)
    height = int(np.max(table.column("chip_row").to_numpy())) + 1
    width = int(np.max(table.column("chip_col").to_numpy())) + 1
    return Grid(crs, transform, width, height)


# --- drawing --------------------------------------------------------------------------------------

def render(item: EmbeddingItem, basis: QuicklookBasis) -> Quicklook | None:
    """Draw ``item`` with ``basis``; None when it kept no chip (nothing to draw). Memory: the
    picture (4 bytes per chip) plus one batch of vectors."""
    grid = _raster_grid(item)[0] if "geotiff" in item.hrefs else _table_grid(item)
    if grid is None:
        return None
    rgba = np.zeros((grid.height, grid.width, 4), dtype=np.uint8)
    drawn = False
    for rows, cols, vectors in _kept_chips(item):
        if vectors.shape[1] != basis.dimensions:
            raise ReadError(f"item {item.id!r} has {vectors.shape[1]}-d embeddings, the quicklook basis "
                            f"{basis.dimensions}; refit it (stacembed quicklook --refit)")
        rgba[rows, cols, :3] = basis.colours(vectors)
        rgba[rows, cols, 3] = 255
        drawn = True
    return Quicklook(rgba, grid.transform, grid.crs) if drawn else None


def update_quicklooks(
    layout: OutputLayout,
    items: list[dict[str, Any]],
    *,
    refit: bool = False,
    sample: int | None = None,
    seed: int | None = None,
) -> QuicklookResult:
    """Draw the quicklooks of a collection's finished ``items`` (their documents) and name them
    in each item JSON; the collection document is the caller's to write (with
    ``QuicklookResult.collection_properties()``).

    The basis is the collection's own (``stacembed:quicklook`` in its ``collection.json``) unless
    there is none, ``refit`` is asked, or ``sample``/``seed`` differ from how it was drawn; then
    it is fitted on the items. Items whose quicklooks are up to date are not read.
    """
    items = sorted(items, key=lambda data: data["id"])
    readers = {data["id"]: _embedding_item(layout, data) for data in items}
    basis = None if refit else _stored_basis(layout, sample, seed)
    if basis is None:
        basis = fit_basis(readers.values(), SAMPLE if sample is None else sample, SEED if seed is None else seed)
    result = QuicklookResult(layout.collection_id, basis, items)
    if basis is None:
        log.info("collection %s: no item kept a chip, so there are no quicklooks", layout.collection_id)
        result.skipped = [data["id"] for data in items]
        return result
    digest = basis.digest
    updated = []
    for data in items:
        item_id = data["id"]
        if _up_to_date(layout, data, digest):
            result.unchanged.append(item_id)
            updated.append(data)
            continue
        look = render(readers[item_id], basis)
        if look is None:
            log.info("item %s kept no chip: no quicklook", item_id)
            result.skipped.append(item_id)
            updated.append(data)
            continue
        updated.append(_write_item_quicklooks(layout, data, look, digest))
        result.written.append(item_id)
    result.items = updated
    return result


def write_quicklooks(
    target: str | Path | OutputLayout,
    *,
    refit: bool = False,
    sample: int | None = None,
    seed: int | None = None,
) -> list[QuicklookResult]:
    """Draw the quicklooks of an output catalog written before, and record them in its STAC.

    ``target`` is a local ``--out`` directory, its ``catalog.json`` or one ``collection.json``
    (holding the output run's lock on ``--out`` meanwhile, as a run does), or an
    ``OutputLayout`` (whose caller holds the lock). Each collection document gets the basis and
    its ``item_assets`` and items mirror are brought up to date.
    """
    from ..catalog import update_collection

    if isinstance(target, OutputLayout):
        layouts, lock = [target], None
    else:
        layouts = _layouts(target)
        lock = layouts[0].root if layouts else None
    results = []

    def run() -> None:
        for layout in layouts:
            items = list(layout.finished_items())
            if not items:
                continue
            result = update_quicklooks(layout, items, refit=refit, sample=sample, seed=seed)
            if layout.collection_file.is_file():
                update_collection(layout, result.items, result.collection_properties())
            results.append(result)

    if lock is None:
        run()
    else:
        with exclusive(lock):
            run()
    return results


def _layouts(target: str | Path) -> list[OutputLayout]:
    """The output collections under a local ``--out`` directory, catalog.json or collection.json."""
    text = str(target)
    if "://" in text:
        raise ConfigError(f"quicklooks are written next to the items: give a local catalog, not {text}")
    path = Path(text)
    if path.is_dir():
        path = catalog_file(path)
    if not path.is_file():
        raise ConfigError(f"{text}: no such catalog (give an output directory, its catalog.json or a collection.json)")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {text}: {exc}") from None
    kind = document.get("type") if isinstance(document, dict) else None
    if kind == "Collection":
        return [OutputLayout(path.parent.parent, path.parent.name)]
    if kind == "Catalog":  # its embedding collections; not the products derived from them (clusters, change)
        root = path.parent
        names = sorted(p.parent.name for p in root.glob("*/collection.json")
                       if not p.parent.name.startswith(".") and _is_embeddings(p))
        return [OutputLayout(root, name) for name in names]
    raise ConfigError(f"{text} is no STAC catalog or collection written by stacembed run")


def _is_embeddings(collection_file: Path) -> bool:
    """Whether a collection document is one of embeddings (it states ``emb:type``)."""
    try:
        return "emb:type" in json.loads(collection_file.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _stored_basis(layout: OutputLayout, sample: int | None, seed: int | None) -> QuicklookBasis | None:
    """The collection's basis from its document, if it has one drawn as asked."""
    try:
        collection = json.loads(layout.collection_file.read_text())
        basis = QuicklookBasis.from_stac(collection[BASIS_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    dims = collection.get("emb:dimensions")
    if dims is not None and dims != basis.dimensions:
        return None
    if (sample is not None and sample != basis.sample_limit) or (seed is not None and seed != basis.seed):
        return None
    return basis


def _embedding_item(layout: OutputLayout, data: dict[str, Any]) -> EmbeddingItem:
    """The reader of a finished item, from its document (not through its collection, which may
    not be written yet: the links up the tree are left out)."""
    document = copy.deepcopy(data)
    document["links"] = [link for link in document.get("links", [])
                         if link.get("rel") not in ("collection", "parent", "root")]
    item = pystac.Item.from_dict(document, href=str(layout.item_file(data["id"])), migrate=False)
    return EmbeddingItem.from_stac(item)


def _asset_name(item_id: str, key: str) -> str:
    return f"{safe_name(item_id)}{SUFFIXES[key]}"


def _up_to_date(layout: OutputLayout, data: dict[str, Any], digest: str) -> bool:
    """Whether the item names both quicklooks, drawn with this basis, and their files are whole."""
    for key in (THUMBNAIL, OVERVIEW):
        asset = data.get("assets", {}).get(key)
        if not asset or asset.get(BASIS_FIELD) != digest:
            return False
        try:
            if (layout.item_dir(data["id"]) / asset["href"]).stat().st_size != asset.get("file:size"):
                return False
        except OSError:
            return False
    return True


def _write_item_quicklooks(layout: OutputLayout, data: dict[str, Any], look: Quicklook,
                           digest: str) -> dict[str, Any]:
    """Write the PNG and the COG, then the item JSON that names them (in that order, so that a
    finished item never names an incomplete file)."""
    item_id = data["id"]
    directory = layout.item_dir(item_id)
    dense = (data["properties"].get("emb:runtime_parameters") or {}).get("pooling") == "none"
    unit = "patch" if dense else "chip"
    paths = {key: directory / _asset_name(item_id, key) for key in (THUMBNAIL, OVERVIEW)}
    write_bytes(paths[THUMBNAIL], look.png())
    write_bytes(paths[OVERVIEW], look.cog())
    grid = look.grid
    assets = {
        THUMBNAIL: {
            "href": f"./{paths[THUMBNAIL].name}", "type": pystac.MediaType.PNG, "roles": ["thumbnail", "overview"],
            "title": f"Quicklook: PCA of the embeddings as RGB, one pixel per {unit} "
                     f"(at most {THUMBNAIL_MAX} px), transparent where no chip was kept",
        },
        OVERVIEW: {
            "href": f"./{paths[OVERVIEW].name}", "type": pystac.MediaType.COG, "roles": ["overview", "visual"],
            "title": f"Quicklook: PCA of the embeddings as RGB with alpha (COG, one pixel per {unit})",
            "proj:code": grid.crs_code, "proj:shape": [grid.height, grid.width],
            "proj:transform": list(grid.transform)[:6],
        },
    }
    document = copy.deepcopy(data)
    for key, asset in assets.items():
        asset.update({"file:size": paths[key].stat().st_size, "file:checksum": multihash_sha256(paths[key]),
                      BASIS_FIELD: digest})
        document["assets"][key] = asset
    write_json(layout.item_file(item_id), document)
    return document


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]
