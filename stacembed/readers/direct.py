"""Pixels straight from the files, on their own grid: plain window reads, no dask, no xarray.

This is the reader of the default run (no resampling): what it returns must equal what the
lazy stack (``readers.stack``) returns for the same window, value for value and mask for mask.
"""

from __future__ import annotations

import math

import numpy as np
import pystac
import rasterio
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from ..access import redact_text
from ..bands import BandSource
from ..errors import ReadError
from ..grid import Grid, raster_errors, unreferenced_quiet


def _file_mask(ds, index: int, raw: np.ndarray, window: Window) -> np.ndarray | None:
    """Where the file itself says there is no data (GDAL's mask band, as ``masked=True`` reads
    it), without building a masked array: None when every pixel is valid."""
    flags = ds.mask_flag_enums[index - 1]
    if MaskFlags.all_valid in flags:
        return None
    if MaskFlags.nodata in flags:
        nodata = ds.nodatavals[index - 1]
        if np.issubdtype(raw.dtype, np.floating):  # GDAL compares in the band's type
            return np.isnan(raw) if math.isnan(nodata) else raw == raw.dtype.type(nodata)
        return raw == nodata  # an integer band never equals an out-of-range nodata
    return ds.read_masks(index, window=window) == 0


def native_dtype(datasets, bands: list[BandSource]) -> np.dtype | None:
    """The integer type all of ``bands`` fit in, when none of their pixels can lack data or
    need scaling: integer files, every pixel valid by the file's own mask, no declared nodata,
    no scale or offset. None otherwise (the values then become float32 measurements)."""
    types = []
    for band, ds in zip(bands, datasets, strict=True):
        dtype = np.dtype(ds.dtypes[band.index - 1])
        plain = band.scale == 1 and band.offset == 0 and (band.nodata is None or math.isnan(band.nodata))
        valid = MaskFlags.all_valid in ds.mask_flag_enums[band.index - 1]
        if not (plain and valid and np.issubdtype(dtype, np.integer)):
            return None
        types.append(dtype)
    common = np.result_type(*types)
    return common if np.issubdtype(common, np.integer) else None


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """``a | b`` of two optional masks (None: nothing set)."""
    return b if a is None else a if b is None else a | b


class DirectReader:
    """Pixels straight from the files, on their own grid: one open dataset per band, no dask.

    Used when no resampling is asked for (the default): chip windows are plain window reads of
    each band file, so a run of chips costs one read per band instead of a task graph and file
    reopen per chunk. Values become measurements exactly as ``readers.stack.stack_item`` makes
    them. ``shape`` is ``(band, [time,] height, width)``; ``read`` returns that layout for a window.
    """

    def __init__(self, series: list[tuple[pystac.Item, list[BandSource]]], grid: Grid) -> None:
        self.bands = series[0][1]
        self.datasets: list[list] = []
        self.native: list[np.dtype | None] = []  # per time step: its files' integer type (``native_dtype``)
        self.time_steps = len(series)
        self.shape = (len(self.bands), *((self.time_steps,) if self.time_steps > 1 else ()), grid.height, grid.width)
        try:
            for item, bands in series:
                datasets: list = []
                self.datasets.append(datasets)
                for band in bands:
                    with raster_errors(band.href, "open raster"), unreferenced_quiet():
                        ds = rasterio.open(band.href)
                    datasets.append(ds)
                    # An unplaced grid is the file's pixel grid, whatever geotransform it has without a CRS.
                    moved = grid.placed and ds.transform != grid.transform
                    if (ds.width, ds.height) != (grid.width, grid.height) or moved:
                        raise ReadError(f"item {item.id!r}: {redact_text(band.href)} is not on the item's native grid")
                self.native.append(native_dtype(datasets, bands))
        except BaseException:
            self.close()
            raise

    @property
    def tile_row_bytes(self) -> int:
        """Decoded bytes of one row of tiles across every file: what GDAL's block cache must
        hold so that the chip rows within a tile row decode each tile once."""
        total = 0
        for datasets, bands in zip(self.datasets, [self.bands] * self.time_steps, strict=True):
            for band, ds in zip(bands, datasets, strict=True):
                height, width = ds.block_shapes[band.index - 1]
                total += -(-ds.width // width) * width * height * np.dtype(ds.dtypes[band.index - 1]).itemsize
        return total

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's measurements ``(band, [time,] h, w)``, float32, NaN where there is no
        data; and where every band at every time step has data, ``(h, w)`` bool, or None when
        all pixels do.

        The mask comes from the checks that put the NaNs there (the file's mask, the declared
        nodata, non-finite floats), so the caller needs no second pass over the pixels. When no
        pixel of a time step's files can lack data or need scaling (integer bands without mask,
        nodata, scale or offset: ``native_dtype``), its values stay in the files' integer type,
        read by GDAL straight into the block: the embedder's copy makes them float32 anyway
        (measured on 2 cores, 6 uint8 bands: the reads of an item took 15% less CPU).
        """
        window = Window.from_slices(rows, cols)
        frames, invalid = [], None
        for datasets, native in zip(self.datasets, self.native, strict=True):
            frame, missing = self._frame(datasets, native, window)
            frames.append(frame)
            invalid = _either(invalid, missing)
        block = frames[0] if self.time_steps == 1 else np.stack(frames, axis=1)
        return block, None if invalid is None else ~invalid

    def _frame(self, datasets, native: np.dtype | None, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        bands = self.bands
        shape = (len(bands), int(window.height), int(window.width))
        if native is not None:
            out = np.empty(shape, dtype=native)
            for i, (band, ds) in enumerate(zip(bands, datasets, strict=True)):
                with raster_errors(band.href):
                    ds.read(band.index, window=window, out=out[i])
            return out, None
        out = np.empty(shape, dtype="float32")
        invalid = None
        for i, (band, ds) in enumerate(zip(bands, datasets, strict=True)):
            with raster_errors(band.href):  # a truncated or corrupt tile fails here, not at open
                raw = ds.read(band.index, window=window)
                missing = _file_mask(ds, band.index, raw, window)
            values = out[i]
            values[...] = raw
            if band.nodata is not None and not math.isnan(band.nodata):
                missing = _either(missing, values == np.float32(band.nodata))
            if np.issubdtype(raw.dtype, np.floating):
                missing = _either(missing, ~np.isfinite(values))
            if missing is not None:
                values[missing] = np.nan
                invalid = _either(invalid, missing)
            if band.scale != 1 or band.offset != 0:
                values[...] = values.astype("float64") * band.scale + band.offset
        return out, invalid

    def close(self) -> None:
        for datasets in self.datasets:
            for ds in datasets:
                ds.close()
