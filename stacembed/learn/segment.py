"""Segmentation on dense embeddings: tiles of patch embeddings and the label maps under them.

Dense embeddings (``emb:type`` pixel) hold one vector per patch on a grid coarser than the
source pixels by the patch size. A segmentation head (``heads.Decoder``) upsamples a tile of
them back to the source resolution, so its training pairs are a tile of ``tile`` x ``tile``
patches and the labels of the same ground at ``scale`` label pixels per patch side, brought
onto that finer grid explicitly (``Labels.on_grid``: nearest for classes). The scale is the
patch's size in source pixels (the source item's ``proj:transform`` against the embeddings'
grid) unless given.

Tiles are cut from the embeddings COG a window at a time and their vectors go to a
memory-mapped file, as chip samples do (``dataset``); the maps predicted are written a tile at
a time into the class map of the whole item, which is one item's map at pixel resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from ..analysis.derived import embedding_grid
from ..embeddings import EmbeddingItem
from ..errors import LabelError, ReadError
from ..grid import Grid
from .labels import MISSING, Labels

TILE = 16  # patches per tile side: 256 px of a 16-px patch


@dataclass(frozen=True)
class Tiles:
    """Labelled tiles: ``vectors`` (n, D, tile, tile) float32 (memory-mapped; 0 where no patch),
    ``labels`` (n, tile*scale, tile*scale) label values (``MISSING`` where none), their
    ``centres`` and ``crs`` (to split by place), ``places`` (item id, row, col of the tile's
    top-left patch), ``extent`` (CRS units across a tile) and ``method``."""

    vectors: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    crs: np.ndarray
    places: list[tuple[str, int, int]]
    extent: float
    method: str
    scale: int

    def __len__(self) -> int:
        return len(self.labels)

    def item_ids(self) -> np.ndarray:
        return np.array([item for item, _, _ in self.places], object)


def collect_tiles(items: Sequence[EmbeddingItem], labels: Labels, work: Path, *, min_fraction: float,
                  scale: int | None = None, tile: int = TILE) -> Tiles:
    """The tiles of ``items`` whose label pixels cover at least ``min_fraction`` of them."""
    found: dict[str, list] = {"labels": [], "centres": [], "crs": [], "places": []}
    methods: dict[str, None] = {}
    scales = {scale or patch_scale(item) for item in items}
    if len(scales) != 1:
        raise LabelError(f"the dense items have patches of different sizes ({sorted(scales)} source pixels)")
    scale = scales.pop()
    path, count, extent, dims = work / "tiles.f32", 0, 0.0, 0
    with open(path, "wb") as file:
        for item, window, grid in _tiles(items, tile):
            values, _, _ = item.array(window=window)
            fine = fine_grid(grid, scale)
            painted = labels.on_grid(fine)
            methods[painted.method] = None
            under = ~np.isnan(values).all(axis=0).repeat(scale, 0).repeat(scale, 1)  # pixels under a patch
            covered = painted.covered & under
            if covered.mean() < max(min_fraction, 1e-12):
                continue
            dims = len(values)
            file.write(np.nan_to_num(_padded(values, tile), nan=0.0).astype("float32").tobytes())
            found["labels"].append(_padded(np.where(covered, painted.labels, MISSING), tile * scale, MISSING))
            west, south, east, north = fine.bounds
            found["centres"].append(((west + east) / 2, (south + north) / 2))
            found["crs"].append(grid.crs.to_string())
            found["places"].append((item.id, int(window.row_off), int(window.col_off)))
            extent, count = max(extent, east - west), count + 1
    if not count:
        path.unlink()
        raise LabelError(f"the labels cover no tile of the dense embeddings by at least {min_fraction:g} of its area "
                         "(check that they overlap the embeddings, or lower --min-label-fraction)")
    vectors = np.memmap(path, dtype="float32", mode="r", shape=(count, dims, tile, tile))
    return Tiles(vectors, np.stack(found["labels"]), np.array(found["centres"]), np.array(found["crs"], object),
                 found["places"], extent, " / ".join(methods) + f"; tiles of {tile}x{tile} patches covered less "
                 f"than {min_fraction:g} left out", scale)


def tiles_of(grid: Grid, tile: int = TILE) -> Iterator[Window]:
    """The windows of ``tile`` x ``tile`` patches covering ``grid`` (the last ones cut short)."""
    for row in range(0, grid.height, tile):
        for col in range(0, grid.width, tile):
            yield Window(col, row, min(tile, grid.width - col), min(tile, grid.height - row))


def patch_scale(item: EmbeddingItem) -> int:
    """Source pixels per patch side: the embeddings' cell size over the source item's pixel size."""
    grid = embedding_grid(item)
    pixel = _source_pixel(item)
    ratio = abs(grid.transform.a) / pixel
    if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-6) or round(ratio) < 1:
        raise LabelError(f"item {item.id!r}: its patches are {ratio:g} source pixels wide, not a whole number; "
                         "give --label-scale")
    return round(ratio)


def _tiles(items: Sequence[EmbeddingItem], tile: int) -> Iterator[tuple[EmbeddingItem, Window, Grid]]:
    for item in items:
        grid = embedding_grid(item)
        for window in tiles_of(grid, tile):
            yield item, window, window_grid(grid, window)


def window_grid(grid: Grid, window: Window) -> Grid:
    """The part of ``grid`` that ``window`` covers, as a grid of its own."""
    transform = grid.transform * Affine.translation(window.col_off, window.row_off)
    return Grid(grid.crs, transform, int(window.width), int(window.height))


def fine_grid(grid: Grid, scale: int) -> Grid:
    """``grid`` with each cell cut into ``scale`` x ``scale`` cells: the source pixels of a patch grid."""
    return Grid(grid.crs, grid.transform * Affine.scale(1 / scale), grid.width * scale, grid.height * scale)


def _padded(values: np.ndarray, size: int, fill: float = np.nan) -> np.ndarray:
    """``values`` (..., h, w) padded with ``fill`` to (..., size, size): tiles at the edges are short."""
    height, width = values.shape[-2:]
    if (height, width) == (size, size):
        return values
    padded = np.full((*values.shape[:-2], size, size), fill, dtype=np.result_type(values, np.asarray(fill)))
    padded[..., :height, :width] = values
    return padded


def _source_pixel(item: EmbeddingItem) -> float:
    """The pixel size of the source item the embeddings were made from (``proj:transform``, or
    the header of its first raster asset)."""
    try:
        sources = item.source_items()
    except ReadError as exc:
        raise LabelError(f"{exc}; give --label-scale") from None
    if not sources:
        raise LabelError(f"item {item.id!r} links no source item: its patch size is not known; give --label-scale")
    source = sources[0]
    for fields in (source.properties, *(asset.extra_fields for asset in source.assets.values())):
        if fields.get("proj:transform"):
            return abs(float(fields["proj:transform"][0]))
    for asset in source.assets.values():
        if "image/tiff" in (asset.media_type or ""):
            with rasterio.open(asset.get_absolute_href()) as ds:
                return abs(ds.transform.a)
    raise LabelError(f"source item {source.id!r} states no pixel size (proj:transform); give --label-scale")
