"""Explicit resampling (--resolution, --crs, --resampling): values, georeferencing, declared CRS.

The synthetic items are 30 m UTM 25S; 60 m is exactly 2x2 source pixels, so ``average`` has an
independent numpy reference (the mean of each 2x2 block, leaving nodata out).
"""

import json
import warnings

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.warp
import torch
from conftest import DEMO_CARD, EPSG, RES, SYNTHETIC_BANDS

from stacembed.bands import match_bands
from stacembed.embed import Embedder
from stacembed.grid import native_grid, target_grid
from stacembed.models import resolve_card
from stacembed.readers.stack import stack_item
from stacembed.resolve import resolve_items

WEST, NORTH = 500000.0, 9100000.0  # top-left corner of item-0 of the synthetic catalog


def block_mean(raw: np.ndarray, nodata: float, factor: int = 2) -> np.ndarray:
    """Mean of each factor x factor block of ``raw`` without its nodata pixels (NaN if none)."""
    value = np.where(raw == nodata, np.nan, raw.astype("float64"))
    h, w = value.shape
    blocks = value[: h - h % factor, : w - w % factor].reshape(h // factor, factor, w // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": all-nodata blocks
        return np.nanmean(blocks, axis=(1, 3))


@pytest.mark.parametrize("loader", ["stackstac", "odc"])
def test_average_to_60m_is_the_mean_of_2x2_blocks_without_nodata(synthetic_catalog, loader):
    # Nodata (0) is declared only in the STAC metadata, not in the file headers, and 3 rows
    # of it make the second 60 m row straddle nodata and data.
    catalog = synthetic_catalog("1.0", n_items=1, shape=(40, 50), scale=0.5, offset=-10.0, nodata=0, nodata_rows=3)
    item = resolve_items(catalog=str(catalog))[0]
    bands = match_bands(item, ["red", "swir22"])
    grid = target_grid(native_grid(item, bands), None, 60.0)
    assert (grid.width, grid.height, grid.transform) == (25, 20, rasterio.Affine(60, 0, WEST, 0, -60, NORTH))
    data = stack_item(item, bands, grid, chunks=(8, 16), resampling="average", loader=loader).values
    for i, band in enumerate(bands):
        with rasterio.open(band.href) as ds:
            assert ds.nodata is None
            expected = block_mean(ds.read(1), 0) * 0.5 - 10.0
        assert np.isnan(data[i, 0]).all()  # source rows 0-1: nodata only
        np.testing.assert_allclose(data[i], expected.astype("float32"), rtol=1e-6, atol=0)
        # Row 1 (source rows 2-3) is the mean of its 2 valid pixels, not blended with nodata.
        assert np.isfinite(data[i, 1:]).all()


def test_both_loaders_agree_when_resampling_to_another_crs(synthetic_catalog):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 50), nodata=0, nodata_rows=5)
    item = resolve_items(catalog=str(catalog))[0]
    bands = match_bands(item, ["blue", "nir"])
    grid = target_grid(native_grid(item, bands), "EPSG:4326", None)
    assert grid.crs.to_epsg() == 4326
    results = {
        loader: stack_item(item, bands, grid, chunks=(16, 16), resampling="bilinear", loader=loader).values
        for loader in ("stackstac", "odc")
    }
    assert results["odc"].shape == (2, grid.height, grid.width)
    # Not bit-equal: each loader warps chunk by chunk with GDAL's approximate transformer.
    np.testing.assert_allclose(results["stackstac"], results["odc"], rtol=1e-4)
    data = results["odc"]
    assert 0.5 * data.size < np.isfinite(data).sum() < data.size  # corners fall outside the item
    for i, band in enumerate(bands):
        with rasterio.open(band.href) as ds:
            source = ds.read(1)[5:]  # without its nodata rows
        # Bilinear weights are convex: no value outside the source range, no nodata (0) blended in.
        assert source.min() <= np.nanmin(data[i]) and np.nanmax(data[i]) <= source.max()


def test_resolution_60_through_the_cli_resamples_on_a_consistent_grid(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(100, 130))
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--out", out, "--resolution", "60", "--resampling", "average",
                 "--chip-size", "16", "--stride", "12", "--min-valid", "0", "-q")
    assert result.exit_code == 0, result.output
    item = json.loads(next(out.glob("*/item-0/item-0.json")).read_text())
    params = item["properties"]["emb:runtime_parameters"]
    assert (params["resolution"], params["resampling"], params["crs"]) == (60.0, "average", None)

    # 130 x 100 px at 30 m = 65 x 50 px at 60 m: 6 x 4 chips of 16 px, 12 px apart.
    table = gpd.read_parquet(next(out.glob("*/item-0/item-0.parquet"))).sort_values(["chip_row", "chip_col"])
    assert len(table) == 24
    assert (table.chip_row.max(), table.chip_col.max()) == (3, 5)
    first = table.iloc[0]
    assert (first.native_xmin, first.native_ymax) == (WEST, NORTH)  # chip grid origin = source top-left
    assert (first.native_xmax - first.native_xmin, first.native_ymax - first.native_ymin) == (16 * 60.0, 16 * 60.0)
    np.testing.assert_array_equal(table.native_xmin, WEST + table.chip_col * 12 * 60.0)
    np.testing.assert_array_equal(table.native_ymax, NORTH - table.chip_row * 12 * 60.0)

    with rasterio.open(next(out.glob("*/item-0/item-0.tif"))) as cog:
        assert cog.crs.to_epsg() == EPSG and (cog.height, cog.width) == (4, 6)
        # Pixel size stride x 60 m, each pixel centred on its chip (origin shifted by (16-12)/2 px).
        assert cog.transform == rasterio.Affine(720.0, 0, WEST + 2 * 60.0, 0, -720.0, NORTH - 2 * 60.0)
        for row in table.itertuples():
            assert cog.xy(row.chip_row, row.chip_col) == (
                (row.native_xmin + row.native_xmax) / 2, (row.native_ymin + row.native_ymax) / 2)
        grid = cog.read()
        transform = list(cog.transform)[:6]
    asset = item["assets"]["embeddings-geotiff"]
    assert asset["proj:code"] == f"EPSG:{EPSG}" and asset["proj:shape"] == [4, 6]
    assert asset["proj:transform"] == transform

    # The model saw 2x2 block means of the source pixels (the demo card has no nodata here).
    card = resolve_card(str(DEMO_CARD))
    item_dir = catalog.parent / "synthetic" / "item-0"
    means = []
    for key, _ in SYNTHETIC_BANDS:
        with rasterio.open(item_dir / f"{key}.tif") as ds:
            means.append(ds.read(1).astype("float64").reshape(50, 2, 65, 2).mean(axis=(1, 3)))
    means = np.stack(means).astype("float32")
    embedder = Embedder.from_card(card, DEMO_CARD.with_suffix(".safetensors"), torch.device("cpu"))
    chip = means[:, 12:28, 24:40][None]  # chip (1, 2): rows 12-27, cols 24-39 of the 60 m grid
    expected = embedder(chip)[0]
    got = table[(table.chip_row == 1) & (table.chip_col == 2)].embedding.iloc[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grid[:, 1, 2], got)


@pytest.mark.parametrize("loader", ["stackstac", "odc"])
def test_crs_4326_through_the_cli_writes_the_declared_crs(synthetic_catalog, cli, tmp_path, loader):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(60, 80))
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--out", out, "--crs", "EPSG:4326", "--chip-size", "16",
                 "--min-valid", "0.2", "--loader", loader, "-q")
    assert result.exit_code == 0, result.output

    # The target grid, computed independently: GDAL's suggested warp output for the item.
    transform, width, height = rasterio.warp.calculate_default_transform(
        f"EPSG:{EPSG}", "EPSG:4326", 80, 60, WEST, NORTH - 60 * RES, WEST + 80 * RES, NORTH)
    item = json.loads(next(out.glob("*/item-0/item-0.json")).read_text())
    assert item["properties"]["emb:runtime_parameters"]["crs"] == "EPSG:4326"
    asset = item["assets"]["embeddings-geotiff"]
    assert asset["proj:code"] == "EPSG:4326"
    with rasterio.open(next(out.glob("*/item-0/item-0.tif"))) as cog:
        assert cog.crs.to_epsg() == 4326
        assert (cog.width, cog.height) == (-(-width // 16), -(-height // 16))
        assert cog.transform.almost_equals(
            rasterio.Affine(transform.a * 16, 0, transform.c, 0, transform.e * 16, transform.f))
        assert asset["proj:transform"] == list(cog.transform)[:6]
        assert np.isfinite(cog.read()).any()

    path = next(out.glob("*/item-0/item-0.parquet"))
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["columns"]["native_geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    table = gpd.read_parquet(path)
    assert len(table) > 0 and table.native_geometry.crs.to_epsg() == 4326
    assert np.isclose(table.native_xmin.min(), transform.c) and np.isclose(table.native_ymax.max(), transform.f)
