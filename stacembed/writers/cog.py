"""Chip embeddings -> a Cloud-Optimized GeoTIFF on the chip grid.

One pixel per chip position (``ChipGrid.embedding_grid``: ``stride`` source pixels wide,
centred on the chip), one float32 band per embedding dimension, NaN where a chip was skipped.
Batches are written into a tiled GeoTIFF as they arrive; ``close`` converts it to a COG.
Source metadata travels in GeoTIFF tags, so the file stands on its own outside STAC.
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
from . import SourceInfo


class CogWriter:
    def __init__(self, path: Path, chip_grid: ChipGrid, source: SourceInfo, dims: int) -> None:
        self.path = Path(path)
        self.scratch = self.path.with_name(self.path.stem + ".scratch.tif")
        grid = chip_grid.embedding_grid
        self.dataset = rasterio.open(
            self.scratch, "w", driver="GTiff", width=grid.width, height=grid.height, count=dims,
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=float("nan"),
            tiled=True, blockxsize=256, blockysize=256, interleave="pixel",
        )
        empty = np.full((dims, 1, grid.width), np.nan, dtype="float32")
        for row in range(grid.height):  # row by row: memory stays one row of pixels
            self.dataset.write(empty, window=Window(0, row, grid.width, 1))
        self.dataset.update_tags(**_tags(source, chip_grid))
        for band in range(1, dims + 1):
            self.dataset.set_band_description(band, f"embedding_{band - 1:04d}")

    def write(self, batch: ChipBatch, embeddings: np.ndarray) -> None:
        # Chips of one batch run along chip rows; write each contiguous run in one call.
        start = 0
        chips = batch.chips
        for i in range(1, len(chips) + 1):
            if i == len(chips) or chips[i].row != chips[i - 1].row or chips[i].col != chips[i - 1].col + 1:
                run = embeddings[start:i].T[:, None, :].astype("float32")
                first = chips[start]
                self.dataset.write(run, window=Window(first.col, first.row, i - start, 1))
                start = i

    def close(self) -> None:
        self.dataset.close()
        tmp = self.path.with_name(self.path.name + ".part")
        rasterio.shutil.copy(
            self.scratch, tmp, driver="COG", compress="DEFLATE", predictor="YES",
            blocksize=256, bigtiff="IF_SAFER",
        )
        os.replace(tmp, self.path)
        os.unlink(self.scratch)


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
