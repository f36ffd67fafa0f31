"""The embedding COG's layout: tiles that hold every band of their pixels within a few MiB,
overviews only for large grids, and the values written, read back exactly with rasterio."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from stacembed.chips import ChipBatch, ChipGrid
from stacembed.grid import Grid
from stacembed.writers import EmbeddingLayout, SourceInfo
from stacembed.writers.cog import TILE_BYTES, CogWriter, block_size

SOURCE = SourceInfo("item", "collection", "2000-01-01T00:00:00Z", {})


@pytest.mark.parametrize("size, bands, itemsize, side", [
    (64, 512, 4, 32),     # resnet18-sized vectors: 32 px x 512 float32 = 2 MiB
    (172, 768, 4, 32),    # a Sentinel-2 tile of ViT-B vectors
    (172, 1024, 4, 32),   # 4 MiB exactly
    (172, 4096, 4, 16),   # never below GDAL's 16 px, even past TILE_BYTES
    (172, 64, 1, 176),    # int8, 64 bands: the grid rounded up to 16
    (3000, 64, 1, 256),   # never above 256 px
    (3, 96, 4, 16),       # a tiny grid: one 16 px tile
])
def test_tiles_fit_a_few_mib_of_all_bands_and_no_more_than_the_grid(size, bands, itemsize, side):
    block = block_size(size, bands, itemsize)
    assert block == side and block % 16 == 0
    assert block * block * bands * itemsize <= TILE_BYTES or block == 16


def write_cog(path, chips: int, dims: int, seed: int = 0) -> np.ndarray:
    """Random embeddings for a ``chips`` x ``chips`` grid of 8 px chips, written as a COG."""
    grid = Grid(CRS.from_epsg(32633), Affine(10.0, 0, 500000.0, 0, -10.0, 6000000.0), chips * 8, chips * 8)
    chip_grid = ChipGrid(grid, 8, 8)
    writer = CogWriter(path, chip_grid, SOURCE, EmbeddingLayout(dims))
    values = np.random.default_rng(seed).normal(size=(chips, chips, dims)).astype("float32")
    for row in range(chips):
        batch = ChipBatch([chip_grid.chip(row, col) for col in range(chips)], np.zeros((chips, 1, 8, 8), "float32"),
                          np.ones(chips, "float32"))
        writer.write(batch, values[row])
    writer.close()
    return values


def test_a_many_band_cog_is_pixel_interleaved_in_small_tiles_without_overviews(tmp_path):
    values = write_cog(tmp_path / "e.tif", chips=70, dims=512)
    with rasterio.open(tmp_path / "e.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.interleaving.value == "PIXEL" and cog.block_shapes[0] == (32, 32)
        assert cog.overviews(1) == []  # 70 px: a handful of tiles cover it
        assert np.array_equal(cog.read(), values.transpose(2, 0, 1))
        # one vector is one tile's worth of bytes, not the whole raster's
        assert np.array_equal(cog.read(window=Window(41, 17, 1, 1))[:, 0, 0], values[17, 41])


def test_a_grid_wider_than_512_px_gets_overviews(tmp_path):
    values = write_cog(tmp_path / "e.tif", chips=520, dims=4)
    with rasterio.open(tmp_path / "e.tif") as cog:
        assert cog.block_shapes[0] == (256, 256) and cog.overviews(1) == [2, 4]
        assert np.array_equal(cog.read(), values.transpose(2, 0, 1))
