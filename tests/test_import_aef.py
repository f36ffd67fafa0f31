"""`stacembed import aef`: AlphaEarth Foundations annual embedding COGs as an embeddings catalog.

The files here are made as the dataset's are documented (Google's AEF-on-GCS readme: 64 int8
bands A00..A63, nodata -128, 10 m UTM pixels; Source Cooperative's note: Google's originals are
stored bottom-up): random unit vectors, quantized with the inverse of the documented mapping.
Expected values are that mapping, ``sign(q) * (q / 127.5)**2``, computed here with numpy on the
file's own int8 values read with rasterio, not with stacembed's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from stac_validation import validate_tree

from stacembed import open_embeddings
from stacembed.analysis.similar import Query, similar
from stacembed.cli import main
from stacembed.errors import ReadError
from stacembed.importers import aef

WIDTH, HEIGHT, PIXEL = 300, 200, 10.0
WEST, NORTH = 290000.0, 9118000.0  # UTM 25S, Olinda (Brazil)
CRS = "EPSG:32725"
MASKED = (slice(5, 9), slice(10, 40))  # rows, cols of masked pixels


def quantized(seed: int = 0) -> np.ndarray:
    """(64, H, W) int8: unit vectors under the inverse of AEF's mapping; -128 where masked."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, HEIGHT, WIDTH))
    x /= np.linalg.norm(x, axis=0)
    q = np.clip(np.rint(np.sign(x) * np.sqrt(np.abs(x)) * 127.5), -127, 127).astype("int8")
    q[(slice(None), *MASKED)] = -128
    return q


def write_aef(path: Path, q: np.ndarray, *, bottom_up: bool = False) -> Path:
    """``q`` (north-up rows) as an AEF file; ``bottom_up``: stored as Google's are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    transform, rows = Affine(PIXEL, 0, WEST, 0, -PIXEL, NORTH), q
    if bottom_up:
        transform, rows = Affine(PIXEL, 0, WEST, 0, PIXEL, NORTH - PIXEL * HEIGHT), q[:, ::-1, :]
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=64, dtype="int8", nodata=-128,
                       crs=CRS, transform=transform, tiled=True, blockxsize=128, blockysize=128,
                       compress="deflate") as ds:
        ds.write(rows)
        for band in range(64):
            ds.set_band_description(band + 1, f"A{band:02d}")
    return path


def dequantized(q: np.ndarray) -> np.ndarray:
    values = (np.sign(q) * (q.astype("float64") / 127.5) ** 2).astype("float32")
    values[q == -128] = np.nan
    return values


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aef") / "v1" / "annual" / "2024" / "25S"
    q = quantized()
    north_up = write_aef(root / "xnorth-0000000000-0000000000.tiff", q)
    bottom_up = write_aef(root / "xflip-0000000000-0000000000.tiff", q, bottom_up=True)
    return {"q": q, "north_up": north_up, "bottom_up": bottom_up}


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def lonlat_box(col0: int, row0: int, col1: int, row1: int) -> list[float]:
    """The lon/lat bounds of pixel columns col0..col1, rows row0..row1, shrunk by a tenth of a pixel."""
    inset = PIXEL / 10
    return list(transform_bounds(CRS, "OGC:CRS84", WEST + col0 * PIXEL + inset, NORTH - row1 * PIXEL + inset,
                                 WEST + col1 * PIXEL - inset, NORTH - row0 * PIXEL - inset))


def test_a_whole_file_is_referenced_in_place_and_read_as_the_dataset_says(files, tmp_path):
    code, output = invoke("import", "aef", files["north_up"], "--out", tmp_path / "out")
    assert code == 0, output
    assert "1 AlphaEarth item(s) described" in output
    (item,) = open_embeddings(tmp_path / "out")
    assert item.id == "xnorth-0000000000-0000000000-2024"  # the year from the path: <year>/<zone>/<file>
    assert (item.kind, item.dimensions, item.data_type) == ("pixel", 64, "int8")
    assert item.hrefs["geotiff"] == str(files["north_up"])
    assert item.stac_item.properties["start_datetime"] == "2024-01-01T00:00:00Z"
    assert item.stac_item.properties["end_datetime"] == "2024-12-31T23:59:59Z"
    assert item.stac_item.properties["license"] == "CC-BY-4.0"
    assert "thumbnail" not in item.stac_item.assets  # a file in place: `stacembed quicklook` draws them
    values, transform, crs = item.array()
    np.testing.assert_array_equal(values, dequantized(files["q"]))
    assert transform == Affine(PIXEL, 0, WEST, 0, -PIXEL, NORTH) and crs.to_epsg() == 32725
    # unit vectors, as the dataset's are, up to the int8 rounding
    norms = np.linalg.norm(np.nan_to_num(values), axis=0)[np.isfinite(values[0])]
    assert np.all(np.abs(norms - 1) < 0.02)
    assert not any(validate_tree(tmp_path / "out").values())
    collection = json.loads(next((tmp_path / "out").glob("*/collection.json")).read_text())
    assert {link["rel"] for link in collection["links"]} >= {"emb:model", "emb:source-data"}
    assert "Google DeepMind" in collection["description"]


def expected_window(box: list[float]) -> tuple[int, int, int, int]:
    """(col0, row0, col1, row1) of the pixels within the lon/lat box's bounds in the file's CRS
    (its edges densified, with pyproj alone), clipped to the file."""
    west, south, east, north = box
    t = np.linspace(0, 1, 201)
    lons = np.concatenate([west + (east - west) * t, np.full_like(t, east), east - (east - west) * t,
                           np.full_like(t, west)])
    lats = np.concatenate([np.full_like(t, south), south + (north - south) * t, np.full_like(t, north),
                           north - (north - south) * t])
    x, y = Transformer.from_crs("OGC:CRS84", CRS, always_xy=True).transform(lons, lats)
    cols, rows = (np.array([x.min(), x.max()]) - WEST) / PIXEL, (NORTH - np.array([y.max(), y.min()])) / PIXEL
    return (max(0, int(np.floor(cols[0]))), max(0, int(np.floor(rows[0]))), min(WIDTH, int(np.ceil(cols[1]))),
            min(HEIGHT, int(np.ceil(rows[1]))))


def test_a_box_is_copied_north_up_whether_the_file_is_stored_bottom_up_or_not(files, tmp_path, monkeypatch):
    monkeypatch.setattr(aef, "STRIP_BYTES", 64 * 40 * 7)  # a few rows per strip: strips meet inside the box
    box = lonlat_box(50, 20, 90, 63)
    col0, row0, col1, row1 = expected_window(box)
    assert (col0, row0) < (50, 20) and (col1, row1) > (90, 63)  # a lon/lat box is no UTM rectangle
    box = ",".join(map(str, box))
    arrays = []
    for name in ("north_up", "bottom_up"):
        out = tmp_path / name
        code, output = invoke("import", "aef", files[name], "--bbox", box, "--out", out)
        assert code == 0, output
        (item,) = open_embeddings(out)
        (path,) = [p for p in out.glob("*/*/*.tif") if not p.name.endswith(".overview.tif")]
        assert item.hrefs["geotiff"] == str(path)
        with rasterio.open(path) as ds:
            assert (ds.width, ds.height, ds.count, ds.dtypes[0], ds.nodata) == (
                col1 - col0, row1 - row0, 64, "int8", -128)
            assert ds.transform == Affine(PIXEL, 0, WEST + col0 * PIXEL, 0, -PIXEL, NORTH - row0 * PIXEL)
            assert ds.descriptions[0] == "A00" and ds.descriptions[-1] == "A63"
            np.testing.assert_array_equal(ds.read(), files["q"][:, row0:row1, col0:col1])  # values untouched
        values, _, _ = item.array()
        arrays.append(values)
        assert {"thumbnail", "overview"} <= set(item.stac_item.assets)  # a copied box gets its quicklooks
        assert not any(validate_tree(out).values())
    np.testing.assert_array_equal(arrays[0], dequantized(files["q"][:, row0:row1, col0:col1]))
    np.testing.assert_array_equal(arrays[0], arrays[1])


def test_similarity_search_and_clusters_run_on_the_imported_pixels(files, tmp_path):
    out = tmp_path / "out"
    assert invoke("import", "aef", files["north_up"], "--out", out)[0] == 0
    row, col = 120, 77
    lon, lat = transform_bounds(CRS, "OGC:CRS84", WEST + (col + 0.5) * PIXEL, NORTH - (row + 0.5) * PIXEL,
                                WEST + (col + 0.5) * PIXEL, NORTH - (row + 0.5) * PIXEL)[:2]
    table = similar(out, Query.parse(f"{lon},{lat}", "point"), k=3)
    hits = table.to_pylist()
    assert (hits[0]["chip_row"], hits[0]["chip_col"]) == (row, col)
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    v = dequantized(files["q"])
    query = v[:, row, col] / np.linalg.norm(v[:, row, col])
    flat = v.reshape(64, -1)
    scores = np.nan_to_num(query @ (flat / np.linalg.norm(flat, axis=0)), nan=-2)
    second = np.argsort(-scores, kind="stable")[1]
    assert (hits[1]["chip_row"], hits[1]["chip_col"]) == divmod(int(second), WIDTH)
    code, output = invoke("cluster", out, "--k", 3, "--out", out)
    assert code == 0, output
    masked = (MASKED[0].stop - MASKED[0].start) * (MASKED[1].stop - MASKED[1].start)
    assert f"{WIDTH * HEIGHT - masked} chips of 1 item(s) in 3 clusters" in output
    (labels,) = out.glob("clusters-k3/*/*.parquet")
    assert pq.read_metadata(labels).num_rows == WIDTH * HEIGHT - masked


@pytest.mark.parametrize(("make", "args", "message"), [
    ("bottom_up", [], "is stored bottom-up (positive y resolution): reference its north-up .vrt"),
    ("rgb", [], "is not an AlphaEarth embeddings file: 3 band(s) of uint8"),
    ("no_year", [], "no year in"),
    ("north_up", ["--bbox", "10,10,11,11"], "none of the 1 file(s) has a pixel in the box"),
    ("missing", [], "cannot open AlphaEarth file"),
    ("twice", [], "would both be item 'xnorth-0000000000-0000000000-2024': give each file once"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, make, args, message):
    if make == "rgb":
        source = tmp_path / "2024" / "rgb.tif"
        source.parent.mkdir()
        with rasterio.open(source, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8", crs=CRS,
                           transform=Affine(PIXEL, 0, WEST, 0, -PIXEL, NORTH)) as ds:
            ds.write(np.zeros((3, 8, 8), "uint8"))
    elif make == "no_year":
        source = write_aef(tmp_path / "tiles" / "x.tiff", files["q"])
    elif make == "missing":
        source = tmp_path / "2024" / "missing.tiff"
    elif make == "twice":
        source, args = files["north_up"], [files["north_up"]]
    else:
        source = files[make]
    code, output = invoke("import", "aef", source, "--out", tmp_path / "out", *args)
    assert code != 0
    (line,) = output.strip().splitlines()
    assert message in line
    assert not (tmp_path / "out" / "alphaearth-annual").exists()


def test_a_second_import_into_the_same_collection_is_refused(files, tmp_path):
    out = tmp_path / "out"
    assert invoke("import", "aef", files["north_up"], "--out", out)[0] == 0
    before = sorted(p.read_bytes() for p in out.rglob("*") if p.is_file())
    code, output = invoke("import", "aef", files["north_up"], "--out", out)
    assert code != 0 and "exists already" in output
    assert sorted(p.read_bytes() for p in out.rglob("*") if p.is_file()) == before
    assert invoke("import", "aef", files["north_up"], "--out", out, "--output-collection", "aef-2")[0] == 0
    assert len(open_embeddings(out)) == 2


def test_an_item_naming_a_quantization_stacembed_does_not_read_is_refused(files, tmp_path):
    out = tmp_path / "out"
    assert invoke("import", "aef", files["north_up"], "--out", out, "--year", 2023)[0] == 0
    (item_file,) = out.glob("*/*/*.json")
    item = json.loads(item_file.read_text())
    assert item["id"].endswith("-2023")
    item["properties"]["emb:quantization"]["method"] = "binary"
    item_file.write_text(json.dumps(item))
    with pytest.raises(ReadError, match="emb:quantization method 'binary' is not one stacembed reads"):
        open_embeddings(out)


def test_windows_of_the_in_place_file_read_only_those_pixels(files, tmp_path):
    out = tmp_path / "out"
    assert invoke("import", "aef", files["north_up"], "--out", out)[0] == 0
    (item,) = open_embeddings(out)
    values, transform, _ = item.array(window=Window(100, 50, 7, 5))
    np.testing.assert_array_equal(values, dequantized(files["q"][:, 50:55, 100:107]))
    assert transform == Affine(PIXEL, 0, WEST + 100 * PIXEL, 0, -PIXEL, NORTH - 50 * PIXEL)
    np.testing.assert_array_equal(item.chip(3, 4), dequantized(files["q"][:, 3, 4]))
    assert item.chip(*(s.start for s in MASKED)) is None  # a masked pixel is no chip


def test_the_index_picks_the_files_under_the_box_and_in_the_year(files, tmp_path):
    """An index as the dataset's aef_index.parquet (GeoParquet: lon/lat footprint, year, path)."""
    footprint = shapely.box(*transform_bounds(CRS, "OGC:CRS84", WEST, NORTH - HEIGHT * PIXEL, WEST + WIDTH * PIXEL,
                                              NORTH))
    far = shapely.box(10, 10, 11, 11)
    index = geopandas.GeoDataFrame(
        {"year": [2024, 2023, 2024], "path": [str(files["bottom_up"]), str(files["north_up"]), "/nowhere.tiff"],
         "utm_zone": ["25S", "25S", "31N"]},
        geometry=[footprint, footprint, far], crs="OGC:CRS84")
    index.to_parquet(tmp_path / "aef_index.parquet")
    box = ",".join(map(str, lonlat_box(10, 10, 20, 20)))
    code, output = invoke("import", "aef", "--index", tmp_path / "aef_index.parquet", "--bbox", box, "--year", 2024,
                          "--out", tmp_path / "out")
    assert code == 0, output
    assert [item.id for item in open_embeddings(tmp_path / "out")] == ["xflip-0000000000-0000000000-2024"]
    code, output = invoke("import", "aef", "--index", tmp_path / "aef_index.parquet", "--bbox", "10.2,10.2,10.3,10.3",
                          "--year", 2023, "--out", tmp_path / "out2")
    assert code != 0 and "lists no file that meets the box" in output
    code, output = invoke("import", "aef", "--index", tmp_path / "aef_index.parquet", "--out", tmp_path / "out3")
    assert code != 0 and "--index needs --bbox" in output
    code, output = invoke("import", "aef", "--out", tmp_path / "out4")
    assert code != 0 and output.strip() == "stacembed: error: no AlphaEarth file given"


def test_quicklooks_change_maps_and_the_map_page_take_the_imported_years(files, tmp_path):
    """Two years of the same tile: quicklooks drawn, the change map is 1 - cos of the two years'
    vectors (numpy), and the map page lists both items with their quicklooks."""
    import threading
    import urllib.request

    from stacembed.web import make_server

    later = quantized(seed=1)
    after = write_aef(tmp_path / "2025" / "25S" / files["north_up"].name, later)
    out = tmp_path / "out"
    assert invoke("import", "aef", files["north_up"], after, "--out", out)[0] == 0
    code, output = invoke("quicklook", out)
    assert code == 0 and "quicklooks of 2 item(s) drawn" in output, output
    code, output = invoke("change", out, "--before", "2024", "--after", "2025", "--out", out)
    assert code == 0, output
    (change_map,) = out.glob("change/*/*.tif")
    with rasterio.open(change_map) as ds:
        distance = ds.read(1)
        assert ds.transform == Affine(PIXEL, 0, WEST, 0, -PIXEL, NORTH)
    a, b = dequantized(files["q"]), dequantized(later)
    expected = 1 - (a * b).sum(axis=0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    np.testing.assert_allclose(distance, expected, atol=1e-5)
    assert np.isnan(distance[MASKED]).all()
    server = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(server.url + "api/items", timeout=30) as response:
            features = json.loads(response.read())["features"]
        assert sorted(f["properties"]["id"] for f in features) == [
            "xnorth-0000000000-0000000000-2024", "xnorth-0000000000-0000000000-2025"]
        with urllib.request.urlopen(server.url + features[0]["properties"]["quicklook"]["image"].lstrip("/"),
                                    timeout=30) as response:
            assert response.headers["Content-Type"] == "image/png" and response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_files_and_index_over_http_are_read_by_ranges(files, tmp_path, monkeypatch):
    """An in-place item names the file's URL, and GDAL reads a window of it by byte ranges; the
    index is fetched over http(s) as well."""
    from range_http import loopback_environment, serve

    loopback_environment(monkeypatch)
    root = files["north_up"].parents[3]  # .../v1/annual/2024/25S/file -> served from v1/
    footprint = shapely.box(*transform_bounds(CRS, "OGC:CRS84", WEST, NORTH - HEIGHT * PIXEL, WEST + WIDTH * PIXEL,
                                              NORTH))
    with serve(root) as (url, log):
        geopandas.GeoDataFrame({"year": [2024], "path": [f"{url}/annual/2024/25S/{files['bottom_up'].name}"]},
                               geometry=[footprint], crs="OGC:CRS84").to_parquet(root / "aef_index.parquet")
        remote = f"{url}/annual/2024/25S/{files['north_up'].name}"
        assert invoke("import", "aef", remote, "--out", tmp_path / "in-place")[0] == 0
        (item,) = open_embeddings(tmp_path / "in-place")
        assert item.hrefs["geotiff"] == remote
        log.clear()
        values, _, _ = item.array(window=Window(100, 50, 7, 5))
        np.testing.assert_array_equal(values, dequantized(files["q"][:, 50:55, 100:107]))
        assert log and all(rng for method, path, rng in log if method == "GET"), log  # ranges, never the file
        box = ",".join(map(str, lonlat_box(10, 10, 20, 20)))
        code, output = invoke("import", "aef", "--index", f"{url}/aef_index.parquet", "--bbox", box,
                              "--out", tmp_path / "box")
        assert code == 0, output
    (item,) = open_embeddings(tmp_path / "box")
    col0, row0, col1, row1 = expected_window(lonlat_box(10, 10, 20, 20))
    np.testing.assert_array_equal(item.array()[0], dequantized(files["q"][:, row0:row1, col0:col1]))


def test_the_year_comes_from_the_directories_not_the_file_name(files, tmp_path):
    source = write_aef(tmp_path / "v1" / "annual" / "2023" / "25S" / "xtile-2048.tiff", files["q"])
    assert invoke("import", "aef", source, "--out", tmp_path / "out")[0] == 0
    (item,) = open_embeddings(tmp_path / "out")
    assert item.id == "xtile-2048-2023" and item.stac_item.properties["start_datetime"].startswith("2023-")
