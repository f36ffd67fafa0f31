"""Chip embeddings -> a Cloud-Optimized GeoTIFF on the chip grid (or the patch grid).

Vectors: one pixel per chip position (``ChipGrid.embedding_grid``: ``stride`` source pixels
wide, centred on the chip). Dense embeddings: one pixel per patch (``ChipGrid.patch_grid``).
One band per embedding dimension, NaN where a chip was skipped. Batches are written into a
tiled float32 GeoTIFF as they arrive; ``close`` converts it to a COG, quantizing to int8
when asked (scale/offset stored as GDAL band scales/offsets, so GDAL readers undo it, and
-128 as nodata). Source metadata travels in GeoTIFF tags, so the file stands on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from .. import __version__
from ..chips import ChipBatch, ChipGrid
from ..errors import ConfigError
from . import Layout, SourceInfo
from .quantize import NODATA, Quantization, RangeTracker


class CogWriter:
    def __init__(self, path: Path, chip_grid: ChipGrid, source: SourceInfo, layout: Layout) -> None:
        if layout.dtype == "float16":
            raise ConfigError("GeoTIFF has no float16 in GDAL < 3.11; use --dtype int8 or float32 for --format geotiff")
        self.path = Path(path)
        self.layout = layout
        self.ranges = RangeTracker(layout.dimensions) if layout.dtype == "int8" else None
        self.scratch = self.path.with_name(self.path.stem + ".scratch.tif")
        dims = layout.dimensions
        grid = chip_grid.patch_grid(layout.patches) if layout.dense else chip_grid.embedding_grid
        self.dataset = rasterio.open(
            self.scratch, "w", driver="GTiff", width=grid.width, height=grid.height, count=dims,
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=float("nan"),
            tiled=True, blockxsize=_block(grid.width), blockysize=_block(grid.height), interleave="pixel",
        )
        empty = np.full((dims, 1, grid.width), np.nan, dtype="float32")
        for row in range(grid.height):  # row by row: memory stays one row of pixels
            self.dataset.write(empty, window=Window(0, row, grid.width, 1))
        self.dataset.update_tags(**_tags(source, chip_grid))
        for band in range(1, dims + 1):
            self.dataset.set_band_description(band, f"embedding_{band - 1:04d}")

    def write(self, batch: ChipBatch, embeddings: np.ndarray) -> None:
        if self.ranges is not None:
            self.ranges.update(embeddings)
        if self.layout.dense:
            height, width = self.layout.patches
            for chip, patches in zip(batch.chips, embeddings):
                self.dataset.write(patches.astype("float32"), window=Window(chip.col * width, chip.row * height, width, height))
            return
        # Chips of one batch run along chip rows; write each contiguous run in one call.
        start = 0
        chips = batch.chips
        for i in range(1, len(chips) + 1):
            if i == len(chips) or chips[i].row != chips[i - 1].row or chips[i].col != chips[i - 1].col + 1:
                run = embeddings[start:i].T[:, None, :].astype("float32")
                first = chips[start]
                self.dataset.write(run, window=Window(first.col, first.row, i - start, 1))
                start = i

    def close(self) -> dict:
        self.dataset.close()
        properties = {}
        source = self.scratch
        if self.ranges is not None:
            quantization = Quantization.fit(self.ranges, self.layout.quantization)
            source = self._quantized(quantization)
            properties["emb:quantization"] = quantization.to_stac(self.layout.quantization)
        tmp = self.path.with_name(self.path.name + ".part")
        rasterio.shutil.copy(
            source, tmp, driver="COG", compress="DEFLATE", predictor="YES",
            blocksize=256, bigtiff="IF_SAFER",
        )
        os.replace(tmp, self.path)
        for scratch in {self.scratch, source}:
            os.unlink(scratch)
        return properties

    def _quantized(self, quantization: Quantization) -> Path:
        """The scratch file as int8, block by block (memory: one block of all bands)."""
        target = self.path.with_name(self.path.stem + ".int8.tif")
        with rasterio.open(self.scratch) as src:
            profile = {**src.profile, "dtype": "int8", "nodata": NODATA}
            with rasterio.open(target, "w", **profile) as dst:
                for _, window in src.block_windows(1):
                    dst.write(quantization.quantize(src.read(window=window), axis=0), window=window)
                dst.scales = tuple(quantization.scale)
                dst.offsets = tuple(quantization.offset)
                dst.update_tags(**src.tags())
                for band, description in enumerate(src.descriptions, start=1):
                    dst.set_band_description(band, description)
        return target


def _block(size: int) -> int:
    """Scratch tile size: 256, or the grid rounded up to GDAL's multiple of 16 when smaller.

    Embedding grids are small (one pixel per chip) but have hundreds of bands: 256 px tiles
    over a 32 px grid would write a scratch file 64 times larger than the data.
    """
    return min(256, -(-size // 16) * 16)


def _tags(source: SourceInfo, chip_grid: ChipGrid) -> dict[str, str]:
    return {
        "STAC_ITEM_ID": source.item_id,
        "STAC_COLLECTION": source.collection or "",
        "STAC_DATETIME": source.datetime or "",
        "STAC_PROPERTIES": json.dumps(source.properties, sort_keys=True),
        "CHIP_SIZE": str(chip_grid.size),
        "CHIP_STRIDE": str(chip_grid.stride),
        "SOFTWARE": f"stacembed {__version__}",
    }
