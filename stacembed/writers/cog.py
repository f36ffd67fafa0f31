"""Chip embeddings -> a Cloud-Optimized GeoTIFF on the chip grid (or the patch grid).

Vectors: one pixel per chip position (``ChipGrid.embedding_grid``: ``stride`` source pixels
wide, centred on the chip). Dense embeddings: one pixel per patch (``ChipGrid.patch_grid``).
One band per embedding dimension, NaN where a chip was skipped. Batches are written into a
tiled float32 GeoTIFF as they arrive; ``close`` converts it to a COG, quantizing to int8
when asked (scale/offset stored as GDAL band scales/offsets, so GDAL readers undo it, and
-128 as nodata). Source metadata travels in GeoTIFF tags, so the file stands on its own.
An input without georeferencing (``grid.Grid.placed`` False) gives a GeoTIFF without a CRS whose
transform maps its pixels to the source's pixel/line coordinates (y down), tags as ever.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from .._version import __version__
from ..chips import ChipBatch, ChipGrid
from ..errors import ConfigError
from ..layout import atomic_path
from .base import EmbeddingLayout, SourceInfo
from .quantize import NODATA, Quantization, RangeTracker

STRIP_BYTES = 16 * 2**20
TILE_BYTES = 4 * 2**20  # uncompressed bytes of one COG tile, all bands (see ``block_size``)
# Overviews only for grids wider than this (where COG validators ask for them): below it a
# tile or a few cover the item, and overviews tripled the conversion time (512 bands, 64 px grid).
OVERVIEW_ABOVE = 512


class CogWriter:
    def __init__(self, path: Path, chip_grid: ChipGrid, source: SourceInfo, embedding: EmbeddingLayout) -> None:
        if embedding.dtype == "float16":
            raise ConfigError("GeoTIFF has no float16 in GDAL < 3.11; use --dtype int8 or float32 for --format geotiff")
        self.path = Path(path)
        self.embedding = embedding
        self.ranges = RangeTracker(embedding.dimensions) if embedding.dtype == "int8" else None
        self.scratch = self.path.with_name(self.path.stem + ".scratch.tif")
        dims = embedding.dimensions
        self.grid = grid = chip_grid.patch_grid(embedding.patches) if embedding.dense else chip_grid.embedding_grid
        # Per chip row: one pixel row (vectors) or ``h`` of them (dense patches).
        self.rows_per_chip = embedding.patches[0] if embedding.dense else 1
        self.cols_per_chip = embedding.patches[1] if embedding.dense else 1
        chip_rows = grid.height // self.rows_per_chip
        row_bytes = dims * self.rows_per_chip * grid.width * 4
        self.strip_rows = max(1, min(chip_rows, STRIP_BYTES // row_bytes))  # chip rows per write
        self.strips = -(-chip_rows // self.strip_rows)
        # A striped scratch file written a strip of chip rows at a time: each write of a
        # window costs ~15 ms at 512 bands however small it is, so few, large writes; memory
        # is one strip (<= STRIP_BYTES, or one chip row), whatever the area.
        self.dataset = rasterio.open(
            self.scratch, "w+", driver="GTiff", width=grid.width, height=grid.height, count=dims,
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=float("nan"),
            blockysize=self.strip_rows * self.rows_per_chip, interleave="band",
        )
        self.dataset.update_tags(**_tags(source, chip_grid))
        for band in range(1, dims + 1):
            self.dataset.set_band_description(band, f"embedding_{band - 1:04d}")
        self.buffer = np.full((dims, self.strip_rows * self.rows_per_chip, grid.width), np.nan, dtype="float32")
        self.strip: int | None = None  # the strip in the buffer
        self.written: set[int] = set()

    def write(self, batch: ChipBatch, embeddings: np.ndarray) -> None:
        if self.ranges is not None:
            self.ranges.update(embeddings)
        height, width = self.rows_per_chip, self.cols_per_chip
        for chip, values in zip(batch.chips, embeddings, strict=True):
            strip, row = divmod(chip.row, self.strip_rows)
            if strip != self.strip:
                self._load(strip)
            if not self.embedding.dense:
                values = values[:, None, None]
            self.buffer[:, row * height:(row + 1) * height, chip.col * width:(chip.col + 1) * width] = values

    def _load(self, strip: int) -> None:
        """Write the buffered strip out and start ``strip`` (chips arrive in row order, so a
        strip is normally loaded once; one seen before is read back)."""
        self._flush()
        window = self._window(strip)
        if strip in self.written:
            self.buffer[:, : window.height] = self.dataset.read(window=window)
        self.strip = strip

    def _flush(self) -> None:
        if self.strip is None:
            return
        window = self._window(self.strip)
        self.dataset.write(self.buffer[:, : window.height], window=window)
        self.written.add(self.strip)
        self.buffer[:] = np.nan
        self.strip = None

    def _window(self, strip: int) -> Window:
        rows = self.strip_rows * self.rows_per_chip
        top = strip * rows
        return Window(0, top, self.grid.width, min(rows, self.grid.height - top))

    def close(self) -> dict:
        self._flush()
        for strip in sorted(set(range(self.strips)) - self.written):  # no chip kept there
            self.strip = strip
            self._flush()
        self.dataset.close()
        properties = {}
        source = self.scratch
        if self.ranges is not None:
            quantization = Quantization.fit(self.ranges, self.embedding.quantization)
            source = self._quantized(quantization)
            properties["emb:quantization"] = quantization.to_stac(self.embedding.quantization)
        size = max(self.grid.width, self.grid.height)
        itemsize = np.dtype("int8" if self.ranges is not None else "float32").itemsize
        # the item's forward passes are over: compress its tiles on every core
        copy_as_cog(source, self.path, size=size, blocksize=block_size(size, self.embedding.dimensions, itemsize),
                    num_threads="ALL_CPUS")
        for scratch in {self.scratch, source}:
            os.unlink(scratch)
        return properties

    def abort(self) -> None:
        """Close the scratch file without a word from GDAL: after a failed write (a full disk)
        its flush fails again, and the caller removes the file anyway."""
        gdal_log = logging.getLogger("rasterio._env")
        gdal_log.addFilter(_nothing)
        try:
            self.dataset.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass
        finally:
            gdal_log.removeFilter(_nothing)

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


def copy_as_cog(source, path: Path, *, size: int, blocksize: int, **options) -> None:
    """``source`` (a dataset or a path) copied to ``path``, atomically, as a COG: DEFLATE with the
    predictor for its type, ``blocksize`` px tiles, overviews when ``size`` (its larger side)
    exceeds ``OVERVIEW_ABOVE``; ``options`` go to GDAL's COG driver."""
    gdal_log = logging.getLogger("rasterio._env")
    gdal_log.addFilter(quiet_small_blocksize)  # GDAL's advice for >= 128 px tiles: small grids have smaller ones
    try:
        with atomic_path(path) as tmp:
            rasterio.shutil.copy(source, tmp, driver="COG", compress="DEFLATE", predictor="YES", blocksize=blocksize,
                                 overviews="AUTO" if size > OVERVIEW_ABOVE else "NONE", bigtiff="IF_SAFER", **options)
    finally:
        gdal_log.removeFilter(quiet_small_blocksize)


def block_size(size: int, bands: int, itemsize: int) -> int:
    """COG tile side in pixels: 256 at most, a multiple of 16 (GDAL's rule), 16 at least.

    Tiles hold every band of their pixels (the COG driver interleaves by pixel), so that a
    reader of one embedding fetches one tile; with hundreds of bands a tile is kept within
    ``TILE_BYTES`` (512 float32 bands: 32 px, 2 MiB), where 256 px would be 128 MiB read for
    any one vector. Nor is it larger than the grid rounded up: embedding grids are small (one
    pixel per chip), and 256 px tiles over a 32 px grid compressed 64 times more (padding)
    pixels than there are (measured: 1 s instead of 0.05 s per item at 512 bands).
    """
    fits = math.isqrt(TILE_BYTES // (bands * itemsize)) // 16 * 16
    return max(16, min(256, fits, -(-size // 16) * 16))


def _nothing(record: logging.LogRecord) -> bool:
    return False


def quiet_small_blocksize(record: logging.LogRecord) -> bool:
    """Drop GDAL's advice that COG tiles be >= 128 px: it honours smaller ones, which suit
    embedding grids of a few dozen pixels (see ``block_size``)."""
    return "BLOCKSIZE" not in record.getMessage()


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
