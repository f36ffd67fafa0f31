"""Analyses on every embeddings catalog stacembed writes: chips read from COGs (GeoTIFF-only chip
embeddings, dense ``emb:type pixel`` ones) through ``EmbeddingItem.iter_chips``, as from GeoParquet.

Expected values come from pyarrow and rasterio reading the files directly, and from the
GeoParquet of the same runs; never from the COG reader under test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import make_catalog, make_item
from range_http import loopback_environment, serve
from rasterio.warp import transform_bounds
from rasterio.windows import Window

import stacembed.embeddings as embeddings
from stacembed import RunConfig, run
from stacembed.analysis.cluster import NODATA, cluster_catalog
from stacembed.analysis.index import build_index
from stacembed.analysis.similar import Query, search_metadata, similar
from stacembed.embeddings import COG_COLUMNS, EmbeddingItem, open_embeddings
from stacembed.errors import ReadError

RUNS = {
    "float32": {"formats": ("geoparquet", "geotiff")},
    "stride": {"formats": ("geoparquet", "geotiff"), "stride": 32},  # chips overlap: footprints wider than pixels
    "int8": {"formats": ("geoparquet", "geotiff"), "dtype": "int8"},
    "dense": {"pooling": "none"},  # GeoTIFF only: 2 x 2 patches per 64 px chip
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two items of 200 x 300 px (4 x 5 chips of 64 px); the first has no data in its top chip row."""
    base = tmp_path_factory.mktemp("dense-runs")
    root = base / "source"
    items = [
        make_item(root, "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(200, 300), seed=1,
                  nodata=0, nodata_rows=64),
        make_item(root, "item-1", dialect="1.1", origin=(510000.0, 9100000.0), shape=(200, 300), seed=2),
    ]
    source = make_catalog(root, items)
    for name, options in RUNS.items():
        run(RunConfig(out=base / name, catalog=str(source), weights="random", progress=False, **options))
    return {name: base / name for name in RUNS}


def cog_only(item: EmbeddingItem) -> EmbeddingItem:
    return dataclasses.replace(item, hrefs={"geotiff": item.hrefs["geotiff"]})


def without_geoparquet(out, dest):
    """A copy of a run's output without its GeoParquet files and assets: GeoTIFF embeddings only."""
    shutil.copytree(out, dest)
    for item_file in dest.glob("*/*/*.json"):
        item = json.loads(item_file.read_text())
        for key, asset in list(item.get("assets", {}).items()):
            if asset.get("type") == "application/vnd.apache.parquet":
                (item_file.parent / asset["href"]).unlink()
                del item["assets"][key]
        item_file.write_text(json.dumps(item))
    return dest


def joined(batches):
    return pa.Table.from_batches([batch for batch, _ in batches]), np.concatenate([v for _, v in batches])


def keys(table):
    rows = table.select(["item", "chip_row", "chip_col"]).to_pylist()
    return [(r["item"], r["chip_row"], r["chip_col"]) for r in rows]


def patches(out, item_id):
    """``{(row, col): vector}`` of a dense item's patches, and the COG, read with rasterio."""
    path = next(out.glob(f"*/{item_id}/{item_id}.tif"))
    with rasterio.open(path) as ds:
        values = ds.read()
    rows, cols = np.nonzero(~np.isnan(values).all(axis=0))
    return {(int(r), int(c)): values[:, r, c].astype("float64") for r, c in zip(rows, cols, strict=True)}, path


@pytest.mark.parametrize("name", ["float32", "stride", "int8"])
def test_cog_chips_are_the_geoparquet_chips(runs, name):
    for item in open_embeddings(runs[name]):
        stored = pq.read_table(item.hrefs["geoparquet"])
        table, vectors = joined(list(cog_only(item).iter_chips(batch_rows=4)))
        assert table.schema.names == list(COG_COLUMNS)
        assert [stored.schema.field(n).type for n in COG_COLUMNS] == [f.type for f in table.schema]
        for column in ("id", "chip_row", "chip_col", "datetime", "source_item", "source_collection", "col_off",
                       "row_off", "width", "height"):
            assert table.column(column).equals(stored.column(column)), column
        expected = item.vectors()
        if name == "int8":  # each file is quantized with its own parameters: within a step of either
            scale = np.asarray(item.stac_item.properties["emb:quantization"]["scale"])
            assert np.all(np.abs(vectors - expected) <= scale + 1e-6)
        else:
            np.testing.assert_array_equal(vectors, expected)
        for column in ("geometry", "native_geometry"):
            got = shapely.from_wkb(table.column(column).to_numpy(zero_copy_only=False))
            want = shapely.from_wkb(stored.column(column).to_numpy(zero_copy_only=False))
            assert all(a.equals_exact(b, 1e-9) for a, b in zip(got, want, strict=True)), column
        for column in ("bbox", "native_xmin", "native_ymin", "native_xmax", "native_ymax"):
            got, want = table.column(column).combine_chunks(), stored.column(column).combine_chunks()
            if column == "bbox":
                got, want = (np.column_stack([a.field(i).to_numpy() for i in range(4)]) for a in (got, want))
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-9)
        geo, stored_geo = (json.loads(t.schema.metadata[b"geo"]) for t in (table, stored))
        for column in ("geometry", "native_geometry"):
            assert geo["columns"][column]["crs"] == stored_geo["columns"][column]["crs"]
        assert geo["columns"]["geometry"]["covering"] == stored_geo["columns"]["geometry"]["covering"]
        # With both formats, the chips are the GeoParquet's rows (without the embedding column).
        table, vectors = joined(list(item.iter_chips(batch_rows=4, columns=["id", "chip_row"])))
        assert table.select(["id", "chip_row"]).equals(stored.select(["id", "chip_row"]))
        np.testing.assert_array_equal(vectors, expected)


def test_columns_and_bbox_select_what_is_read(runs):
    item = cog_only(open_embeddings(runs["float32"])["item-1"])
    table, vectors = joined(list(item.iter_chips(columns=["chip_col", "embedding", "id"])))
    assert table.schema.names == ["chip_col", "id"] and len(vectors) == table.num_rows
    assert [len(v) for _, v in item.iter_chips(columns=[])] == [table.num_rows]
    with pytest.raises(ReadError, match="no column 'valid_fraction'"):
        list(item.iter_chips(columns=["valid_fraction"]))
    everything, _ = joined(list(item.iter_chips()))
    shapes = shapely.from_wkb(everything.column("geometry").to_numpy(zero_copy_only=False))
    west, south, east, north = shapes[7].centroid.buffer(1e-6).bounds
    near, near_vectors = joined(list(item.iter_chips(bbox=(west, south, east, north))))
    assert near.column("id").to_pylist() == [everything.column("id")[7].as_py()]
    assert list(item.iter_chips(bbox=(0, 0, 1, 1))) == []
    assert item.chip(0, 0) is not None and item.chip(99, 0) is None
    row, col = near.column("chip_row")[0].as_py(), near.column("chip_col")[0].as_py()
    np.testing.assert_array_equal(near_vectors[0], item.chip(row, col))


def test_batches_of_a_wide_cog_are_bounded(tmp_path, monkeypatch):
    """A 20,000 px wide COG is read in runs along its rows, never whole: every read and every
    batch holds at most ``batch_rows`` pixels; pixels without a chip (NaN) are skipped."""
    width, height = 20_000, 3
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, height, width)).astype("float32")
    data[:, rng.random((height, width)) < 0.2] = np.nan
    path = tmp_path / "wide.tif"
    transform = Affine(30.0, 0, 500000.0, 0, -30.0, 9100000.0)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2, dtype="float32",
                       crs="EPSG:32725", transform=transform, nodata=float("nan"), tiled=True) as ds:
        ds.write(data)
        ds.update_tags(STAC_ITEM_ID="source-item", STAC_DATETIME="2024-05-01T00:00:00Z")
    stac = pystac.Item("wide", None, None, datetime(2024, 5, 1, tzinfo=UTC), {})
    item = EmbeddingItem(stac, {"geotiff": str(path)}, 2, "pixel", "float32", None)
    reads = []
    values_of = embeddings._raster_values
    monkeypatch.setattr(embeddings, "_raster_values",
                        lambda ds, window: reads.append(window.width * window.height) or values_of(ds, window))
    for batch_rows in (1000, 45_000):
        reads.clear()
        batches = list(item.iter_chips(batch_rows=batch_rows, columns=["id", "chip_row", "chip_col"]))
        assert max(reads) <= batch_rows and sum(reads) == width * height
        assert all(batch.num_rows == len(vectors) <= batch_rows for batch, vectors in batches)
        table, vectors = joined(batches)
        rows, cols = np.nonzero(~np.isnan(data).all(axis=0))  # row-major, as a GeoParquet is
        np.testing.assert_array_equal(table.column("chip_row").to_numpy(), rows)
        np.testing.assert_array_equal(table.column("chip_col").to_numpy(), cols)
        np.testing.assert_array_equal(vectors, data[:, rows, cols].T)
        assert table.column("id")[0].as_py() == f"source-item_r{rows[0]}_c{cols[0]}"
    first, _ = next(item.iter_chips(batch_rows=10))
    pixel = shapely.from_wkb(first.column("native_geometry")[0].as_py())
    row, col = first.column("chip_row")[0].as_py(), first.column("chip_col")[0].as_py()
    assert pixel.equals(shapely.box(*rasterio.windows.bounds(Window(col, row, 1, 1), transform)))


def test_a_dense_catalog_clusters_on_its_patch_grid(runs, tmp_path):
    result = cluster_catalog(runs["dense"], k=3, seed=0, out=tmp_path, progress=False)
    assert result.items == ("item-0", "item-1")
    total = 0
    for item_id in result.items:
        vectors, cog = patches(runs["dense"], item_id)
        total += len(vectors)
        with rasterio.open(cog) as emb, rasterio.open(tmp_path / "clusters-k3" / item_id / f"{item_id}.tif") as ds:
            assert (ds.width, ds.height) == (emb.width, emb.height) == (10, 8)  # 2 x 2 patches per chip
            assert (ds.crs, ds.transform) == (emb.crs, emb.transform)
            values = ds.read(1)
        kept = np.zeros(values.shape, bool)
        kept[tuple(np.array(list(vectors)).T)] = True
        assert ((values != NODATA) == kept).all()
        table = pq.read_table(tmp_path / "clusters-k3" / item_id / f"{item_id}.parquet")
        rows, cols = table.column("chip_row").to_numpy(), table.column("chip_col").to_numpy()
        assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == sorted(vectors)
        np.testing.assert_array_equal(values[rows, cols], table.column("cluster").to_numpy())
        with rasterio.open(cog) as emb:  # a row's footprint is its patch, in lon/lat
            shape = shapely.from_wkb(table.column("geometry")[0].as_py())
            patch = transform_bounds(emb.crs, "OGC:CRS84", *emb.window_bounds(Window(cols[0], rows[0], 1, 1)))
        np.testing.assert_allclose(shape.bounds, patch, rtol=0, atol=1e-8)
    assert result.chips == total


def test_similar_finds_patches_of_a_dense_catalog(runs, tmp_path):
    vectors, cog = patches(runs["dense"], "item-1")
    item_file = cog.with_suffix(".json")
    names = [("item-1", *key) for key in vectors]
    matrix = np.array(list(vectors.values()))
    for key in list(vectors)[::9]:
        table = similar(runs["dense"], Query.from_chip("item-1", *key), k=5)
        assert keys(table)[0] == ("item-1", *key) and abs(table.column("similarity")[0].as_py() - 1) < 1e-6
        scores = matrix @ vectors[key] / np.linalg.norm(matrix, axis=1) / np.linalg.norm(vectors[key])
        every = similar(item_file, Query.from_chip("item-1", *key), k=len(vectors))  # the item's patches
        np.testing.assert_allclose(every.column("similarity").to_numpy(), np.sort(scores)[::-1], atol=1e-5)
        assert sorted(keys(every)) == sorted(names)
        centre = shapely.from_wkb(table.column("geometry")[0].as_py()).centroid
        assert keys(similar(runs["dense"], Query.from_point(centre.x, centre.y), k=1)) == [("item-1", *key)]
    # A geometry is the mean of the patches it covers.
    first, second = list(vectors)[0], list(vectors)[1]
    shapes = [shapely.from_wkb(similar(runs["dense"], Query.from_chip("item-1", *k), k=1).column("geometry")[0].as_py())
              for k in (first, second)]
    area = shapely.union_all([s.buffer(-1e-5) for s in shapes])
    table = similar(runs["dense"], Query.from_geometry(shapely.geometry.mapping(area)), k=1)
    assert sorted(search_metadata(table)["positive"]) == sorted(f"item-1:{r}:{c}" for r, c in (first, second))
    # The index is built over the patches, and searched.
    indexed = tmp_path / "indexed"
    shutil.copytree(runs["dense"], indexed)
    report = build_index(indexed)[0]
    assert report.chips == sum(len(patches(runs["dense"], i)[0]) for i in ("item-0", "item-1"))
    key = list(vectors)[3]
    table = similar(indexed, Query.from_chip("item-1", *key), k=5)
    assert set(search_metadata(table)["search"].values()) == {"index"} and keys(table)[0] == ("item-1", *key)


def test_a_dense_search_reprojects_the_footprints_of_the_kept_chips_only(runs, monkeypatch):
    """Footprints of a COG's chips are computed (reprojected, densified) for the chips the top-k
    keeps, not for every patch scanned; the results are those of the scan that computes them all
    (a --bbox covering the catalog needs every footprint for its filter)."""
    from stacembed.grid import Grid

    vectors, _ = patches(runs["dense"], "item-1")
    footprints = Grid.footprints
    asked = []
    monkeypatch.setattr(Grid, "footprints",
                        lambda self, cols, rows, size: asked.append(len(np.atleast_1d(cols))) or
                        footprints(self, cols, rows, size))
    key = list(vectors)[4]
    lazy = similar(runs["dense"], Query.from_chip("item-1", *key), k=3)
    lazily = sum(asked)
    asked.clear()
    # The world's box: projected to the items' UTM zone as it was, it met 8 of the 100 patches.
    everywhere = similar(runs["dense"], Query.from_chip("item-1", *key), k=3, bbox=[-180, -90, 180, 90])
    total = sum(len(patches(runs["dense"], i)[0]) for i in ("item-0", "item-1"))
    assert search_metadata(lazy)["chips_searched"] == search_metadata(everywhere)["chips_searched"] == total
    assert lazy.equals(everywhere.replace_schema_metadata(lazy.schema.metadata))
    assert sum(asked) >= total > 3 * lazily


def test_a_geotiff_only_catalog_searches_like_its_geoparquet(runs, tmp_path):
    tiff = without_geoparquet(runs["float32"], tmp_path / "tiff")
    assert all(list(item.hrefs) == ["geotiff"] for item in open_embeddings(tiff))
    for key in [("item-0", 1, 2), ("item-1", 2, 4), ("item-1", 0, 0)]:
        want = similar(runs["float32"], Query.from_chip(*key), k=8)
        got = similar(tiff, Query.from_chip(*key), k=8)
        assert keys(got) == keys(want) and keys(got)[0] == key
        np.testing.assert_allclose(got.column("similarity").to_numpy(), want.column("similarity").to_numpy(),
                                   atol=1e-6)
        assert got.column("id").equals(want.column("id"))
        centre = shapely.from_wkb(want.column("geometry")[0].as_py()).centroid
        assert keys(similar(tiff, Query.from_point(centre.x, centre.y), k=1)) == [key]
    build_index(tiff)
    table = similar(tiff, Query.from_chip("item-1", 2, 2), k=5)
    assert set(search_metadata(table)["search"].values()) == {"index"} and keys(table)[0] == ("item-1", 2, 2)


def test_a_served_geotiff_only_catalog_reads_like_the_one_on_disk(runs, tmp_path, monkeypatch):
    loopback_environment(monkeypatch, GDAL_HTTP_MAX_RETRY="0")
    tiff = without_geoparquet(runs["dense"], tmp_path / "dense")
    local = open_embeddings(tiff)["item-1"]
    with serve(tiff) as (url, log):
        remote = open_embeddings(f"{url}/catalog.json")["item-1"]
        want, got = joined(list(local.iter_chips(batch_rows=7))), joined(list(remote.iter_chips(batch_rows=7)))
        assert got[0].equals(want[0]) and np.array_equal(got[1], want[1])
        table = similar(f"{url}/catalog.json", Query.from_chip("item-1", 3, 3), k=3)
        assert keys(table)[0] == ("item-1", 3, 3)
    assert any(path.endswith(".tif") and ranged for _, path, ranged in log)  # read in place, by ranges
