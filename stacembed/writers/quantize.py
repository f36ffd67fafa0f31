"""Linear int8 quantization of embeddings, with the parameters recorded so readers can undo it.

``x ~= q * scale + offset`` with ``q`` in [-127, 127]; -128 is left for "no chip here".
Parameters are per dimension (each band/vector component has its own range) or global (one
range for all), computed from the embeddings actually written, which writers track as they
stream (``RangeTracker``) and apply when they finish the file.

Readers also undo the one other int8 mapping embedding products use, named by their
``emb:quantization``: ``signed-square``, ``x = sign(q) * (|q| / scale)**2`` (AlphaEarth
Foundations' annual embeddings, scale 127.5, -128 for "no data"; see ``importers.aef``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NODATA = -128
MODES = ("per-dimension", "global")


class RangeTracker:
    """Running per-dimension min and max of ``(n, D)`` or ``(n, D, h, w)`` embeddings (NaN ignored)."""

    def __init__(self, dims: int) -> None:
        self.low = np.full(dims, np.inf)
        self.high = np.full(dims, -np.inf)

    def update(self, embeddings: np.ndarray) -> None:
        if not len(embeddings):
            return
        values = np.moveaxis(embeddings, 1, -1).reshape(-1, embeddings.shape[1])
        with np.errstate(all="ignore"):
            self.low = np.fmin(self.low, np.nanmin(values, axis=0))
            self.high = np.fmax(self.high, np.nanmax(values, axis=0))


@dataclass(frozen=True)
class Quantization:
    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def fit(cls, tracker: RangeTracker, mode: str = "per-dimension") -> Quantization:
        low, high = tracker.low.copy(), tracker.high.copy()
        if mode == "global":
            low[:], high[:] = np.min(low), np.max(high)
        empty = ~np.isfinite(low)
        low[empty], high[empty] = 0.0, 0.0
        scale = (high - low) / 254.0
        scale[scale == 0] = 1.0  # a constant dimension: any scale reproduces it exactly
        return cls(scale.astype("float64"), ((high + low) / 2.0).astype("float64"))

    def quantize(self, values: np.ndarray, axis: int = 1) -> np.ndarray:
        """float -> int8 along ``axis`` (the dimension axis); NaN becomes ``NODATA``."""
        shape = [1] * values.ndim
        shape[axis] = -1
        q = np.rint((values - self.offset.reshape(shape)) / self.scale.reshape(shape))
        q = np.clip(np.nan_to_num(q, nan=NODATA), -127, 127)
        q[np.isnan(values)] = NODATA
        return q.astype("int8")

    def to_stac(self, mode: str) -> dict:
        """The ``emb:quantization`` object of the Embeddings extension."""
        return {
            "method": "linear",  # the extension's name; per-dimension or global is in emb:runtime_parameters
            "original_dtype": "float32",
            "quantized_dtype": "int8",
            "scale": [float(v) for v in self.scale],
            "offset": [float(v) for v in self.offset],
        }


def dequantize(q: np.ndarray, scale, offset, axis: int = 1) -> np.ndarray:
    """int8 -> float32 along ``axis``; ``NODATA`` becomes NaN."""
    shape = [1] * q.ndim
    shape[axis] = -1
    values = (q.astype("float64") * np.asarray(scale, "float64").reshape(shape)
              + np.asarray(offset, "float64").reshape(shape))
    values[q == NODATA] = np.nan
    return values.astype("float32")


LINEAR = "linear"
SIGNED_SQUARE = "signed-square"
METHODS = (LINEAR, SIGNED_SQUARE)


def dequantize_signed_square(q: np.ndarray, scale, axis: int = 0) -> np.ndarray:
    """int8 -> float32, ``sign(q) * (|q| / scale)**2`` along ``axis`` (``scale``: one number, or one
    per dimension); ``NODATA`` becomes NaN."""
    shape = [1] * q.ndim
    shape[axis] = -1
    scale = np.asarray(scale, "float64")
    ratio = q.astype("float64") / (scale.reshape(shape) if scale.size > 1 else scale.reshape(()))
    values = ratio * np.abs(ratio)
    values[q == NODATA] = np.nan
    return values.astype("float32")
