"""Inputs without georeferencing (issue 19): a Zarr store or NetCDF file whose variables have no CRS
and no transform is read on its pixel grid, as GDAL reads a raster without georeferencing (no
CRS, identity transform: x = column, y = row), with one warning; every output says it has no CRS
and keeps every metadata attribute, and the analyses that need a map refuse in one line.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from conftest import DEMO_CARD

zarr = pytest.importorskip("zarr", reason="the Zarr reader needs zarr (pip install 'stacembed[zarr]')")

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
HEIGHT, WIDTH, CHIP = 48, 64, 16


def band_pixels(seed: int = 11) -> dict[str, np.ndarray]:
    """Spatially varying float32 values about the demo card's means, none of them a fill value."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return {name: (70 + 30 * np.sin(xx / (4.0 + i) + i) + 25 * np.cos(yy / (6.0 + i)) + 20 * (yy // CHIP - xx // CHIP)
                   + rng.normal(0, 8, (HEIGHT, WIDTH))).astype("float32") for i, name in enumerate(BANDS)}


def item_file(path: Path, item_id: str, asset: dict) -> Path:
    """A STAC item without geometry (null) and bbox: nothing places its data."""
    path.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "plain",
        "geometry": None, "properties": {"datetime": "2025-03-01T10:00:00Z", "platform": "lab-camera",
                                         "instrument:serial": "SN-42"},
        "assets": {"data": {"roles": ["data"], **asset}}, "links": [],
    }))
    return path


def write_zarr(path: Path, pixels: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    """Plain y/x arrays, no coordinates, no georeferencing attributes (unless ``attrs``)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, values in pixels.items():
        array = root.create_array(name, shape=values.shape, dtype="float32", chunks=(16, 32),
                                  dimension_names=["y", "x"])
        array[:] = values
        array.attrs.update({"long_name": f"band {name}", **(attrs or {})})
    return path


def write_netcdf(path: Path, pixels: dict[str, np.ndarray]) -> Path:
    """Integer index coordinates 0..n-1 on y and x (ascending), no CRS."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    ds = xr.Dataset({name: (("y", "x"), values) for name, values in pixels.items()},
                    coords={"y": np.arange(HEIGHT), "x": np.arange(WIDTH)})
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def run(cli, items: Path, out: Path, *args):
    return cli("run", "--items", items, "--out", out, "--chip-size", CHIP, "--stride", CHIP, "--min-valid", "0",
               "--batch-size", "8", "--format", "geoparquet", "--format", "geotiff", "-q", *args)


@contextmanager
def warnings_logged():
    """The messages of the warnings stacembed logs in the block."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                found.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("stacembed")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def reference_embeddings(pixels: dict[str, np.ndarray], windows: list[tuple[int, int]]) -> np.ndarray:
    """The demo model's forward pass on the chips at (row_off, col_off), computed without stacembed."""
    import timm
    import torch
    from safetensors.torch import load_file

    card = json.loads(DEMO_CARD.read_text())
    props = card["properties"]
    stats = props["mlm:input"][0]["value_scaling"]
    stack = np.stack([(pixels[name].astype("float64") - s["mean"]) / s["stddev"] for name, s in zip(BANDS, stats,
                                                                                                    strict=True)])
    x = np.stack([stack[:, r:r + CHIP, c:c + CHIP] for r, c in windows]).astype("float32")
    model = timm.create_model(props["mlm:architecture"], pretrained=False, in_chans=len(BANDS), num_classes=0)
    model.load_state_dict(load_file(str(DEMO_CARD.parent / card["assets"]["weights"]["href"])))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def pixels():
    return band_pixels()


@pytest.fixture(scope="module")
def unplaced_run(tmp_path_factory, pixels):
    """One run over a plain Zarr store (module-wide: the checks below read its outputs)."""
    from click.testing import CliRunner

    from stacembed.cli import main

    root = tmp_path_factory.mktemp("unplaced")
    store = write_zarr(root / "plain.zarr", pixels)
    items = item_file(root / "plain.json", "plain", {"href": str(store), "type": "application/vnd+zarr"})
    out = root / "out"
    with warnings_logged() as warned:
        result = CliRunner().invoke(main, [str(a) for a in (
            "run", "--items", items, "--out", out, "--chip-size", CHIP, "--stride", CHIP, "--min-valid", "0",
            "--batch-size", "8", "--format", "geoparquet", "--format", "geotiff", "-q")], catch_exceptions=False)
    return result, out, warned


def test_the_run_succeeds_with_one_warning(unplaced_run):
    result, out, warned = unplaced_run
    assert result.exit_code == 0, result.output
    assert len(warned) == 1, warned
    assert "plain.zarr has no georeferencing" in warned[0] and "pixel coordinates without a CRS" in warned[0]


def test_embeddings_equal_a_direct_forward_pass(unplaced_run, pixels):
    _, out, _ = unplaced_run
    table = gpd.read_parquet(next(out.glob("*/plain/plain.parquet"))).sort_values(["chip_row", "chip_col"])
    assert len(table) == (HEIGHT // CHIP) * (WIDTH // CHIP)
    windows = list(zip(table.row_off, table.col_off, strict=True))
    expected = reference_embeddings(pixels, windows)
    np.testing.assert_allclose(np.stack(table.embedding), expected, rtol=1e-4, atol=1e-5)
    with rasterio.open(next(out.glob("*/plain/plain.tif"))) as cog:
        grid = cog.read()
    for row in table.itertuples():
        np.testing.assert_array_equal(grid[:, row.chip_row, row.chip_col], row.embedding)


def test_geoparquet_footprints_are_pixel_coordinates_without_a_crs(unplaced_run):
    _, out, _ = unplaced_run
    path = next(out.glob("*/plain/plain.parquet"))
    geo = json.loads(pq.ParquetFile(path).metadata.metadata[b"geo"])  # the footer's, with the bbox
    for column in ("geometry", "native_geometry"):
        assert "crs" in geo["columns"][column] and geo["columns"][column]["crs"] is None
    assert geo["columns"]["geometry"]["bbox"] == [0.0, 0.0, float(WIDTH), float(HEIGHT)]
    table = gpd.read_parquet(path)
    assert table.crs is None
    for row in table.itertuples():  # x = column, y = row (growing down), as GDAL's pixel/line coordinates
        assert row.geometry.bounds == (row.col_off, row.row_off, row.col_off + CHIP, row.row_off + CHIP)
        assert (row.native_xmin, row.native_ymin, row.native_xmax, row.native_ymax) == row.geometry.bounds
    for row in pq.read_table(path, columns=["bbox", "col_off", "row_off"]).to_pylist():  # the covering column
        assert row["bbox"] == {"xmin": row["col_off"], "ymin": row["row_off"], "xmax": row["col_off"] + CHIP,
                               "ymax": row["row_off"] + CHIP}
    # The source item's metadata travels as columns, as for any input.
    assert set(table.platform) == {"lab-camera"} and set(table["instrument:serial"]) == {"SN-42"}


def test_the_cog_has_no_crs_a_pixel_transform_and_the_tags(unplaced_run):
    _, out, _ = unplaced_run
    with rasterio.open(next(out.glob("*/plain/plain.tif"))) as cog:
        assert cog.crs is None
        # One pixel per chip: CHIP source pixels (pixel/line units) a side, from the source's (0, 0).
        assert cog.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)
        assert (cog.width, cog.height) == (WIDTH // CHIP, HEIGHT // CHIP)
        tags = cog.tags()
    assert tags["STAC_ITEM_ID"] == "plain" and tags["CHIP_SIZE"] == str(CHIP)
    assert json.loads(tags["STAC_PROPERTIES"])["instrument:serial"] == "SN-42"


def test_stac_says_there_is_no_place_and_validates(unplaced_run, cli):
    _, out, _ = unplaced_run
    item = json.loads(next(out.glob("*/plain/plain.json")).read_text())
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:code"] is None and "gsd" not in item["properties"]
    asset = item["assets"]["embeddings-geotiff"]
    assert asset["proj:code"] is None and asset["proj:shape"] == [HEIGHT // CHIP, WIDTH // CHIP]
    assert asset["proj:transform"] == [CHIP, 0, 0, 0, CHIP, 0]
    assert "no georeferencing" in item["properties"]["processing:lineage"]
    collection = json.loads(next(out.glob("*/collection.json")).read_text())
    assert collection["extent"]["spatial"]["bbox"] == [[-180, -90, 180, 90]]
    result = cli("validate", out)
    assert result.exit_code == 0, result.output
    import pystac

    read = pystac.Item.from_file(str(next(out.glob("*/plain/plain.json"))))
    assert read.geometry is None and read.bbox is None
    # The items mirror (stac-geoparquet) holds the item, without geometry.
    mirror = gpd.read_parquet(next(out.glob("*/items.parquet")))
    assert list(mirror.id) == ["plain"] and mirror.geometry.isna().all()


def test_similar_cluster_quicklook_and_neuco_work(unplaced_run, cli, tmp_path):
    _, out, _ = unplaced_run
    with rasterio.open(next(out.glob("*/plain/plain.overview.tif"))) as overview:  # the quicklook
        assert overview.crs is None and overview.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)
    assert next(out.glob("*/plain/plain.thumbnail.png")).stat().st_size > 0
    result = cli("similar", out, "--chip", "plain:1:2", "--k", "3", "-o", tmp_path / "similar.parquet")
    assert result.exit_code == 0, result.output
    found = pq.read_table(tmp_path / "similar.parquet")
    assert found.column("id")[0].as_py() == "plain_r1_c2" and found.num_rows == 3
    assert found.column("geometry").null_count == 3  # the results are in lon/lat: these chips have none
    assert json.loads(found.schema.metadata[b"geo"])["columns"]["geometry"].get("bbox") is None
    # A lon/lat query meets none of its chips.
    result = cli("similar", out, "--point", "10,50")
    assert result.exit_code == 1 and "outside every chip" in result.output
    result = cli("cluster", out, "--k", "2", "--out", tmp_path / "clusters", "-q")
    assert result.exit_code == 0, result.output
    with rasterio.open(next((tmp_path / "clusters").glob("*/plain/*.tif"))) as classes:
        assert classes.crs is None and classes.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)
    assert cli("validate", tmp_path / "clusters").exit_code == 0
    result = cli("export", "neuco", out, "-o", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.csv").read_text().splitlines()[1].startswith("plain,")


def test_map_commands_refuse_in_one_line(unplaced_run, cli, tmp_path):
    from stacembed.errors import ConfigError
    from stacembed.web.server import Explorer

    _, out, _ = unplaced_run
    result = cli("export", "joint", out, "-o", tmp_path / "all.parquet")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "no georeferencing" in result.output
    assert not (tmp_path / "all.parquet").exists()
    with pytest.raises(ConfigError, match="explore draws embeddings on a map, and no item"):
        Explorer(out)
    result = cli("change", out, "--before", "plain", "--after", "plain", "--out", tmp_path / "change")
    assert result.exit_code == 1 and "no georeferencing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_netcdf_file_with_index_coordinates_gives_the_same_embeddings(unplaced_run, cli, tmp_path, pixels):
    _, zarr_out, _ = unplaced_run
    nc = write_netcdf(tmp_path / "plain.nc", pixels)
    items = item_file(tmp_path / "plain.json", "plain", {"href": str(nc), "type": "application/netcdf"})
    with warnings_logged() as warned:
        result = run(cli, items, tmp_path / "out")
    assert result.exit_code == 0, result.output
    # Index coordinates (0..n-1) are positions, not coordinates: nothing to place it by.
    assert len(warned) == 1 and "plain.nc has no georeferencing stacembed can read" in warned[0]
    a = gpd.read_parquet(next((tmp_path / "out").glob("*/plain/plain.parquet"))).sort_values(["chip_row", "chip_col"])
    b = gpd.read_parquet(next(zarr_out.glob("*/plain/plain.parquet"))).sort_values(["chip_row", "chip_col"])
    # Rows as stored (ascending index coordinates do not flip an unplaced grid), the same pixels.
    np.testing.assert_array_equal(np.stack(a.embedding), np.stack(b.embedding))
    assert a.crs is None and list(a.geometry.bounds.values.tolist()) == list(b.geometry.bounds.values.tolist())
    with rasterio.open(next((tmp_path / "out").glob("*/plain/plain.tif"))) as cog:
        assert cog.crs is None and cog.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)


def test_a_crs_without_a_pixel_grid_is_named_and_read_unplaced(cli, tmp_path, pixels):
    store = write_zarr(tmp_path / "crs-only.zarr", pixels, {"proj:code": "EPSG:32634"})
    items = item_file(tmp_path / "c.json", "c", {"href": str(store), "type": "application/vnd+zarr"})
    with warnings_logged() as warned:
        result = run(cli, items, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert len(warned) == 1 and "has a CRS (EPSG:32634) but no pixel grid" in warned[0], result.output
    table = gpd.read_parquet(next((tmp_path / "out").glob("*/c/c.parquet")))
    assert table.crs is None
    with rasterio.open(next((tmp_path / "out").glob("*/c/c.tif"))) as cog:
        assert cog.crs is None
    # Resampling needs a place: one line.
    result = run(cli, items, tmp_path / "out2", "--resolution", "20")
    assert result.exit_code == 1 and "no georeferencing" in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("stacembed: error")]) == 1


def test_the_stac_asset_proj_fields_place_a_store_that_cannot(tmp_path, pixels):
    from stacembed.bands import match_bands
    from stacembed.grid import native_grid
    from stacembed.resolve import read_item_file

    store = write_zarr(tmp_path / "p.zarr", pixels)
    items = item_file(tmp_path / "p.json", "p", {
        "href": str(store), "type": "application/vnd+zarr", "proj:code": "EPSG:32634",
        "proj:shape": [HEIGHT, WIDTH], "proj:transform": [10.0, 0.0, 300000.0, 0.0, -10.0, 6000000.0]})
    item = read_item_file(str(items))[0]
    grid = native_grid(item, match_bands(item, ["blue", "nir"]))
    assert grid.placed and grid.crs.to_epsg() == 32634
    assert grid.transform == Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 6000000.0)


GDAL_READ = """
import json, sys, pyogrio
found = []
for path in sys.argv[1:]:
    frame = pyogrio.read_dataframe(path, use_arrow=True)
    info = pyogrio.read_info(path)
    found.append([len(frame), info["features"], info["crs"], frame.geometry.isna().sum().item()])
print(json.dumps(found))
"""


def test_gdal_and_duckdb_read_the_tables(unplaced_run, tmp_path):
    import subprocess
    import sys

    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("pyogrio")
    from test_interop import gdal_environment

    _, out, _ = unplaced_run
    table, mirror = next(out.glob("*/plain/plain.parquet")), next(out.glob("*/items.parquet"))
    rows = (HEIGHT // CHIP) * (WIDTH // CHIP)
    assert duckdb.sql(f"SELECT count(*), min(col_off), max(row_off) FROM '{table}'").fetchall() == [
        (rows, 0, HEIGHT - CHIP)]
    done = subprocess.run([sys.executable, "-c", GDAL_READ, str(table), str(mirror)], env=gdal_environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (chips, features, crs, missing), (items, item_features, _, no_geometry) = json.loads(done.stdout)
    assert (chips, features, crs, missing) == (rows, rows, None, 0)  # GDAL: geometries without a CRS
    assert (items, item_features, no_geometry) == (1, 1, 1)


def test_a_geoparquet_only_run_rebuilds_the_pixel_grid(cli, tmp_path, pixels):
    """Without a COG, quicklooks and class maps rebuild the grid from the chips: y down, no CRS."""
    store = write_zarr(tmp_path / "g.zarr", pixels)
    items = item_file(tmp_path / "g.json", "g", {"href": str(store), "type": "application/vnd+zarr"})
    out = tmp_path / "out"
    result = cli("run", "--items", items, "--out", out, "--chip-size", CHIP, "--stride", CHIP, "--min-valid", "0",
                 "--format", "geoparquet", "-q")
    assert result.exit_code == 0, result.output
    with rasterio.open(next(out.glob("*/g/g.overview.tif"))) as overview:
        assert overview.crs is None and overview.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)
        assert (overview.width, overview.height) == (WIDTH // CHIP, HEIGHT // CHIP)
    result = cli("cluster", out, "--k", "2", "--out", tmp_path / "clusters", "-q")
    assert result.exit_code == 0, result.output
    with rasterio.open(next((tmp_path / "clusters").glob("*/g/*.tif"))) as classes:
        assert classes.crs is None and classes.transform == Affine(CHIP, 0, 0, 0, CHIP, 0)
        assert (classes.width, classes.height) == (WIDTH // CHIP, HEIGHT // CHIP)
    assert cli("validate", out, tmp_path / "clusters").exit_code == 0


def test_bands_with_and_without_georeferencing_do_not_mix(tmp_path, pixels):
    from stacembed.bands import match_bands
    from stacembed.errors import BandError
    from stacembed.grid import native_grid
    from stacembed.resolve import read_item_file

    store = write_zarr(tmp_path / "m.zarr", pixels)
    for name in ("red", "nir"):  # placed by their own attributes; the other bands are not
        zarr.open_array(str(store / name), mode="r+").attrs.update(
            {"proj:code": "EPSG:32634", "proj:transform": [10.0, 0.0, 300000.0, 0.0, -10.0, 6000000.0]})
    item = read_item_file(str(item_file(tmp_path / "m.json", "m", {"href": str(store),
                                                                     "type": "application/vnd+zarr"})))[0]
    with pytest.raises(BandError, match="have no georeferencing and bands red, nir have"):
        native_grid(item, match_bands(item, list(BANDS)))


@pytest.mark.parametrize("transform", [None, Affine(30.0, 0, 500000.0, 0, -30.0, 9100000.0)],
                         ids=["no-geotransform", "geotransform-without-crs"])
def test_a_geotiff_without_a_crs_is_read_on_its_pixel_grid(unplaced_run, cli, tmp_path, pixels, transform):
    # As a store without georeferencing: a geotransform says nothing of where without a CRS.
    _, zarr_out, _ = unplaced_run
    tif = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "width": WIDTH, "height": HEIGHT, "count": len(BANDS), "dtype": "float32"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tif, "w", **profile, **({"transform": transform} if transform else {})) as dst:
            dst.write(np.stack([pixels[name] for name in BANDS]))
    asset = {"href": str(tif), "type": "image/tiff; application=geotiff",
             "eo:bands": [{"name": name} for name in BANDS]}
    items = item_file(tmp_path / "plain.json", "plain", asset)
    with warnings_logged() as warned:
        result = run(cli, items, tmp_path / "out")
    assert result.exit_code == 0, result.output
    found = "a geotransform but no CRS" if transform else "no georeferencing"
    assert len(warned) == 1 and f"plain.tif has {found}" in warned[0] and "gdal_edit.py" in warned[0], warned
    a = gpd.read_parquet(next((tmp_path / "out").glob("*/plain/plain.parquet"))).sort_values(["chip_row", "chip_col"])
    b = gpd.read_parquet(next(zarr_out.glob("*/plain/plain.parquet"))).sort_values(["chip_row", "chip_col"])
    np.testing.assert_array_equal(np.stack(a.embedding), np.stack(b.embedding))  # the same pixels, the same chips
    assert a.crs is None and a.geometry.bounds.values.tolist() == b.geometry.bounds.values.tolist()
    item = json.loads(next((tmp_path / "out").glob("*/plain/plain.json")).read_text())
    assert item["geometry"] is None and item["properties"]["proj:code"] is None
    result = run(cli, items, tmp_path / "out-stack", "--loader", "stackstac")  # stacks on a map: one line
    assert result.exit_code == 1 and "leave --loader auto" in result.output, result.output
