"""Exact similarity search over dense (pixel) embeddings, as ``stacembed import aef`` gives them.

Writes an AlphaEarth-like COG of ``--side`` x ``--side`` pixels (64 int8 bands, unit vectors
quantized as the dataset documents, DEFLATE, 256 px tiles), describes it with ``import_aef``
(in place), then measures in the same process, alternating, ``--repeat`` times:

- ``scan``: ``similar(catalog, <a pixel>, k=10, exact=True)``, the whole search as users call it
  (every pixel read, de-quantized and scored; the kept chips' rows built);
- ``bound``: the same pixels read in the same windows of whole rows with rasterio, de-quantized
  and scored with numpy (``einsum``, as the scan's ``cosine``), keeping only the best score: what
  no exact scan of this file can beat on this machine.

Reports seconds, million pixels per second and ``bound / scan`` (1.0: the scan costs nothing
beyond reading and scoring). Usage:

    python benchmarks/dense_scan.py [--side 2048] [--repeat 3] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_aef(path: Path, side: int, seed: int = 0) -> None:
    """An AlphaEarth-like file: 64 int8 bands of unit vectors under the documented quantization."""
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 64, "dtype": "int8", "nodata": -128,
               "crs": "EPSG:32725", "transform": Affine(10.0, 0, 290000.0, 0, -10.0, 9118000.0), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as ds:
        for top in range(0, side, 256):
            rows = min(256, side - top)
            x = rng.normal(size=(64, rows, side))
            x /= np.linalg.norm(x, axis=0)
            q = np.clip(np.rint(np.sign(x) * np.sqrt(np.abs(x)) * 127.5), -127, 127).astype("int8")
            ds.write(q, window=((top, top + rows), (0, side)))


def bound(path: Path, query: np.ndarray, batch_rows: int) -> float:
    """Seconds to read every pixel in windows of whole rows, de-quantize and score them."""
    import rasterio
    from rasterio.windows import Window

    start = time.perf_counter()
    best = -np.inf
    with rasterio.open(path) as ds:
        rows = max(1, batch_rows // ds.width)
        for top in range(0, ds.height, rows):
            q = ds.read(window=Window(0, top, ds.width, min(rows, ds.height - top)))
            ratio = q.reshape(64, -1).T.astype("float64") / 127.5
            vectors = (ratio * np.abs(ratio)).astype("float32")
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            best = max(best, float((np.einsum("ij,j->i", vectors, query) / norms).max()))
    assert best > 0.999  # the query pixel is in the file
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048, help="Pixels per side of the file.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="Where to write the file and catalog (default: temporary).")
    parser.add_argument("--json", type=Path, help="Also write every number to this file.")
    args = parser.parse_args()

    from stacembed import open_embeddings
    from stacembed.analysis.similar import Query, similar
    from stacembed.embeddings import BATCH_ROWS
    from stacembed.importers.aef import import_aef

    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        path = root / "2024" / "25S" / f"xbench-{args.side}.tiff"
        if not path.exists():
            write_aef(path, args.side)
        out = root / f"catalog-{args.side}"
        if not (out / "catalog.json").exists():
            import_aef([str(path)], out)
        row, col = args.side // 3, args.side // 2
        query = Query.from_chip(f"xbench-{args.side}-2024", row, col)
        (item,) = open_embeddings(out)
        unit = (item.chip(row, col) / np.linalg.norm(item.chip(row, col))).astype("float32")
        results = {"side": args.side, "pixels": args.side ** 2, "scan": [], "bound": []}
        for _ in range(args.repeat):
            start = time.perf_counter()
            hits = similar(out, query, k=10, exact=True)
            results["scan"].append(time.perf_counter() - start)
            assert (hits.column("chip_row")[0].as_py(), hits.column("chip_col")[0].as_py()) == (row, col)
            results["bound"].append(bound(path, unit, BATCH_ROWS))
    scan, best = statistics.median(results["scan"]), statistics.median(results["bound"])
    mpixels = results["pixels"] / 1e6
    results.update(scan_median_s=scan, bound_median_s=best, ratio=best / scan,
                   scan_mpixels_per_s=mpixels / scan, bound_mpixels_per_s=mpixels / best)
    print(f"{results['pixels'] / 1e6:.1f} M pixels x 64 int8: scan {scan:.2f} s ({results['scan_mpixels_per_s']:.2f} "
          f"M px/s), bound {best:.2f} s ({results['bound_mpixels_per_s']:.2f} M px/s); bound / scan = "
          f"{results['ratio']:.2f} (medians of {args.repeat})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
