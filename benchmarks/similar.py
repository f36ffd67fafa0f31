"""Similarity search at scale: exact and indexed ``stacembed similar`` on a synthetic catalog.

Writes an embeddings catalog of ``--n`` chips of ``--dims`` float32 dimensions, as stacembed
writes them (one GeoParquet per item, row groups of 2,048 chips, ``geometry``/``bbox``/
``datetime``/``chip_row``/``chip_col`` columns, STAC catalog -> collection -> items), a row group
at a time, so that writing holds one row group in memory. The vectors are clustered like model
embeddings: 200 classes x 20 sub-classes on a 48-dimensional manifold, plus noise.

Then it measures:

- exact search (``similar(..., exact=True)``), in a child process: seconds per query (a full
  streaming scan), queries/s, and the child's peak RSS (``ru_maxrss``) during the scans;
- ``build_index``: seconds and index size;
- indexed search: queries/s on an opened index (``ChipIndex.search``), and the seconds of one
  cold ``similar`` call (which opens the index and its sidecar);
- recall@10 of indexed against exact search over ``--queries`` queries (chips of the catalog,
  moved by a little noise); exact answers all of them in one streaming pass (``scan``).

Usage:  python benchmarks/similar.py [--n 1000000] [--dims 384] [--items 4] [--queries 100]
                                     [--exact-queries 3] [--dir DIR] [--keep] [--json FILE]
Run by hand (it is not part of the tests): --n 1000000 takes about three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROW_GROUP = 2048
CHIP_DEGREES = 0.001
COLLECTION = "synthetic-embeddings"


def clustered(rng: np.random.Generator, n: int, dims: int, centres: tuple[np.ndarray, ...]) -> np.ndarray:
    coarse, fine, basis = centres
    sub = rng.integers(0, len(fine), n)
    latent = coarse[sub // 20] + fine[sub] + rng.normal(scale=0.3, size=(n, basis.shape[0])).astype("float32")
    return (latent @ basis + rng.normal(scale=0.05, size=(n, dims))).astype("float32")


def write_catalog(root: Path, n: int, dims: int, n_items: int, seed: int = 0) -> Path:
    """The synthetic catalog under ``root``; its catalog.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from stacembed.layout import multihash_sha256

    rng = np.random.default_rng(seed)
    latent = 48
    centres = (rng.normal(size=(200, latent)).astype("float32"),
               rng.normal(scale=0.5, size=(200 * 20, latent)).astype("float32"),
               (rng.normal(size=(latent, dims)) / np.sqrt(latent)).astype("float32"))
    collection_dir = root / COLLECTION
    collection_dir.mkdir(parents=True, exist_ok=True)
    per_item = -(-n // n_items)
    side = int(np.ceil(np.sqrt(per_item)))
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                    "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}}}
    schema = pa.schema([
        ("id", pa.string()), ("geometry", pa.binary()),
        ("bbox", pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])),
        ("embedding", pa.list_(pa.float32(), dims)), ("datetime", pa.timestamp("us", tz="UTC")),
        ("source_item", pa.string()), ("source_collection", pa.string()),
        ("chip_row", pa.int32()), ("chip_col", pa.int32()),
    ], metadata={"geo": json.dumps(geo)})
    links = []
    written = 0
    for number in range(n_items):
        item_id = f"synthetic-{number:03d}"
        rows = min(per_item, n - written)
        written += rows
        west, north = -60.0 + number * (side + 10) * CHIP_DEGREES, -10.0
        when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=30 * number)
        item_dir = collection_dir / item_id
        item_dir.mkdir(exist_ok=True)
        path = item_dir / f"{item_id}.parquet"
        with pq.ParquetWriter(path, schema, compression="zstd",
                              use_dictionary=["id", "source_item", "source_collection"]) as writer:
            for start in range(0, rows, ROW_GROUP):
                count = min(ROW_GROUP, rows - start)
                index = np.arange(start, start + count)
                chip_row, chip_col = index // side, index % side
                xmin = west + chip_col * CHIP_DEGREES
                ymax = north - chip_row * CHIP_DEGREES
                xmax, ymin = xmin + CHIP_DEGREES, ymax - CHIP_DEGREES
                vectors = clustered(rng, count, dims, centres)
                batch = pa.table({
                    "id": pa.array([f"{item_id}_r{r}_c{c}" for r, c in zip(chip_row, chip_col, strict=True)]),
                    "geometry": pa.array(shapely.to_wkb(shapely.box(xmin, ymin, xmax, ymax))),
                    "bbox": pa.StructArray.from_arrays([pa.array(xmin), pa.array(ymin), pa.array(xmax), pa.array(ymax)],
                                                       names=["xmin", "ymin", "xmax", "ymax"]),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
                    "datetime": pa.array([when] * count, pa.timestamp("us", tz="UTC")),
                    "source_item": pa.array([item_id] * count), "source_collection": pa.array(["synthetic"] * count),
                    "chip_row": pa.array(chip_row, pa.int32()), "chip_col": pa.array(chip_col, pa.int32()),
                }, schema=schema)
                writer.write_table(batch, row_group_size=ROW_GROUP)
        east = west + side * CHIP_DEGREES
        south = north - (-(-rows // side)) * CHIP_DEGREES
        item = {
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": COLLECTION,
            "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                             [west, north], [west, south]]]},
            "bbox": [west, south, east, north],
            "properties": {"datetime": when.isoformat().replace("+00:00", "Z"),
                           "emb:runtime_parameters": {"mlm:name": "synthetic", "pooling": "default"}},
            "assets": {"embeddings": {"href": f"./{path.name}", "type": "application/vnd.apache.parquet",
                                      "roles": ["data", "embeddings"], "file:size": path.stat().st_size,
                                      "file:checksum": multihash_sha256(path)}},
            "links": [{"rel": "collection", "href": "../collection.json"},
                      {"rel": "parent", "href": "../collection.json"},
                      {"rel": "root", "href": "../../catalog.json"}],
        }
        (item_dir / f"{item_id}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./{item_id}/{item_id}.json", "type": "application/geo+json"})
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": COLLECTION, "description": "synthetic embeddings",
        "license": "CC0-1.0", "emb:type": "chip", "emb:dimensions": dims, "data_type": "float32",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]}},
        "assets": {},
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}, *links],
    }
    (collection_dir / "collection.json").write_text(json.dumps(collection))
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "root", "description": "benchmark",
               "links": [{"rel": "root", "href": "./catalog.json"},
                         {"rel": "child", "href": f"./{COLLECTION}/collection.json"}]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


def query_vectors(catalog: Path, count: int, seed: int = 1) -> np.ndarray:
    """``count`` chips of the catalog (read from its first row groups), moved by a little noise."""
    from stacembed.embeddings import open_embeddings

    rng = np.random.default_rng(seed)
    items = list(open_embeddings(catalog))
    picked = []
    for number in range(count):
        item = items[number % len(items)]
        for _, vectors in item.iter_batches():
            picked.append(vectors[rng.integers(0, len(vectors))])
            break
    queries = np.array(picked) + rng.normal(scale=0.02, size=(count, len(picked[0])))
    return queries.astype("float32")


def child_exact(catalog: str, queries_file: str) -> None:
    """In a child process: time exact searches; print JSON with the seconds and the peak RSS."""
    from stacembed.analysis.similar import Query, similar

    queries = np.load(queries_file)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for vector in queries:
        started = time.perf_counter()
        similar(catalog, Query.from_vector(vector), 10, exact=True)
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, "rss_before_mib": baseline / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="Chips in the catalog.")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--items", type=int, default=4, help="Items (GeoParquet files) they are split into.")
    parser.add_argument("--queries", type=int, default=100, help="Queries for recall@10 and indexed queries/s.")
    parser.add_argument("--exact-queries", type=int, default=3, help="Exact searches timed (a full scan each).")
    parser.add_argument("--dir", type=Path, help="Where to write the catalog (default: a temporary directory).")
    parser.add_argument("--keep", action="store_true", help="Keep the catalog (and reuse one already in --dir).")
    parser.add_argument("--json", type=Path, help="Also write every number to this file.")
    parser.add_argument("--child-exact", nargs=2, metavar=("CATALOG", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_exact:
        child_exact(*args.child_exact)
        return

    from stacembed.analysis.index import BRUTE_FORCE_BELOW, EF_SEARCH, build_index, open_index
    from stacembed.analysis.similar import Filters, Query, TopK, catalog_order, scan, similar
    from stacembed.embeddings import open_embeddings

    root = args.dir or Path(tempfile.mkdtemp(prefix="stacembed-similar-bench-"))
    results: dict = {"n": args.n, "dims": args.dims, "items": args.items, "date": datetime.now(UTC).isoformat()}
    try:
        catalog_file = root / "catalog.json"
        if not (args.keep and catalog_file.is_file()):
            started = time.perf_counter()
            write_catalog(root, args.n, args.dims, args.items)
            results["write_seconds"] = time.perf_counter() - started
            results["write_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
            print(f"wrote {args.n:,} x {args.dims} chips in {args.items} items ({size / 1e9:.2f} GB) in "
                  f"{results['write_seconds']:.0f} s, peak RSS {results['write_peak_rss_mib']:.0f} MiB", flush=True)
        queries = query_vectors(catalog_file, max(args.queries, args.exact_queries))
        queries_file = root / "queries.npy"
        np.save(queries_file, queries[:args.exact_queries])

        child = subprocess.run([sys.executable, __file__, "--child-exact", str(catalog_file), str(queries_file)],
                               check=True, capture_output=True, text=True)
        exact = json.loads(child.stdout.strip().splitlines()[-1])
        per_query = float(np.median(exact["seconds"]))
        results["exact"] = {**exact, "median_seconds": per_query, "queries_per_second": 1 / per_query}
        print(f"exact: {per_query:.2f} s a query ({1 / per_query:.2f} q/s), peak RSS {exact['peak_rss_mib']:.0f} MiB "
              f"(before the first scan: {exact['rss_before_mib']:.0f} MiB)", flush=True)

        started = time.perf_counter()
        report = build_index(catalog_file, force=True)[0]
        results["index"] = {"build_seconds": time.perf_counter() - started, "size_bytes": report.size,
                            "sidecar_bytes": report.index.with_suffix(".parquet").stat().st_size}
        print(f"index: built in {results['index']['build_seconds']:.0f} s, {report.size / 1e6:.0f} MB "
              f"(+ sidecar {results['index']['sidecar_bytes'] / 1e6:.0f} MB)", flush=True)

        catalog = open_embeddings(catalog_file)
        items = list(catalog)
        order = catalog_order(items)
        unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        started = time.perf_counter()
        index = open_index(items)
        open_seconds = time.perf_counter() - started
        started = time.perf_counter()
        found = [index.search(vector, 10, Filters(), order)[1] for vector in unit[:args.queries]]
        indexed_qps = args.queries / (time.perf_counter() - started)
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=EF_SEARCH)
        started = time.perf_counter()
        for vector in unit[:args.queries]:  # FAISS alone, at the same efSearch: no sidecar rows read
            index.index.search(vector[None], 10, params=params)
        faiss_qps = args.queries / (time.perf_counter() - started)
        # A bbox over half of the first item: filtered search (IDSelectorBitmap or, below
        # BRUTE_FORCE_BELOW chips, exact scoring of the vectors the index holds).
        west, south, east, north = items[0].bbox
        half = Filters(bbox=(west, south, (west + east) / 2, north))
        started = time.perf_counter()
        found_half = [index.search(vector, 10, half, order)[1] for vector in unit[:args.queries]]
        filtered_qps = args.queries / (time.perf_counter() - started)
        index.close()
        started = time.perf_counter()
        similar(catalog, Query.from_vector(queries[0]), 10)
        cold = time.perf_counter() - started

        started = time.perf_counter()
        tops = [TopK(10) for _ in unit[:args.queries]]
        scan(items, order, unit[:args.queries], Filters(), tops)
        batch_exact = time.perf_counter() - started
        recall = np.mean([len({tuple(k) for k in keys} & {tuple(k) for k in top.keys}) / 10
                          for keys, top in zip(found, tops, strict=True)])
        tops_half = [TopK(10) for _ in unit[:args.queries]]
        scan(items, order, unit[:args.queries], half, tops_half)
        recall_half = np.mean([len({tuple(k) for k in keys} & {tuple(k) for k in top.keys}) / 10
                               for keys, top in zip(found_half, tops_half, strict=True)])
        results["indexed"] = {"queries_per_second": indexed_qps, "faiss_queries_per_second": faiss_qps,
                              "open_seconds": open_seconds,
                              "cold_similar_seconds": cold, "filtered_queries_per_second": filtered_qps,
                              "brute_force_below": BRUTE_FORCE_BELOW, f"recall_at_10_over_{args.queries}": recall,
                              "filtered_recall_at_10": recall_half,
                              "exact_one_pass_seconds_for_all_queries": batch_exact}
        print(f"indexed: {indexed_qps:,.0f} q/s on the open index, result rows included ({faiss_qps:,.0f} q/s in FAISS "
              f"alone; {filtered_qps:,.0f} q/s with a bbox over half an item); opening it {open_seconds:.1f} s; "
              f"one cold `similar` call {cold:.1f} s", flush=True)
        print(f"recall@10 of indexed vs exact over {args.queries} queries: {recall:.3f}, with the bbox "
              f"{recall_half:.3f} (exact answered all {args.queries} in one pass of {batch_exact:.0f} s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
