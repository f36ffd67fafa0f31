"""The chip grid over an item, and reading its chips in bounded batches from any ``Reader``.

Edge rule: chips sit on a regular grid that starts at the item's top-left pixel and steps by
``stride``; the last row and column extend past the raster where the size does not divide
evenly, and the part outside is padded as nodata. Nothing is shifted, so every chip footprint
lies on source pixel edges and chip (row, col) maps to one pixel of the embedding raster.
A chip is kept when the fraction of its pixels with data in every band is at least
``min_valid`` (padding counts as no data).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.windows import Window

from .errors import ConfigError
from .grid import Grid

if TYPE_CHECKING:
    from .readers import Reader

log = logging.getLogger("stacembed")

# Pixels (float32) of one read run: runs hold at least a batch of chips, and more while they fit.
RUN_BYTES = 8 * 2**20

@dataclass(frozen=True)
class Chip:
    """One chip: its position in the chip grid and its pixel window in the source grid."""

    row: int
    col: int
    window: Window


@dataclass(frozen=True)
class ChipGrid:
    """A regular grid of ``size`` x ``size`` chips, ``stride`` pixels apart, over ``grid``."""

    grid: Grid
    size: int
    stride: int

    @property
    def rows(self) -> int:
        return _positions(self.grid.height, self.size, self.stride)

    @property
    def cols(self) -> int:
        return _positions(self.grid.width, self.size, self.stride)

    def __len__(self) -> int:
        return self.rows * self.cols

    def chip(self, row: int, col: int) -> Chip:
        return Chip(row, col, Window(col * self.stride, row * self.stride, self.size, self.size))

    def __iter__(self) -> Iterator[Chip]:
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.chip(row, col)

    def bounds(self, chip: Chip) -> tuple[float, float, float, float]:
        """The chip footprint in the source CRS: exact source pixel edges."""
        return self.grid.window_bounds(chip.window)

    @property
    def embedding_grid(self) -> Grid:
        """One pixel per chip position, ``stride`` source pixels wide, centred on the chip centre.

        With ``stride == size`` each embedding pixel is exactly its chip's footprint.
        """
        t = self.grid.transform
        shift = (self.size - self.stride) / 2
        origin_x, origin_y = t @ (shift, shift)
        transform = Affine(t.a * self.stride, 0.0, origin_x, 0.0, t.e * self.stride, origin_y)
        return Grid(self.grid.crs, transform, self.cols, self.rows)


    def patch_grid(self, patches: tuple[int, int]) -> Grid:
        """The grid of dense patch embeddings: ``patches`` (h, w) per chip, chips edge to edge.

        Dense output needs chips that tile the item (``stride == size``) and a chip size the
        patch grid divides; then patch (i, j) of chip (r, c) is pixel (r*h + i, c*w + j).
        """
        check_patch_tiling(self.size, self.stride, patches)
        height, width = patches
        t = self.grid.transform
        transform = Affine(t.a * self.size / width, 0.0, t.c, 0.0, t.e * self.size / height, t.f)
        return Grid(self.grid.crs, transform, self.cols * width, self.rows * height)


def check_patch_tiling(size: int, stride: int, patches: tuple[int, int]) -> None:
    """Dense embeddings tile the item only when chips do (``stride == size``) and patches divide chips."""
    height, width = patches
    if stride != size or size % height or size % width:
        raise ConfigError(
            f"dense embeddings (--pooling none) need --stride equal to --chip-size ({size}) and a "
            f"chip size divisible by the {height}x{width} patch grid"
        )


def _positions(length: int, size: int, stride: int) -> int:
    return 1 if length <= size else math.ceil((length - size) / stride) + 1


@dataclass
class ChipBatch:
    """Pixels of up to ``batch_size`` chips, ``(n, band, [time,] size, size)`` float32, NaN = no data
    (or an integer type, where the reader knew no pixel could lack data: ``Reader.read``).

    ``pixels`` may be a view of the pixels read (see ``read_batches``): read it, don't write it.
    """

    chips: list[Chip]
    pixels: np.ndarray
    valid_fraction: np.ndarray


@dataclass
class ReadStats:
    """What a read saw: chips kept, and the best valid fraction of any chip (for the warning
    the caller gives when an item has no usable chip)."""

    kept: int = 0
    best_fraction: float = 0.0


def read_batches(
    reader: Reader, chip_grid: ChipGrid, *, batch_size: int, min_valid: float,
    rows: range | None = None, stats: ReadStats | None = None,
) -> Iterator[ChipBatch]:
    """Read chips from ``reader``, keep those with enough data, yield them in batches.

    Reads go one run of neighbouring chips of a chip row at a time (``run_length``), so memory
    holds a run and a batch of pixels however large the item is. ``rows`` limits the reads to those
    chip rows (one tile of an item split over a cluster). When no chip passes, nothing is
    yielded (the writers then write valid, empty files); ``stats`` records what was seen.

    A batch of consecutive kept chips of one run is a strided view of the run's pixels, not a
    copy: the embedder copies every batch anyway (to make it contiguous, or onto the device), so
    the thread that reads does one pass over the pixels fewer. Such a batch keeps its run's
    pixels alive until it is dropped, which ``run_length`` bounds.
    """
    stats = stats if stats is not None else ReadStats()
    batcher = _Batcher(batch_size)
    length = run_length(batch_size, chip_bytes(math.prod(reader.shape[:-2]), chip_grid.size))
    for run in _runs(chip_grid, length, rows or range(chip_grid.rows), batcher):
        pixels, fractions = _read_run(reader, run, chip_grid.size, chip_grid.stride)
        stats.best_fraction = max(stats.best_fraction, float(fractions.max()))
        keep = (fractions >= min_valid) & (fractions > 0)
        stats.kept += int(keep.sum())
        if keep.all():
            yield from batcher.add(run, pixels, fractions)
        elif keep.any():
            yield from batcher.add(list(compress(run, keep.tolist())), pixels[keep], fractions[keep])
    yield from batcher.flush()


def warn_if_empty(item_id: str, chip_grid: ChipGrid, min_valid: float, stats: ReadStats) -> None:
    """Say so when none of an item's chips had enough valid pixels."""
    if not stats.kept:
        log.warning(
            "item %r: none of its %d chips has enough valid pixels (--min-valid %g; the best has %.3g), "
            "so its embedding outputs are empty", item_id, len(chip_grid), min_valid, stats.best_fraction,
        )


def chip_bytes(layers: int, size: int) -> int:
    """Bytes of one chip's float32 pixels, ``layers`` = bands x time steps."""
    return layers * size * size * 4


def run_length(batch_size: int, chip_bytes: int) -> int:
    """Chips per read run: a batch, or more while their float32 pixels fit ``RUN_BYTES``.

    Fewer, wider window reads cost less per chip (measured on 2 cores, 64 px chips of 6 bands:
    the item's reads 0.62-0.76 s in runs of 16 chips, 0.55-0.61 s in runs of 64), and the
    bytes, not the item's width, bound the run.
    """
    return max(batch_size, RUN_BYTES // max(1, chip_bytes))


def _runs(chip_grid: ChipGrid, length: int, rows: range, batcher: _Batcher) -> Iterator[list[Chip]]:
    """Consecutive chips of one chip row, at most ``length`` long, cut where batches end (so
    that a run holds whole batches) unless a row ends first."""
    for row in rows:
        start = 0
        while start < chip_grid.cols:
            stop = min(start + batcher.run_length(length), chip_grid.cols)
            yield [chip_grid.chip(row, col) for col in range(start, stop)]
            start = stop


def _read_run(reader: Reader, run: list[Chip], size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one run of chips in one block: their pixels ``(n, band, [time,] size, size)``, a view
    of the block, and their valid fractions.

    Works for ``(band, y, x)`` and ``(band, time, y, x)``. A pixel counts as valid when every
    band (at every time step) has data; the reader gives that mask once for the whole block.
    """
    height, width = reader.shape[-2:]
    top = run[0].window.row_off
    left = run[0].window.col_off
    right = run[-1].window.col_off + size
    rows, cols = slice(top, min(top + size, height)), slice(left, min(right, width))
    block, valid = reader.read(rows, cols)
    if block.shape[-2:] != (size, right - left):  # the last row or column: pad as no data
        block, valid = _pad(block, valid, (size, right - left))
    offsets = np.array([chip.window.col_off - left for chip in run])
    if valid is None:
        fractions = np.ones(len(run))
    else:  # valid pixels per chip from running column sums: one pass for the run, exact integers
        counts = np.concatenate(([0], np.cumsum(valid.sum(axis=0))))
        fractions = (counts[offsets + size] - counts[offsets]) / (size * size)
    windows = sliding_window_view(block, size, axis=-1)[..., ::stride, :]  # (..., size, n, size)
    return np.moveaxis(windows, -2, 0), fractions.astype("float32")


def _pad(block: np.ndarray, valid: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``block`` and its valid mask grown to ``shape`` (rows, columns) with no data."""
    padded = np.full((*block.shape[:-2], *shape), np.nan, dtype="float32")
    padded[..., : block.shape[-2], : block.shape[-1]] = block
    mask = np.zeros(shape, dtype=bool)
    mask[: block.shape[-2], : block.shape[-1]] = True if valid is None else valid
    return padded, mask


class _Batcher:
    """Cuts pieces (consecutive kept chips of a run) into batches of ``size`` chips: a piece
    that covers a whole batch gives a view of it, a batch made of several pieces is copied."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pieces: list[tuple[list[Chip], np.ndarray, np.ndarray]] = []
        self.filled = 0

    def run_length(self, limit: int) -> int:
        """The longest run of at most ``limit`` (>= ``size``) chips that ends where a batch does."""
        first = self.size - self.filled
        return first + (limit - first) // self.size * self.size

    def add(self, chips: list[Chip], pixels: np.ndarray, fractions: np.ndarray) -> Iterator[ChipBatch]:
        start = 0
        while start < len(chips):
            stop = min(len(chips), start + self.size - self.filled)
            self.pieces.append((chips[start:stop], pixels[start:stop], fractions[start:stop]))
            self.filled += stop - start
            start = stop
            if self.filled == self.size:
                yield from self.flush()

    def flush(self) -> Iterator[ChipBatch]:
        if not self.pieces:
            return
        chips, pixels, fractions = zip(*self.pieces, strict=True)
        self.pieces, self.filled = [], 0
        yield ChipBatch([c for part in chips for c in part],
                        pixels[0] if len(pixels) == 1 else np.concatenate(pixels),
                        np.concatenate(fractions))
