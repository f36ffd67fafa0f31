"""Read stacembed's embedding files back as float32, undoing int8 quantization.

The quantization parameters travel inside the files (GeoParquet schema metadata
``stacembed:quantization``; GDAL band scales/offsets in the GeoTIFF) and in the STAC item
(``emb:quantization``), so any of them is enough to get measurements back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .writers.quantize import dequantize


def read_geoparquet(path: str | Path):
    """``(table, embeddings)``: the pyarrow table and an ``(n, D)`` float32 array."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dims = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims)
    raw = (table.schema.metadata or {}).get(b"stacembed:quantization")
    if raw is None:
        return table, values.astype("float32")
    quantization = json.loads(raw)
    return table, dequantize(values, quantization["scale"], quantization["offset"], axis=1)


def read_geotiff(path: str | Path):
    """``(embeddings, profile)``: a ``(D, height, width)`` float32 array (NaN: no chip) and the profile."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read()
        profile = ds.profile
        if np.issubdtype(data.dtype, np.floating):
            return data.astype("float32"), profile
        return dequantize(data, ds.scales, ds.offsets, axis=0), profile
