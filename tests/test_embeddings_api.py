"""The reading API (``stacembed.embeddings``) against real runs, checked with independent readers.

Expected values come from pyarrow, rasterio and geopandas reading the same files directly, and
from the STAC items' own ``emb:quantization``; never from stacembed's readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import make_catalog, make_item
from geopandas.testing import assert_geodataframe_equal
from range_http import loopback_environment, serve
from rasterio.windows import Window

from stacembed import RunConfig, run
from stacembed.embeddings import cached_copy, open_embeddings, read_geoparquet, read_geotiff
from stacembed.errors import ReadError

RUNS = {
    "float32": {"formats": ("geoparquet", "geotiff")},
    "float16": {"formats": ("geoparquet",), "dtype": "float16"},
    "int8": {"formats": ("geoparquet", "geotiff"), "dtype": "int8"},
    "dense": {"formats": ("geotiff",), "pooling": "none"},
}
ITEMS = ["item-0", "item-1"]
CHIP_ROWS, CHIP_COLS = 4, 5  # 200 x 300 px in 64 px chips


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two items; the first has no data in its top chip row, so those chips are skipped (NaN in the COG)."""
    root = tmp_path_factory.mktemp("source")
    items = [
        make_item(root, "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(200, 300), seed=1,
                  nodata=0, nodata_rows=64),
        make_item(root, "item-1", dialect="1.1", origin=(510000.0, 9100000.0), shape=(200, 300), seed=2),
    ]
    return make_catalog(root, items)


@pytest.fixture(scope="module")
def runs(source, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    for name, options in RUNS.items():
        run(RunConfig(out=base / name, catalog=str(source), progress=False, **options))
    return {name: base / name for name in RUNS}


def files(out, item_id, suffix):
    return next(out.glob(f"*/{item_id}/{item_id}{suffix}"))


def test_any_entry_point_lists_the_embedding_items_with_their_collection_facts(runs):
    out = runs["int8"]
    collection = next(out.glob("*/collection.json"))
    for href in (out, out / "catalog.json", collection):
        catalog = open_embeddings(href)
        assert [item.id for item in catalog] == ITEMS and len(catalog) == 2
    item = open_embeddings(files(out, "item-1", ".json"))["item-1"]
    stac = json.loads(files(out, "item-1", ".json").read_text())
    assert item.collection_id == stac["collection"] == collection.parent.name
    assert item.bbox == stac["bbox"]
    assert item.datetime.isoformat() == stac["properties"]["datetime"].replace("Z", "+00:00")
    assert (item.dimensions, item.kind, item.data_type) == (96, "chip", "int8")
    assert item.chip_layout["chip_size"] == [64, 64]
    assert item.hrefs == {"geoparquet": str(files(out, "item-1", ".parquet")),
                          "geotiff": str(files(out, "item-1", ".tif"))}
    dense = open_embeddings(runs["dense"])["item-0"]
    assert (dense.kind, list(dense.hrefs)) == ("pixel", ["geotiff"])


def test_tables_are_the_files_as_pyarrow_and_geopandas_read_them(runs):
    for item in open_embeddings(runs["int8"]):
        path = files(runs["int8"], item.id, ".parquet")
        assert item.table().equals(pq.read_table(path))
        assert item.table(["id", "chip_row"]).equals(pq.read_table(path, columns=["id", "chip_row"]))
        gdf = item.geodataframe()
        assert gdf.crs == "OGC:CRS84"
        assert_geodataframe_equal(gdf, gpd.read_parquet(path))
        assert list(item.geodataframe(["id"]).columns) == ["id", "geometry"]


def test_vectors_are_the_cog_pixels_at_their_chip_positions_and_nan_elsewhere(runs):
    for item in open_embeddings(runs["float32"]):
        table = pq.read_table(files(runs["float32"], item.id, ".parquet"))
        expected = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        rows, cols = table.column("chip_row").to_numpy(), table.column("chip_col").to_numpy()
        with rasterio.open(files(runs["float32"], item.id, ".tif")) as ds:
            pixels, transform, crs = ds.read(), ds.transform, ds.crs
            centres = ds.xy(np.arange(ds.height), np.zeros(ds.height)), ds.xy(np.zeros(ds.width), np.arange(ds.width))
        vectors = item.vectors()
        assert vectors.dtype == np.float32 and vectors.shape == (table.num_rows, 96)
        np.testing.assert_array_equal(vectors, expected)
        np.testing.assert_array_equal(pixels[:, rows, cols].T, vectors)
        values, got_transform, got_crs = item.array()
        np.testing.assert_array_equal(values, pixels)
        assert (got_transform, got_crs) == (transform, crs)
        kept = np.zeros(values.shape[1:], bool)
        kept[rows, cols] = True
        assert 0 < kept.sum() < kept.size  # the 8 px bottom chip row (and item-0's empty top row) is skipped
        assert np.isnan(values[:, ~kept]).all() and not np.isnan(values[:, kept]).any()
        grid = item.grid()
        assert grid.dims == ("band", "y", "x") and grid.shape == (96, CHIP_ROWS, CHIP_COLS)
        np.testing.assert_array_equal(grid.values, pixels)
        np.testing.assert_allclose(grid.y, centres[0][1])
        np.testing.assert_allclose(grid.x, centres[1][0])
        assert grid.attrs["transform"] == tuple(transform)[:6] and rasterio.CRS.from_string(grid.attrs["crs"]) == crs


def test_int8_and_float16_come_back_as_float32_within_their_precision(runs):
    reference = {item.id: item for item in open_embeddings(runs["float32"])}
    for item in open_embeddings(runs["int8"]):
        stac = item.stac_item.properties["emb:quantization"]
        scale, offset = np.asarray(stac["scale"]), np.asarray(stac["offset"])
        raw = np.stack(pq.read_table(item.hrefs["geoparquet"]).column("embedding").to_numpy(zero_copy_only=False))
        vectors = item.vectors()
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, raw * scale + offset, rtol=1e-6, atol=1e-6)
        assert np.all(np.abs(vectors - reference[item.id].vectors()) <= scale / 2 + 1e-6)
        grid, expected = item.array()[0], reference[item.id].array()[0]
        assert grid.dtype == np.float32 and np.array_equal(np.isnan(grid), np.isnan(expected))
        kept = ~np.isnan(expected)
        assert np.all((np.abs(grid - expected) <= scale[:, None, None] / 2 + 1e-6)[kept])
    for item in open_embeddings(runs["float16"]):
        vectors = item.vectors()
        assert vectors.dtype == np.float32 and item.data_type == "float16"
        np.testing.assert_allclose(vectors, reference[item.id].vectors(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("run_name", ["float32", "int8"])
def test_batches_hold_at_most_batch_rows_and_add_up_to_the_vectors(runs, run_name):
    for item in open_embeddings(runs[run_name]):
        batches = list(item.iter_batches(batch_rows=3, columns=["id"]))
        assert all(batch.num_rows <= 3 and len(vectors) == batch.num_rows for batch, vectors in batches)
        assert batches[0][0].schema.names == ["id", "embedding"]
        np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), item.vectors())
        assert sum((b.column("id").to_pylist() for b, _ in batches), []) == item.table(["id"]).column("id").to_pylist()


def test_windows_and_lon_lat_boxes_read_only_that_part_of_the_grid(runs):
    item = open_embeddings(runs["float32"])["item-1"]
    full, transform, _ = item.array()
    part, part_transform, _ = item.array(window=Window(1, 2, 3, 2))
    np.testing.assert_array_equal(part, full[:, 2:4, 1:4])
    assert part_transform == transform * transform.translation(1, 2)
    gdf, vectors = item.geodataframe(["chip_row", "chip_col"]), item.vectors()
    for index in (0, len(gdf) - 1):
        centre = gdf.geometry.iloc[index].centroid
        grid = item.grid(bbox=(centre.x - 1e-6, centre.y - 1e-6, centre.x + 1e-6, centre.y + 1e-6))
        assert grid.shape == (96, 1, 1)
        np.testing.assert_array_equal(grid.values[:, 0, 0], vectors[index])
        row, col = gdf.chip_row.iloc[index], gdf.chip_col.iloc[index]
        np.testing.assert_array_equal(grid.values, item.grid().isel(y=[row], x=[col]).values)
    with pytest.raises(ReadError, match="does not overlap"):
        item.array(bbox=(0, 0, 1, 1))


def test_dense_embeddings_are_a_patch_grid(runs):
    item = open_embeddings(runs["dense"])["item-1"]
    with rasterio.open(item.hrefs["geotiff"]) as ds:
        pixels, transform = ds.read(), ds.transform
    grid = item.grid()
    assert grid.shape == (96, 2 * CHIP_ROWS, 2 * CHIP_COLS) and grid.attrs["transform"] == tuple(transform)[:6]
    np.testing.assert_array_equal(grid.values, pixels)
    with pytest.raises(ReadError, match="GeoTIFF only"):
        item.vectors()


def test_single_file_readers_are_the_item_readers(runs):
    item = open_embeddings(runs["int8"])["item-0"]
    table, vectors = read_geoparquet(item.hrefs["geoparquet"])
    assert table.equals(item.table())
    np.testing.assert_array_equal(vectors, item.vectors())
    values, profile = read_geotiff(item.hrefs["geotiff"])
    np.testing.assert_array_equal(values, item.array()[0])
    assert (profile["dtype"], profile["nodata"]) == ("int8", -128)


def test_a_served_catalog_reads_like_the_same_catalog_on_disk(runs, monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"GDAL_HTTP_TIMEOUT": "10", "GDAL_HTTP_MAX_RETRY": "0", "NO_PROXY": "127.0.0.1",
                        "no_proxy": "127.0.0.1", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}.items():
        monkeypatch.setenv(name, value)
    local = open_embeddings(runs["int8"])
    with serve(runs["int8"]) as (url, log):
        remote = open_embeddings(f"{url}/catalog.json")
        assert [item.id for item in remote] == ITEMS
        for mine, theirs in zip(local, remote, strict=True):
            assert theirs.hrefs["geotiff"].startswith(url) and theirs.dimensions == 96
            np.testing.assert_array_equal(theirs.vectors(), mine.vectors())
            batches = [vectors for _, vectors in theirs.iter_batches(batch_rows=4)]
            np.testing.assert_array_equal(np.concatenate(batches), mine.vectors())
            assert_geodataframe_equal(theirs.geodataframe(), mine.geodataframe())
            np.testing.assert_array_equal(theirs.grid().values, mine.grid().values)
        assert any(r[1].endswith(".tif") and r[2] for r in log)  # the COG was read by ranges, in place
        with pytest.raises(ReadError, match="cannot read STAC"):
            open_embeddings(f"{url}/missing/catalog.json")


def test_a_cached_copy_is_downloaded_once_per_version_of_the_file(tmp_path, monkeypatch):
    loopback_environment(monkeypatch)
    (tmp_path / "index.bin").write_bytes(b"first")
    with serve(tmp_path) as (url, log):
        first = cached_copy(f"{url}/index.bin")
        assert cached_copy(f"{url}/index.bin") == first and open(first, "rb").read() == b"first"
        (tmp_path / "index.bin").write_bytes(b"second version")  # another size: another version
        second = cached_copy(f"{url}/index.bin")
        assert second != first and open(second, "rb").read() == b"second version"
        assert not Path(first).exists() and cached_copy(f"{url}/index.bin") == second
    assert [command for command, _, _ in log].count("GET") == 2
    assert cached_copy(str(tmp_path / "index.bin")) == str(tmp_path / "index.bin")  # a local file is itself


def test_what_is_not_an_embeddings_catalog_is_a_one_line_read_error(runs, source, tmp_path):
    with pytest.raises(ReadError, match="no embedding items") as caught:
        open_embeddings(source)
    assert "\n" not in str(caught.value)
    with pytest.raises(ReadError, match="cannot read STAC"):
        open_embeddings(tmp_path / "nothing.json")
    with pytest.raises(ReadError, match="no GeoTIFF embeddings.*--format geotiff"):
        open_embeddings(runs["float16"])["item-0"].grid()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ReadError, match="broken.parquet"):
        read_geoparquet(broken)
