"""Similarity search (``stacembed.analysis.similar``, ``.index``; ``stacembed similar`` / ``index``).

Runs of the bundled sample catalog with random weights (4 items, 36 chips); expected values come
from numpy over the vectors pyarrow reads from the files, never from the search itself.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import make_catalog, make_item
from range_http import loopback_environment, serve

from stacembed import RunConfig, run
from stacembed.analysis.index import build_index, check_index, open_index
from stacembed.analysis.similar import Query, search_metadata, similar, write_results
from stacembed.embeddings import open_embeddings
from stacembed.errors import ConfigError
from stacembed.validate import validate_paths

SAMPLE_CHIPS = 36


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("similar-runs")
    for dtype in ("float32", "float16", "int8"):
        run(RunConfig(out=base / dtype, weights="random", dtype=dtype, formats=("geoparquet",), progress=False))
    return {dtype: base / dtype for dtype in ("float32", "float16", "int8")}


@pytest.fixture
def indexed(runs, tmp_path):
    """A copy of the float32 run with its index built."""
    out = tmp_path / "indexed"
    shutil.copytree(runs["float32"], out)
    build_index(out)
    return out


def chips(out):
    """``{(item, chip_row, chip_col): vector}`` and the chip footprints, read with pyarrow."""
    vectors, shapes = {}, {}
    for path in sorted(out.glob("*/*/*.parquet")):
        table = pq.read_table(path)
        for row, vector, wkb in zip(table.select(["source_item", "chip_row", "chip_col"]).to_pylist(),
                                    table.column("embedding").to_pylist(), table.column("geometry").to_pylist(),
                                    strict=True):
            key = (row["source_item"], row["chip_row"], row["chip_col"])
            vectors[key], shapes[key] = np.asarray(vector, "float64"), shapely.from_wkb(wkb)
    return vectors, shapes


def keys(table):
    rows = table.select(["item", "chip_row", "chip_col"]).to_pylist()
    return [(r["item"], r["chip_row"], r["chip_col"]) for r in rows]


def numpy_ranking(vectors, query):
    names = list(vectors)
    matrix = np.array([vectors[n] for n in names])
    scores = matrix @ query / np.linalg.norm(matrix, axis=1) / np.linalg.norm(query)
    return [names[i] for i in np.argsort(-scores, kind="stable")], np.sort(scores)[::-1]


def test_the_query_chip_ranks_first_with_similarity_one(runs):
    vectors, shapes = chips(runs["float32"])
    assert len(vectors) == SAMPLE_CHIPS
    for key in list(vectors)[::7]:
        table = similar(runs["float32"], Query.from_chip(*key), k=5)
        assert keys(table)[0] == key
        assert abs(table.column("similarity")[0].as_py() - 1) < 1e-6
        assert table.column("rank").to_pylist() == [1, 2, 3, 4, 5]
        expected, scores = numpy_ranking(vectors, vectors[key])
        np.testing.assert_allclose(table.column("similarity").to_numpy(), scores[:5], atol=1e-6)
        centre = shapes[key].centroid  # the chip under a point: the chip whose footprint holds it
        by_point = similar(runs["float32"], Query.from_point(centre.x, centre.y), k=1)
        assert keys(by_point) == [key] and search_metadata(by_point)["positive"] == ["{}:{}:{}".format(*key)]


def test_edge_chips_past_the_item_bbox_are_found_by_point_and_bbox(runs):
    vectors, shapes = chips(runs["float32"])
    item_file = next(runs["float32"].glob("*/L7-olinda-r0c0/L7-olinda-r0c0.json"))
    south = json.loads(item_file.read_text())["bbox"][1]
    key = min((k for k in shapes if k[0] == "L7-olinda-r0c0"), key=lambda k: shapes[k].bounds[1])
    assert shapes[key].bounds[1] < south  # an edge chip extends past the raster
    lon, lat = shapes[key].centroid.x, (shapes[key].bounds[1] + south) / 2
    assert keys(similar(item_file, Query.from_point(lon, lat), k=1)) == [key]
    found = similar(item_file, Query.from_chip(*key), k=1, bbox=(lon - 1e-4, lat - 1e-4, lon + 1e-4, lat))
    assert keys(found) == [key]


def test_a_geometry_is_the_mean_of_its_chips_and_negatives_are_subtracted(runs):
    vectors, shapes = chips(runs["float32"])
    first, second, third = list(vectors)[0], list(vectors)[4], list(vectors)[20]
    area = shapely.union_all([shapes[first].buffer(-1e-4), shapes[second].buffer(-1e-4)])
    query = Query.from_geometry(shapely.geometry.mapping(area)) - Query.from_chip(*third)
    table = similar(runs["float32"], query, k=SAMPLE_CHIPS)
    unit = {key: v / np.linalg.norm(v) for key, v in vectors.items()}
    expected, scores = numpy_ranking(vectors, (unit[first] + unit[second]) / 2 - unit[third])
    assert keys(table) == expected
    np.testing.assert_allclose(table.column("similarity").to_numpy(), scores, atol=1e-5)
    info = search_metadata(table)
    assert sorted(info["positive"]) == sorted("{}:{}:{}".format(*k) for k in (first, second))
    assert info["negative"] == ["{}:{}:{}".format(*third)]


def test_filters_restrict_the_chips_searched(runs):
    vectors, shapes = chips(runs["float32"])
    key = next(iter(vectors))
    west, south, east, north = shapes[key].bounds
    table = similar(runs["float32"], Query.from_chip(*key), k=3, bbox=(west, south, east, north))
    assert all(shapes[k].intersects(shapely.box(west, south, east, north)) for k in keys(table))
    assert search_metadata(table)["chips_searched"] < SAMPLE_CHIPS
    # The sample's items have a null datetime and start in 1999: chips carry the start.
    assert similar(runs["float32"], Query.from_chip(*key), k=3, datetime="1999-04").num_rows == 3
    with pytest.raises(ConfigError, match="no chip matching"):
        similar(runs["float32"], Query.from_chip(*key), k=3, datetime="2010/..")


def test_two_items_cut_from_the_same_pixels_find_each_others_chips(tmp_path):
    root = tmp_path / "source"
    item_a = make_item(root, "item-a", dialect="1.1", origin=(500000.0, 9100000.0), shape=(128, 192), seed=3)
    item_b = json.loads(json.dumps(item_a))
    item_b["id"] = "item-b"
    for asset in item_b["assets"].values():
        asset["href"] = "../item-a/" + asset["href"].removeprefix("./")
    (root / "item-b").mkdir()
    catalog = make_catalog(root, [item_a, item_b])
    out = tmp_path / "out"
    run(RunConfig(out=out, catalog=str(catalog), weights="random", formats=("geoparquet",), progress=False))
    vectors, _ = chips(out)
    assert len(vectors) == 12  # 2 x 3 chips of 64 px
    for (item, row, col) in [k for k in vectors if k[0] == "item-a"]:
        table = similar(out, Query.from_chip(item, row, col), k=2)
        assert set(keys(table)) == {("item-a", row, col), ("item-b", row, col)}
        np.testing.assert_allclose(table.column("similarity").to_numpy(), [1, 1], atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_int8_and_float16_catalogs_rank_like_float32(runs, dtype):
    vectors, _ = chips(runs["float32"])
    overlaps = []
    for key in list(vectors)[::5]:
        exact = keys(similar(runs["float32"], Query.from_chip(*key), k=10))
        stored = keys(similar(runs[dtype], Query.from_chip(*key), k=10))
        assert stored[0] == key
        overlaps.append(len(set(exact) & set(stored)))
    assert min(overlaps) >= 9, overlaps


def test_tiny_batches_give_what_one_big_batch_gives(runs):
    vectors, _ = chips(runs["float32"])
    query = Query.from_chip(*list(vectors)[10]) + Query.from_chip(*list(vectors)[30])
    big = similar(runs["float32"], query, k=12, batch_rows=100_000)
    for batch_rows in (1, 3, 7):
        small = similar(runs["float32"], query, k=12, batch_rows=batch_rows)
        assert small.equals(big)


def test_the_index_is_used_finds_what_exact_search_finds_and_is_registered(indexed):
    vectors, _ = chips(indexed)
    collection_file = next(indexed.glob("*/collection.json"))
    assets = json.loads(collection_file.read_text())["assets"]
    assert assets["index"]["roles"] == ["index"] and assets["index"]["href"].endswith(".faiss")
    assert (collection_file.parent / assets["index"]["href"]).is_file()
    assert (collection_file.parent / assets["index-chips"]["href"]).is_file()
    assert [r.path for r in validate_paths([indexed]) if r.line()] == []
    for key in list(vectors)[::6]:
        approximate = similar(indexed, Query.from_chip(*key), k=10)
        exact = similar(indexed, Query.from_chip(*key), k=10, exact=True)
        assert set(search_metadata(approximate)["search"].values()) == {"index"}
        assert set(search_metadata(exact)["search"].values()) == {"exact"}
        assert len(set(keys(approximate)) & set(keys(exact))) >= 9
        assert keys(approximate)[0] == key
    assert min(check_index(indexed, queries=SAMPLE_CHIPS).values()) >= 0.9
    # Filters apply to indexed search too, and to the item of a catalog opened at one item.
    key = next(iter(vectors))
    item_file = next(indexed.glob(f"*/{key[0]}/{key[0]}.json"))
    one = similar(item_file, Query.from_chip(*key), k=9)
    assert set(search_metadata(one)["search"].values()) == {"index"}
    assert {k[0] for k in keys(one)} == {key[0]} and search_metadata(one)["chips_searched"] == 9


def test_a_stale_index_is_refused_and_rebuilt(indexed, caplog):
    vectors, _ = chips(indexed)
    key = next(iter(vectors))
    item_file = next(indexed.glob(f"*/{key[0]}/{key[0]}.json"))
    old_index = next(indexed.glob("*/index-*.faiss"))
    assert build_index(indexed)[0].built is False  # up to date: kept
    item = json.loads(item_file.read_text())  # the item embedded again, with other values
    item["assets"]["embeddings"]["file:checksum"] = "1220" + "0" * 64
    item_file.write_text(json.dumps(item))
    with caplog.at_level(logging.WARNING, logger="stacembed"):
        table = similar(indexed, Query.from_chip(*key), k=5)
    assert set(search_metadata(table)["search"].values()) == {"exact"}
    assert "stale" in caplog.text and "stacembed index" in caplog.text
    assert open_index(list(open_embeddings(indexed))) is None
    report = build_index(indexed)[0]
    assert report.built and report.chips == SAMPLE_CHIPS and report.index != old_index
    assert not old_index.exists() and not old_index.with_suffix(".parquet").exists()
    assert set(search_metadata(similar(indexed, Query.from_chip(*key), k=5))["search"].values()) == {"index"}
    assert build_index(item_file, force=True)[0].chips == SAMPLE_CHIPS  # the whole collection, from one item


def test_a_served_catalog_searches_like_the_one_on_disk(indexed, monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    vectors, _ = chips(indexed)
    query = Query.from_chip(*list(vectors)[3])
    local = similar(indexed, query, k=8)
    with serve(indexed) as (url, _):
        remote = similar(f"{url}/catalog.json", query, k=8)
        remote_exact = similar(f"{url}/catalog.json", query, k=8, exact=True)
    assert set(search_metadata(remote)["search"].values()) == {"index"}
    assert keys(remote) == keys(local) == keys(remote_exact)


def test_a_served_index_is_downloaded_once_for_many_searches(indexed, monkeypatch):
    loopback_environment(monkeypatch)
    vectors, _ = chips(indexed)
    with serve(indexed) as (url, log):
        for key in (list(vectors)[3], list(vectors)[20], list(vectors)[3]):
            table = similar(f"{url}/catalog.json", Query.from_chip(*key), k=3)
            assert set(search_metadata(table)["search"].values()) == {"index"} and keys(table)[0] == key
    downloads = [path for command, path, _ in log if command == "GET" and "/index-" in path]
    assert sorted(path.rsplit(".", 1)[-1] for path in downloads) == ["faiss", "parquet"]


@pytest.mark.parametrize("suffix", [".parquet", ".geojson", ".csv"])
def test_every_output_format_opens_with_common_readers(runs, cli, tmp_path, suffix):
    vectors, shapes = chips(runs["float32"])
    key = list(vectors)[5]
    path = tmp_path / f"results{suffix}"
    result = cli("similar", runs["float32"], "--chip", "{}:{}:{}".format(*key), "--k", "4", "-o", path)
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".*.tmp"))
    expected = keys(similar(runs["float32"], Query.from_chip(*key), k=4))
    if suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        got = [(r["item"], int(r["chip_row"]), int(r["chip_col"])) for r in rows]
        assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4] and float(rows[0]["similarity"]) > 0.999999
        geometries = [shapely.from_wkt(r["geometry"]) for r in rows]
    else:
        frame = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
        assert frame.crs.to_authority() in (("OGC", "CRS84"), ("EPSG", "4326"))
        assert list(frame["rank"]) == [1, 2, 3, 4]
        assert {"similarity", "item", "source_item", "chip_row", "chip_col", "datetime", "collection"} <= set(frame)
        got = [(r.item, int(r.chip_row), int(r.chip_col)) for r in frame.itertuples()]
        geometries = list(frame.geometry)
    assert got == expected
    for k, geometry in zip(got, geometries, strict=True):
        assert geometry.equals_exact(shapes[k], 1e-9)


def test_a_table_on_the_terminal_and_the_index_command(runs, cli, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(runs["float32"], out)
    vectors, shapes = chips(out)
    key = list(vectors)[2]
    centre = shapes[key].centroid
    result = cli("index", out, "--check", "--queries", "10")
    assert result.exit_code == 0, result.output
    assert "indexed 36 chips" in result.output and "recall@10 1.000" in result.output
    assert "index up to date" in cli("index", out).output
    result = cli("similar", out, "--point", f"{centre.x},{centre.y}", "--k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "similarity", "item"] and len(lines) == 4
    assert lines[1].split()[:4] == ["1", "1.0000", key[0], f"{key[1]}:{key[2]}"]
    assert ": index)" in result.stderr


def one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.output
    assert pattern in lines[0], lines[0]


def two_models(runs, tmp_path):
    """The float32 run plus a copy of its collection labelled as made by another model."""
    out = tmp_path / "mixed"
    shutil.copytree(runs["float32"], out)
    original = next(out.glob("*/collection.json")).parent
    other = out / "other-model"
    shutil.copytree(original, other)
    collection = json.loads((other / "collection.json").read_text())
    collection["id"] = "other-model"
    (other / "collection.json").write_text(json.dumps(collection))
    for item_file in other.glob("*/*.json"):
        if item_file.parent.name == "model":
            continue
        item = json.loads(item_file.read_text())
        item["collection"] = "other-model"
        item["properties"]["emb:runtime_parameters"]["mlm:name"] = "another-model"
        item_file.write_text(json.dumps(item))
    catalog = json.loads((out / "catalog.json").read_text())
    catalog["links"].append({"rel": "child", "href": "./other-model/collection.json", "type": "application/json"})
    (out / "catalog.json").write_text(json.dumps(catalog))
    return out, original.name


def test_bad_input_is_one_line(runs, cli, tmp_path):
    from conftest import SAMPLE

    vectors, shapes = chips(runs["float32"])
    key = "{}:{}:{}".format(*next(iter(vectors)))
    out = runs["float32"]
    one_line_error(cli("similar", SAMPLE, "--chip", key), "holds no embedding items")
    one_line_error(cli("similar", out, "--point", "10,10"), "outside every chip")
    one_line_error(cli("similar", out, "--chip", key, "--k", "37"), "--k 37 is more than the 36 chips")
    one_line_error(cli("similar", out, "--chip", key, "--k", "0"), "--k must be a positive")
    one_line_error(cli("similar", out, "--chip", "nope:0:0"), "no embeddings item 'nope'")
    one_line_error(cli("similar", out, "--chip", key.rsplit(":", 2)[0] + ":9:9"), "has no chip at row 9")
    one_line_error(cli("similar", out, "--chip", key, "--negative", key), "zero vector")
    one_line_error(cli("similar", out), "at least one positive")
    one_line_error(cli("similar", out, "--chip", "what"), "--chip 'what' is not ITEM:ROW:COL")
    one_line_error(cli("similar", out, "--point", "1;2"), "--point '1;2' is not LON,LAT")
    one_line_error(cli("similar", out, "--negative", "what", "--chip", key), "is not LON,LAT, ITEM:ROW:COL")
    one_line_error(cli("index", "http://127.0.0.1:9/catalog.json"), "cannot read STAC")
    one_line_error(cli("similar", out, "--chip", key, "-o", tmp_path / "x.txt"), "unknown format '.txt'")
    one_line_error(cli("similar", out, "--chip", key, "--bbox", "1,2,3"), "--bbox must be four numbers")
    one_line_error(cli("similar", out, "--chip", key, "--collection", "nope"), "no embeddings collection 'nope'")
    one_line_error(cli("similar", out, "--geometry", '{"type": "Polygon"}'), "query geometry")
    mixed, original = two_models(runs, tmp_path)
    inside = json.dumps(shapely.geometry.mapping(next(iter(shapes.values())).buffer(-1e-4)))
    one_line_error(cli("similar", mixed, "--geometry", inside), "mixes chips of different embedding")
    one_line_error(cli("similar", mixed, "--chip", key), "another model or dimensions than the query's")
    assert cli("similar", mixed, "--chip", key, "--collection", original).exit_code == 0


def test_api_queries_parse_and_combine():
    assert Query.parse("-34.9, -7.95").positive[0].point == (-34.9, -7.95)
    assert Query.parse("a:b:1:2").positive[0].chip == ("a:b", 1, 2)
    combined = Query.combine(["1,2", Query.from_chip("x", 0, 1)], ["3,4"])
    assert [p.kind for p in combined.positive] == ["point", "chip"] and combined.negative[0].point == (3.0, 4.0)
    assert combined.describe() == "point 1,2 + chip x:0:1 - point 3,4"
    with pytest.raises(ConfigError, match="not a WGS84"):
        Query.from_point(200, 0)


def test_results_write_atomically_where_asked(runs, tmp_path):
    table = similar(runs["float32"], Query.from_chip(*next(iter(chips(runs["float32"])[0]))), k=2)
    target = tmp_path / "r.geojson"
    target.write_text("old")
    write_results(table, target)
    assert json.loads(target.read_text())["features"][0]["properties"]["rank"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.geojson"]


def test_a_rerun_keeps_the_index_of_the_collection(tmp_path):
    from stacembed import RunConfig, run
    from stacembed.analysis.index import build_index

    out = tmp_path / "out"
    config = RunConfig(out=out, weights="random", formats=("geoparquet",), progress=False)
    run(config)
    build_index(out)
    collection = next(out.glob("*/collection.json"))
    indexed = {k for k, a in json.loads(collection.read_text())["assets"].items() if "index" in a.get("roles", ())}
    assert indexed
    run(config)
    assets = json.loads(collection.read_text())["assets"]
    assert indexed <= set(assets) and all((collection.parent / assets[k]["href"]).is_file() for k in indexed)
